"""Worker processes: sharding, restart after a crash, crash loop, clean close."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from conec_actors import ClientClosed, CoordinatorFailed, NoSuchBroadcast, StreamReset
from conec_actors.coord.session import MAX_PENDING_REQUESTS

from .conftest import coord_cert, coordinator, process_alive, wait_for


async def _next_incoming(client: Any) -> Any:
    return await asyncio.wait_for(client.incoming.__aiter__().__anext__(), 5)


async def test_close_leaves_no_worker_process() -> None:
    async with coordinator(routing_workers=3, broadcast_workers=2) as h:
        pids = h.coord.worker_pids()
        assert len(pids) == 5
        assert len(h.coord.worker_pids("routing")) == 3
        assert all(process_alive(p) for p in pids)
        assert all(os.getppid() != p for p in pids)
    for p in pids:
        assert not process_alive(p), f"worker {p} outlived close()"


async def test_ids_spread_over_several_routing_workers() -> None:
    async with coordinator(routing_workers=2) as h:
        clients = [await h.client(f"c{i}") for i in range(8)]
        st = await h.coord.stats()
        entries = [w["entries"] for w in st["workers"] if w["kind"] == "routing"]
        assert sum(entries) == 8
        assert all(e > 0 for e in entries)
        # every pair can reach each other whichever shard holds the peer
        send, _ = await clients[0].new_proxied_stream("c7")
        await send.send(b"x")
        inc = await _next_incoming(clients[7])
        assert await inc.recv.recv() == b"x"


async def test_killed_worker_is_restarted_and_nothing_notices() -> None:
    async with coordinator(routing_workers=1) as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, recv = await a.new_proxied_stream("bob")
        await send.send(b"before")
        inc = await _next_incoming(b)
        assert await inc.recv.recv() == b"before"
        (old,) = h.coord.worker_pids("routing")
        os.kill(old, signal.SIGKILL)
        # a request made while the worker is down is replayed to its successor
        t0 = time.monotonic()
        c = await h.client("carol")
        assert time.monotonic() - t0 < 2.0
        (new,) = h.coord.worker_pids("routing")
        assert new != old
        # the established stream kept flowing, both ways, in order
        for i in range(20):
            await send.send(b"%d" % i)
        assert [await inc.recv.recv() for _ in range(20)] == [b"%d" % i for i in range(20)]
        await inc.send.send(b"back")
        assert await recv.recv() == b"back"
        # the rebuilt directory knows the clients that were there before
        s2, _ = await c.new_proxied_stream("alice")
        await s2.send(b"hi alice")
        inc2 = await _next_incoming(a)
        assert inc2.peer == "carol" and await inc2.recv.recv() == b"hi alice"
        st = await h.coord.stats()
        (routing,) = [w for w in st["workers"] if w["kind"] == "routing"]
        assert routing["restarts"] == 1
        assert routing["entries"] == 3


async def test_crash_loop_fails_the_coordinator_loudly() -> None:
    cert = coord_cert()
    from conec_actors import Coord, CoordConfig
    coord = await Coord.start(CoordConfig(cert.cert_pem, cert.key_pem, port=0))
    try:
        from .conftest import Harness
        h = Harness(coord, cert)
        a = await h.client("alice")
        for _ in range(3):
            (pid,) = coord.worker_pids("routing")
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda p=pid: coord.worker_pids("routing") != [p] or
                           coord._closed.is_set(), timeout=5)
        with pytest.raises(CoordinatorFailed, match="crashed 3 times"):
            await asyncio.wait_for(coord.wait_closed(), 5)
        await wait_for(lambda: a.is_closed, timeout=5)
        with pytest.raises(ClientClosed):
            await a.new_proxied_stream("alice")
        for p in coord.worker_pids():
            assert not process_alive(p)
        await h.close_clients()
    finally:
        await coord.close()


async def test_clients_see_coordinator_close_as_client_closed() -> None:
    async with coordinator() as h:
        a, _b = await h.client("alice"), await h.client("bob")
        _send, recv = await a.new_proxied_stream("bob")
        await h.coord.close()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(recv.recv(), 5)
        await wait_for(lambda: a.is_closed)
        with pytest.raises(ClientClosed):
            await a.new_proxied_stream("bob")


def test_script_without_main_guard_works(tmp_path: Any) -> None:
    script = tmp_path / "user_script.py"
    cert = coord_cert()
    (tmp_path / "c.pem").write_bytes(cert.cert_pem)
    (tmp_path / "c.key").write_bytes(cert.key_pem)
    script.write_text(textwrap.dedent(f"""
        import asyncio
        from conec_actors import Client, ClientConfig, Coord, CoordConfig

        async def main():
            cfg = CoordConfig({str(tmp_path / 'c.pem')!r}, {str(tmp_path / 'c.key')!r},
                              port=0, routing_workers=2)
            async with Coord.start(cfg) as coord:
                async with Client.connect(ClientConfig("me", "localhost",
                        addr=coord.address, ca={str(tmp_path / 'c.pem')!r})) as me:
                    send, recv = await me.new_proxied_stream("me")
                    await send.send(b"ok")
                    inc = await me.incoming.__aiter__().__anext__()
                    print(inc.peer, (await inc.recv.recv()).decode())

        asyncio.run(main())  # no __main__ guard on purpose
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=40, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "me ok"


async def test_stats_answer_while_a_worker_is_unresponsive() -> None:
    async with coordinator(routing_workers=2) as h:
        await h.client("alice")
        stopped = h.coord.worker_pids("routing")[0]
        os.kill(stopped, signal.SIGSTOP)
        try:
            st = await asyncio.wait_for(h.coord.stats(), 5)
            assert st["clients"] == 1
            assert [w["kind"] for w in st["workers"]].count("routing") == 2
        finally:
            os.kill(stopped, signal.SIGCONT)
        st = await h.coord.stats()
        assert sum(w.get("entries", 0) for w in st["workers"] if w["kind"] == "routing") == 1


async def test_requests_to_a_stopped_worker_are_all_answered() -> None:
    """A worker that stops reading fills its ZeroMQ pipe; what the pipe cannot
    take waits in the front-end and is answered once the worker goes on."""
    # A client has at most MAX_PENDING_REQUESTS control requests at a worker
    # at once (the rest wait unread on its control stream): enough clients
    # that what is in flight still overflows the pipe's high-water mark.
    calls_per_client, n_clients = MAX_PENDING_REQUESTS, 56
    in_flight = min(calls_per_client, MAX_PENDING_REQUESTS) * n_clients
    async with coordinator() as h:
        clients = [await h.client(f"c{i}") for i in range(n_clients)]
        (stopped,) = h.coord.worker_pids("broadcast")
        os.kill(stopped, signal.SIGSTOP)
        calls: list[asyncio.Future[Any]] = []
        try:
            # One call per loop turn, so each becomes a batch of its own and
            # thousands of batches queue up for the stopped worker.
            for i in range(calls_per_client * n_clients):
                calls.append(asyncio.ensure_future(
                    clients[i % n_clients].broadcast_count(f"b{i}")))
                await asyncio.sleep(0)

            async def all_in_flight() -> bool:
                st = await h.coord.stats()
                return sum(w["inflight"] for w in st["workers"]
                           if w["kind"] == "broadcast") >= in_flight
            await wait_for(all_in_flight, timeout=30)
        finally:
            os.kill(stopped, signal.SIGCONT)
        done, pending = await asyncio.wait(calls, timeout=20)
        for c in pending:
            c.cancel()
        assert not pending, f"{len(pending)} of {len(calls)} calls were never answered"
        assert all(isinstance(c.exception(), NoSuchBroadcast) for c in done)
