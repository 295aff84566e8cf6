"""Front-end shards (DESIGN section 8): N shard processes on one UDP port,
clients on different shards served as if on one, shards killed and restarted.

Where a client lands is the kernel's choice (its first connection id), so
each test connects clients one at a time and learns their shards from
`stats()["frontends"]`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import pytest

from conec_actors import (
    Client,
    CoordConfig,
    CoordinatorFailed,
    DuplicateId,
    MessageTooLarge,
    NoSuchPeer,
    StreamReset,
    Terminated,
)
from conec_actors.certs import self_signed

from .conftest import Harness, coord_cert, coordinator, process_alive, wait_for

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="shards need Linux"),
              pytest.mark.timeout(90)]


async def shard_counts(h: Harness) -> list[int]:
    return [f["clients"] for f in (await h.coord.stats())["frontends"]]


async def placed(h: Harness, cid: str, **kw: Any) -> tuple[Client, int]:
    """Connect `cid`; the client and the shard it landed on."""
    before = await shard_counts(h)
    c = await h.client(cid, **kw)
    for _ in range(200):
        now = await shard_counts(h)
        grew = [k for k, (a, b) in enumerate(zip(before, now, strict=True)) if b > a]
        if grew:
            return c, grew[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{cid} is on no shard: {before} -> {now}")


async def spread(h: Harness, n: int, prefix: str = "c", **kw: Any
                 ) -> list[tuple[Client, int]]:
    """`n` clients, more until at least two shards hold some (kernel's choice)."""
    out = [await placed(h, f"{prefix}{i}", **kw) for i in range(n)]
    i = n
    while len({s for _, s in out}) < 2:
        out.append(await placed(h, f"{prefix}{i}", **kw))
        i += 1
        assert i < 64, "the kernel put 64 clients on one shard"
    return out


def cross_pair(clients: list[tuple[Client, int]]) -> tuple[Client, Client]:
    for a, sa in clients:
        for b, sb in clients:
            if sa != sb:
                return a, b
    raise AssertionError("no two clients on different shards")


async def echo_server(c: Client) -> None:
    async def echo(inc: Any) -> None:
        async for m in inc.recv:
            await inc.send.send(m)
        await inc.send.finish()

    tasks = set()
    async for inc in c.incoming:
        t = asyncio.create_task(echo(inc))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


def test_more_than_one_frontend_needs_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    cert = coord_cert()
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ValueError, match="needs Linux"):
        CoordConfig(cert.cert_pem, cert.key_pem, frontends=2)
    CoordConfig(cert.cert_pem, cert.key_pem, frontends=1)
    with pytest.raises(ValueError, match="at least 1"):
        CoordConfig(cert.cert_pem, cert.key_pem, frontends=0)


async def test_shards_are_children_with_their_figures() -> None:
    async with coordinator(frontends=3) as h:
        pids = h.coord.worker_pids("frontend")
        assert len(pids) == 3 and os.getpid() not in pids
        clients = await spread(h, 6)
        st = await h.coord.stats()
        fronts = st["frontends"]
        assert [f["shard"] for f in fronts] == [0, 1, 2]
        assert sorted(f["pid"] for f in fronts) == sorted(pids)
        assert sum(f["clients"] for f in fronts) == st["clients"] == len(clients)
        assert await h.coord.num_clients() == len(clients)
        assert all(f["cpu_seconds"] > 0 for f in fronts)
        for f in fronts:
            for key in ("messages_forwarded", "bytes_forwarded"):
                assert isinstance(f[key], int)
        assert {w["kind"] for w in st["workers"]} == {"routing", "broadcast"}


async def test_proxied_streams_across_shards_keep_order_and_whole_messages() -> None:
    async with coordinator(frontends=2) as h:
        clients = await spread(h, 4)
        a, b = cross_pair(clients)
        server = asyncio.create_task(echo_server(b))
        try:
            send, recv = await a.new_proxied_stream(b.id)
            sizes = [1, 100, 5000, 70_000, 300_000, 3]
            msgs = [bytes([k % 251]) * sizes[k % len(sizes)] for k in range(60)]

            async def read() -> list[bytes]:
                return [await recv.recv() for _ in msgs]

            reader = asyncio.create_task(read())
            for m in msgs:
                await send.send(m)
            assert await reader == msgs
            assert (await h.coord.stats())["streams"] == 1  # counted once, where spliced
            await send.finish()
            with pytest.raises(StopAsyncIteration):
                await anext(aiter(recv))
            st = await h.coord.stats()
            assert st["messages_forwarded"] >= 2 * len(msgs)
            assert st["bytes_forwarded"] >= 2 * sum(map(len, msgs))
        finally:
            server.cancel()


async def test_tells_and_asks_across_shards_keep_per_pair_order() -> None:
    async with coordinator(frontends=2) as h:
        clients = await spread(h, 4)
        a, b = cross_pair(clients)

        async def serve() -> None:
            async for env in b.mailbox:
                if env.is_ask:
                    await env.reply(["re", env.body])
                else:
                    got.append(env.body)

        got: list[Any] = []
        server = asyncio.create_task(serve())
        try:
            for i in range(2000):
                await a.tell(b.id, i)
            assert await a.ask(b.id, "x") == ["re", "x"]
            await wait_for(lambda: len(got) == 2000)
            assert got == list(range(2000))
        finally:
            server.cancel()


async def test_duplicate_id_is_refused_whatever_the_shard() -> None:
    async with coordinator(frontends=3) as h:
        await spread(h, 3)
        await h.client("same")
        other = self_signed(["same"])
        for _ in range(4):  # each a new connection: on whatever shard the kernel picks
            with pytest.raises(DuplicateId):
                await h.client("same", cert=other.cert_pem, key=other.key_pem)


async def test_broadcast_across_shards_has_one_order_for_all() -> None:
    async with coordinator(frontends=3) as h:
        clients = await spread(h, 6)
        assert len({s for _, s in clients}) >= 2
        members = [c for c, _ in clients]
        streams = [await c.new_broadcast("room") for c in members]
        n = 30
        for k in range(n):
            for i, (send, _recv) in enumerate(streams):
                await send.send(f"{i}:{k}".encode())
        seen: list[list[tuple[str, bytes]]] = []
        for _send, recv in streams:
            got = []
            while len(got) < n * len(streams):
                m = await asyncio.wait_for(recv.recv(), 10)
                got.append((m.sender, m.data))
            seen.append(got)
        assert all(s == seen[0] for s in seen), "members saw different orders"
        for i, c in enumerate(members):
            mine = [b for s, b in seen[0] if s == c.id]
            assert mine == [f"{i}:{k}".encode() for k in range(n)]


async def test_stalled_reader_on_one_shard_stops_exactly_its_writer() -> None:
    async with coordinator(frontends=2) as h:
        clients = await spread(h, 6)
        a, b = cross_pair(clients)
        others = [(c, s) for c, s in clients if c not in (a, b)]
        c, d = others[0][0], others[1][0]
        server = asyncio.create_task(echo_server(d))
        try:
            send, _recv = await a.new_proxied_stream(b.id)  # b never reads it
            chunk = b"z" * 65536
            sent = 0

            async def flood() -> None:
                nonlocal sent
                while True:
                    await send.send(chunk)
                    sent += len(chunk)

            writer = asyncio.create_task(flood())
            await asyncio.sleep(1.0)
            stuck_at = sent
            # Meanwhile another pair flows.
            s2, r2 = await c.new_proxied_stream(d.id)
            for k in range(200):
                await s2.send(b"%d" % k)
                assert await r2.recv() == b"%d" % k
            await asyncio.sleep(1.0)
            assert not writer.done()
            assert sent == stuck_at, "the writer went on while its reader stalled"
            assert sent < 64 * 1024 * 1024
            for pid in h.coord.worker_pids("frontend"):
                assert _rss_mib(pid) < 200
            writer.cancel()
        finally:
            server.cancel()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def test_killed_shard_loses_only_its_clients_and_comes_back() -> None:
    async with coordinator(frontends=3) as h:
        # A killed shard's clients learn it from the restarted shard's
        # stateless resets, at their next packet (the default idle timeout).
        clients = await spread(h, 9)
        by_shard: dict[int, list[Client]] = {}
        for c, s in clients:
            by_shard.setdefault(s, []).append(c)
        # The victim: a shard with clients; an honest pair elsewhere.
        victim = max(by_shard, key=lambda s: len(by_shard[s]))
        rest = [c for c, s in clients if s != victim]
        if len(rest) < 2:
            pytest.skip("the kernel left fewer than two clients off the busiest shard")
        x, y = rest[0], rest[1]
        server = asyncio.create_task(echo_server(y))
        try:
            send, recv = await x.new_proxied_stream(y.id)
            stop = asyncio.Event()
            echoed: list[int] = []

            async def pump() -> None:
                k = 0
                while not stop.is_set():
                    await send.send(k.to_bytes(4, "big"))
                    echoed.append(int.from_bytes(await recv.recv(), "big"))
                    k += 1

            pumping = asyncio.create_task(pump())
            await wait_for(lambda: len(echoed) > 50)
            # A stream the honest x shares with a client of the victim shard.
            _shared_send, shared_recv = await x.new_proxied_stream(by_shard[victim][0].id)
            pid = h.coord.worker_pids("frontend")[victim]
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(StreamReset):
                await asyncio.wait_for(shared_recv.recv(), 10)
            lost = by_shard[victim]
            await wait_for(lambda: all(c.is_closed for c in lost), timeout=10)
            stop.set()
            await pumping
            # Ids freed, the shard restarted, new clients served within ~2 s.
            await wait_for(lambda: len(h.coord.worker_pids("frontend")) == 3
                           and pid not in h.coord.worker_pids("frontend"), timeout=5)
            again = await asyncio.wait_for(h.client(lost[0].id), 5)
            assert not again.is_closed
            assert echoed == list(range(len(echoed))), "the honest pair saw a gap"
            assert not process_alive(pid)
        finally:
            server.cancel()


async def test_three_shard_crashes_fail_the_coordinator() -> None:
    from conec_actors import Coord
    cert = coord_cert()
    coord = await Coord.start(CoordConfig(cert.cert_pem, cert.key_pem, port=0, frontends=2))
    try:
        for _ in range(3):
            pid = coord.worker_pids("frontend")[0]
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda p=pid: coord.worker_pids("frontend")[0] != p  # type: ignore[misc]
                           or coord._closed.is_set(), timeout=5)
        with pytest.raises(CoordinatorFailed, match="crashed 3 times"):
            await asyncio.wait_for(coord.wait_closed(), 5)
        for p in coord.worker_pids():
            assert not process_alive(p)
    finally:
        await coord.close()


async def test_channel_introductions_across_shards() -> None:
    async with coordinator(frontends=2) as h:
        clients = await spread(h, 4)
        a, b = cross_pair(clients)
        await asyncio.wait_for(a.new_channel(b.id), 10)
        assert b.id in a.channels()
        await wait_for(lambda: a.id in b.channels())
        with pytest.raises(NoSuchPeer):
            await a.new_channel("nobody-here")


async def test_watches_across_shards() -> None:
    async with coordinator(frontends=3) as h:
        clients = await spread(h, 6, idle_timeout=2.0)
        w, p = cross_pair(clients)
        watch = await w.watch(p.id)
        assert not watch.done()
        await p.close()
        assert await asyncio.wait_for(watch.wait(), 10) == Terminated(p.id, "left")
        assert await (await w.watch("nobody")).wait() == Terminated("nobody", "not-connected")
        # A peer whose shard is killed has vanished.
        w_shard = next(s for c, s in clients if c is w)
        victims = [(c, s) for c, s in clients if s != w_shard and not c.is_closed]
        if not victims:
            pytest.skip("no live client off the watcher's shard")
        v, v_shard = victims[0]
        watch = await w.watch(v.id)
        os.kill(h.coord.worker_pids("frontend")[v_shard], signal.SIGKILL)
        assert await asyncio.wait_for(watch.wait(), 10) == Terminated(v.id, "vanished")


async def test_groups_across_shards() -> None:
    async with coordinator(frontends=2) as h:
        clients = await spread(h, 6)
        members = [c for c, _ in clients[:4]]
        follower = clients[-1][0]

        async def serve(c: Client) -> None:
            async for env in c.mailbox:
                await env.reply(c.id)

        servers = [asyncio.create_task(serve(c)) for c in members]
        try:
            for c in members:
                await c.join_group("g")
            want = sorted(c.id for c in members)
            assert sorted(await follower.group_members("g")) == want
            answers = {await follower.ask_group("g", "who") for _ in range(40)}
            assert answers <= set(want) and len(answers) >= 2
            await members[0].leave_group("g")
            assert sorted(await follower.group_members("g")) == sorted(
                c.id for c in members[1:])
            await members[1].close()
            left = sorted(c.id for c in members[2:])

            async def settled() -> bool:
                return sorted(await follower.group_members("g")) == left

            await wait_for(settled)
        finally:
            for t in servers:
                t.cancel()


async def test_same_certificate_replaces_its_session_on_any_shard() -> None:
    alice = self_signed(["alice"])
    async with coordinator(frontends=3) as h:
        # spread connects more than 3 when the kernel put the first on one shard
        others = len(await spread(h, 3))
        prev = await h.client("alice", cert=alice.cert_pem, key=alice.key_pem)
        crossed = 0
        for _ in range(6):
            before = await shard_counts(h)
            new = await h.client("alice", cert=alice.cert_pem, key=alice.key_pem)
            await wait_for(lambda p=prev: p.is_closed, timeout=10)  # type: ignore[misc]
            assert not new.is_closed
            # The same counts: the new session is on the old one's shard.
            crossed += await shard_counts(h) != before
            prev = new

        async def one_alice() -> bool:
            return await h.coord.num_clients() == others + 1

        await wait_for(one_alice, timeout=10)
        if not crossed:
            pytest.skip("the kernel put every connection on one shard")


async def test_size_limits_hold_across_shards() -> None:
    async with coordinator(frontends=2) as h:
        clients = await spread(h, 4)
        small, shard = await placed(h, "small", max_message_size=4096)
        sender = next((c for c, s in clients if s != shard), None)
        if sender is None:
            pytest.skip("every other client is on small's shard")
        send, _recv = await sender.new_proxied_stream(small.id)
        await send.send(b"x" * 4096)
        with pytest.raises(MessageTooLarge):
            await send.send(b"x" * 4097)


async def test_clients_come_through_a_retry_on_every_shard() -> None:
    async with coordinator(frontends=2, stateless_retry=True) as h:
        clients = await spread(h, 4)
        st = await h.coord.stats()
        assert st["retries_sent"] >= len(clients)
        a, b = cross_pair(clients)
        got: list[Any] = []

        async def serve() -> None:
            async for env in b.mailbox:
                got.append(env.body)

        server = asyncio.create_task(serve())
        try:
            await a.tell(b.id, "through")
            await wait_for(lambda: got == ["through"])
        finally:
            server.cancel()
