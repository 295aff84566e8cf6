"""QUIC-level bounds against real attackers (DESIGN 3.1).

- A raw aioquic peer, admitted with a valid certificate and hello, that leaves
  one byte at the end of each stream window on every stream it is allowed,
  costs a real Coordinator (the CLI in its own process, RSS read from /proc)
  at most its connection window, and is not refused: it is legal QUIC.
- A peer that opens a unidirectional stream loses that connection
  (STREAM_LIMIT_ERROR), nobody else notices.
- A flood of real Initials at a listening client (whose address an
  introduction hands out) is met with Retry and a handshake bound: its
  half-open count and memory stay bounded, and a channel still opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aioquic.quic.packet import QuicErrorCode

from bench.attacks import raw_session, send_gaps
from conec_actors.transport import RETRY_ON

from .conftest import coordinator, wait_for
from .test_cli import env, start_coord
from .test_memory import coordinator_rss_kib, rss_kib

__all__ = ["env"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024


@pytest.mark.timeout(120)
async def test_gaps_on_every_stream_cost_the_coordinator_a_bounded_amount(
        tmp_path: Path, env: dict[str, str]) -> None:
    cli, host, port, _ca = await asyncio.to_thread(
        start_coord, env, "--state-dir", str(tmp_path / "state"))
    peers = []
    try:
        await asyncio.sleep(0.5)
        baseline = coordinator_rss_kib(cli.pid)
        peers = [await raw_session(port, f"gap{i}", host=host) for i in range(4)]
        for p in peers:
            assert send_gaps(p) > 0
        peak = baseline
        for _ in range(12):
            await asyncio.sleep(0.25)
            peak = max(peak, coordinator_rss_kib(cli.pid))
        growth = (peak - baseline) / MIB
        # 8 MiB per connection is the promise; unbounded it was ~65 MiB each.
        assert growth < 40, f"4 gap attackers grew the Coordinator by {growth:.1f} MiB"
        # Legal QUIC: nobody was refused for it.
        assert [p.closed for p in peers] == [None] * 4
    finally:
        for p in peers:
            await p.aclose()
        await asyncio.to_thread(cli.kill)


async def test_a_unidirectional_stream_closes_only_that_connection() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        b = await h.client("bob")
        peer = await raw_session(h.coord.address[1], "mallory", host=h.coord.address[0])
        try:
            quic = peer.quic
            assert quic._remote_max_streams_uni == 0
            quic._remote_max_streams_uni = 1  # a peer that ignores the limit
            quic.send_stream_data(2, b"uni")
            peer.transmit()
            await wait_for(lambda: peer.closed is not None)
            assert peer.closed is not None
            assert peer.closed[0] == QuicErrorCode.STREAM_LIMIT_ERROR
        finally:
            await peer.aclose()
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"unaffected")
        incoming = await anext(b.incoming)
        assert await incoming.recv.recv() == b"unaffected"


@pytest.mark.timeout(120)
async def test_an_initial_flood_at_a_listening_client_stays_bounded() -> None:
    async with coordinator() as h:
        target = await h.client("target")
        ep = target._endpoint
        addr = ("127.0.0.1", ep.local_address[1])
        base = rss_kib_self()
        flood = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.attacks", "flood", addr[0], str(addr[1]),
            "1500", "4", cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            most, peak = 0, base
            opened = False
            while flood.returncode is None:
                most = max(most, ep.half_open)
                peak = max(peak, rss_kib_self())
                if not opened and ep.half_open > 0:
                    # A channel opens while the flood is on.
                    opener = await h.client("opener")
                    await opener.new_channel("target")
                    await opener.close_channel("target")
                    opened = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(flood.wait(), 0.1)
        finally:
            if flood.returncode is None:
                flood.kill()
                await flood.wait()
        assert opened
        assert ep.retries_sent > 0
        assert most <= RETRY_ON + 64, f"{most} half-open handshakes"
        growth = (peak - base) / MIB
        assert growth < 60, f"the listening client grew by {growth:.1f} MiB"
        # Whatever got in without finishing is dropped by the handshake bound.
        await wait_for(lambda: ep.half_open == 0, timeout=10)
        # ...and a channel still opens afterwards.
        late = await h.client("late")
        await late.new_channel("target")
        send, _ = await late.new_direct_stream("target")
        await send.send(b"direct")
        incoming = await anext(target.incoming)
        assert await incoming.recv.recv() == b"direct"


def rss_kib_self() -> int:
    return rss_kib(os.getpid())
