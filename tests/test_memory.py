"""The Coordinator's memory stays bounded while a reader stalls (back-pressure
end to end). The Coordinator runs as the CLI in its own process, so its
resident memory can be read from /proc. Speed and exact figures live in
bench/stall.py; this test only holds a generous bound."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from conec_actors import Client, ClientConfig

from .test_cli import children, env, start_coord

__all__ = ["env"]  # the fixture, re-exported for pytest


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def coordinator_rss_kib(pid: int) -> int:
    """Front-end plus its worker processes."""
    return rss_kib(pid) + sum(rss_kib(c) for c in children(pid))


@pytest.mark.timeout(90)
async def test_stalled_reader_keeps_coordinator_memory_bounded(
        tmp_path: Path, env: dict[str, str]) -> None:
    cli, host, port, ca = await asyncio.to_thread(
        start_coord, env, "--state-dir", str(tmp_path / "state"))
    try:
        cfg = lambda cid: ClientConfig(cid, "localhost", addr=(host, port), ca=str(ca))  # noqa: E731
        async with Client.connect(cfg("writer")) as a, Client.connect(cfg("reader")) as b:
            send, _ = await a.new_proxied_stream("reader")
            await send.send(b"first")
            incoming = await anext(b.incoming)
            assert await incoming.recv.recv() == b"first"
            baseline = coordinator_rss_kib(cli.pid)
            peak = baseline
            sent = 0
            chunk = b"m" * 65536

            async def flood() -> None:
                nonlocal sent
                while True:
                    await send.send(chunk)
                    sent += 1

            task = asyncio.create_task(flood())
            t_end = time.monotonic() + 5.0
            while time.monotonic() < t_end:  # the reader never reads meanwhile
                await asyncio.sleep(0.25)
                peak = max(peak, coordinator_rss_kib(cli.pid))
            task.cancel()
            growth_mb = (peak - baseline) / 1024
            # ~1 MB is expected (windows and watermarks); 50 MB means no bound
            assert growth_mb < 50, f"Coordinator grew by {growth_mb:.1f} MB"
            assert sent * len(chunk) < 8 * 1024 * 1024, f"writer was not stalled ({sent})"
            # nothing was lost: the stalled reader gets everything, in order
            for _ in range(sent):
                assert await incoming.recv.recv() == chunk
    finally:
        await asyncio.to_thread(cli.kill)
