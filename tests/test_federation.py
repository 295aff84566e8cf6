"""Coordinators on several hosts as one federation (DESIGN section 9): a real
3-node NATS cluster with JetStream and Coordinators in their own processes;
clients of different Coordinators talk as if they shared one."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from conec_actors import (
    Client,
    ClientConfig,
    ConnectFailed,
    DuplicateId,
    IncomingStream,
    NoSuchBroadcast,
    NoSuchPeer,
    StreamReset,
)

from .conftest import wait_for
from .federation_harness import Federation, federation

pytestmark = pytest.mark.timeout(120)


async def next_incoming(client: Client, timeout: float = 10) -> IncomingStream:
    it = client.incoming.__aiter__()
    return await asyncio.wait_for(it.__anext__(), timeout)


async def connect_when_free(fed: Federation, cid: str, coord: str,
                            timeout: float = 8.0) -> tuple[Client, float]:
    """Connect `cid` to `coord`, retrying while the id is held elsewhere:
    the client and how long that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        try:
            return await fed.client(cid, coord), loop.time() - start
        except DuplicateId:
            if loop.time() - start > timeout:
                raise
            await asyncio.sleep(0.2)


async def serve_mailbox(c: Client, got: list[Any]) -> None:
    async for env in c.mailbox:
        if env.is_ask:
            await env.reply(["re", env.body])
        else:
            got.append(env.body)


async def test_one_id_space_across_coordinators(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west") as fed:
        alice = await fed.client("alice", "east")
        with pytest.raises(DuplicateId):
            await fed.client("alice", "west")
        # Visible at once from the other Coordinator: a stream finds her.
        bob = await fed.client("bob", "west")
        send, _ = await bob.new_proxied_stream("alice")
        await send.send(b"hi")
        inc = await next_incoming(alice)
        assert inc.peer == "bob" and await inc.recv.recv() == b"hi"
        # Her id is free everywhere once she left.
        await alice.close()
        again, _ = await connect_when_free(fed, "alice", "west", timeout=3.0)
        assert again.id == "alice"
        with pytest.raises(NoSuchPeer):
            s, _ = await bob.new_proxied_stream("nobody")
            await s.send(b"x")


async def test_proxied_streams_both_ways_keep_order(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west") as fed:
        a, b = await fed.client("alice", "east"), await fed.client("bob", "west")
        send, recv = await a.new_proxied_stream("bob")
        sizes = [0, 1, 64, 1000, 65536, 300_000, 5, 1_000_000]
        payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]

        async def write() -> None:
            for p in payloads:
                await send.send(p)

        writer = asyncio.create_task(write())
        inc = await next_incoming(b)
        for p in payloads:
            assert await asyncio.wait_for(inc.recv.recv(), 10) == p
        await writer
        for i in range(200):
            await inc.send.send(b"%d" % i)
        assert [await recv.recv() for _ in range(200)] == [b"%d" % i for i in range(200)]


async def test_tells_and_asks_across_coordinators(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west") as fed:
        a, b = await fed.client("alice", "east"), await fed.client("bob", "west")
        got: list[Any] = []
        server = asyncio.create_task(serve_mailbox(b, got))
        try:
            for i in range(3000):
                await a.tell("bob", i)
            assert await a.ask("bob", "x", timeout=10) == ["re", "x"]
            await wait_for(lambda: len(got) == 3000, timeout=10)
            assert got == list(range(3000))
        finally:
            server.cancel()


async def test_channel_introduction_across_coordinators(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west") as fed:
        a, b = await fed.client("alice", "east"), await fed.client("bob", "west")
        await a.new_channel("bob")
        assert a.channels() == ["bob"] and b.channels() == ["alice"]
        send, recv = await a.new_direct_stream("bob")
        await send.send(b"direct")
        inc = await next_incoming(b)
        assert inc.peer == "alice" and inc.stream_id.is_direct
        assert await inc.recv.recv() == b"direct"
        await inc.send.send(b"back")
        assert await recv.recv() == b"back"


async def test_watch_across_coordinators(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west") as fed:
        a, b = await fed.client("alice", "east"), await fed.client("bob", "west")
        w = await a.watch("bob")
        never = await a.watch("carol")
        assert (await asyncio.wait_for(never.wait(), 5)).reason == "not-connected"
        await b.close()
        t = await asyncio.wait_for(w.wait(), 10)
        assert (t.peer, t.reason) == ("bob", "left")


async def test_coordinator_killed_under_traffic(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west") as fed:
        a = await fed.client("alice", "east")
        await fed.client("bob", "west")
        c, d = await fed.client("carol", "east"), await fed.client("dave", "east")
        watch = await a.watch("bob")
        # A stream from alice (east) to bob (west) with traffic on it ...
        cross, _ = await a.new_proxied_stream("bob")
        await cross.send(b"before")
        # ... and an honest pair on east, checking every message.
        honest, _ = await c.new_proxied_stream("dave")
        inc = await next_incoming(d)
        received: list[int] = []

        async def read() -> None:
            with contextlib.suppress(Exception):
                while True:
                    received.append(int(await inc.recv.recv()))

        reader = asyncio.create_task(read())
        sent = 0

        async def write() -> None:
            nonlocal sent
            while True:
                await honest.send(b"%d" % sent)
                sent += 1
                await asyncio.sleep(0.001)

        writer = asyncio.create_task(write())
        loop = asyncio.get_running_loop()
        fed.coords["west"].kill()
        killed = loop.time()
        # alice's stream to bob ends with StreamReset, within 5 s.
        with pytest.raises(StreamReset):
            while True:
                await cross.send(b"x" * 1000)
                await asyncio.sleep(0.05)
        assert loop.time() - killed < 6.0
        t = await asyncio.wait_for(watch.wait(), 5)
        assert (t.peer, t.reason) == ("bob", "vanished")
        # bob's id is free on east within 5 s of the kill.
        bob, waited = await connect_when_free(fed, "bob", "east", timeout=8.0)
        assert loop.time() - killed < 8.0, waited
        s, _ = await a.new_proxied_stream("bob")
        await s.send(b"new")
        assert await (await next_incoming(bob)).recv.recv() == b"new"
        writer.cancel()
        await wait_for(lambda: len(received) >= sent - 1, timeout=10)
        reader.cancel()
        assert received == list(range(len(received))) and len(received) >= sent - 1


async def test_nats_node_killed_under_traffic(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        # Each Coordinator is given one node; it learns the others from it.
        # west's node dies: it must reconnect to another.
        await fed.start("east", url=fed.cluster.urls[1])
        await fed.start("west", url=fed.cluster.urls[0])
        a, b = await fed.client("alice", "east"), await fed.client("bob", "west")
        send, _ = await a.new_proxied_stream("bob")
        inc = await next_incoming(b)
        received: list[int] = []
        reset = asyncio.Event()

        async def read() -> None:
            try:
                while True:
                    received.append(int(await inc.recv.recv()))
            except StreamReset:
                reset.set()

        reader = asyncio.create_task(read())
        sent = 0

        async def write() -> None:
            nonlocal sent
            with contextlib.suppress(StreamReset):
                while sent < 4000:
                    await send.send(b"%d" % sent)
                    sent += 1
                    if sent % 50 == 0:
                        await asyncio.sleep(0.01)

        writer = asyncio.create_task(write())
        await wait_for(lambda: sent > 500, timeout=10)
        await fed.cluster.kill(0)
        await asyncio.wait_for(writer, 30)
        await wait_for(lambda: reset.is_set() or len(received) == sent, timeout=15)
        reader.cancel()
        # Never silent loss, duplication or reorder: a prefix, in order.
        assert received == list(range(len(received)))
        if not reset.is_set():
            assert len(received) == sent
        # The federation still carries new streams.
        await wait_for(lambda: fed.cluster.alive(1), timeout=1)

        async def fresh() -> bytes:
            s, _ = await a.new_proxied_stream("bob")
            await s.send(b"after")
            return await (await next_incoming(b)).recv.recv()

        deadline = asyncio.get_running_loop().time() + 15
        while True:
            try:
                assert await asyncio.wait_for(fresh(), 5) == b"after"
                break
            except (StreamReset, NoSuchPeer, TimeoutError):
                if asyncio.get_running_loop().time() > deadline:
                    raise


async def test_no_nats_local_clients_keep_working(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west") as fed:
        c, d = await fed.client("carol", "east"), await fed.client("dave", "east")
        for i in range(3):
            await fed.cluster.kill(i)
        loop = asyncio.get_running_loop()
        # New admissions wait up to 2 s for the bucket, then are refused.
        start = loop.time()
        with pytest.raises(ConnectFailed, match="federation unavailable"):
            await fed.client("erin", "east")
        assert 1.5 < loop.time() - start < 10
        # Clients of one Coordinator keep working with each other.
        send, _ = await c.new_proxied_stream("dave")
        await send.send(b"still here")
        assert await (await next_incoming(d)).recv.recv() == b"still here"
        got: list[Any] = []
        server = asyncio.create_task(serve_mailbox(d, got))
        try:
            assert await c.ask("dave", 1, timeout=10) == ["re", 1]
        finally:
            server.cancel()


async def test_coordinator_flags_are_checked() -> None:
    from conec_actors import CoordConfig

    from .conftest import coord_cert

    cert = coord_cert()
    with pytest.raises(ValueError, match="cluster"):
        CoordConfig(cert.cert_pem, cert.key_pem, cluster="")
    with pytest.raises(ValueError, match="need cluster"):
        CoordConfig(cert.cert_pem, cert.key_pem, name="east")
    cfg = CoordConfig(cert.cert_pem, cert.key_pem, cluster="nats://a:1, nats://b:2",
                      name="east")
    from conec_actors.config import cluster_urls

    assert cluster_urls(cfg.cluster or "") == ["nats://a:1", "nats://b:2"]


async def test_tls_to_nats_with_the_coordinators_certificate(tmp_path: Path) -> None:
    from conec_actors import Coord, CoordConfig, FederationError

    from .nats_cluster import make_nats_tls, nats_cluster

    tls, own = make_nats_tls(("localhost",))
    async with nats_cluster(tmp_path, tls=tls) as cluster:
        # Without a certificate the servers accept, joining fails clearly.
        with pytest.raises(FederationError, match="no NATS server"):
            await Coord.start(CoordConfig(own.cert_pem, own.key_pem, port=0,
                                          cluster=cluster.url, name="plain"))
        coords = [await Coord.start(CoordConfig(
            own.cert_pem, own.key_pem, port=0, cluster=cluster.url, name=name,
            cluster_ca=tls.ca_pem)) for name in ("east", "west")]
        fig = (await coords[0].stats())["federation"]
        assert fig["name"] == "east" and fig["connected"] and fig["number"] > 0
        clients: list[Client] = []
        try:
            for cid, coord in (("alice", coords[0]), ("bob", coords[1])):
                clients.append(await Client.connect(ClientConfig(
                    cid, "localhost", addr=coord.address, ca=tls.ca_pem)))
            a, b = clients
            with pytest.raises(DuplicateId):
                clients.append(await Client.connect(ClientConfig(
                    "alice", "localhost", addr=coords[1].address, ca=tls.ca_pem)))
            send, _ = await a.new_proxied_stream("bob")
            await send.send(b"over tls")
            assert await (await next_incoming(b)).recv.recv() == b"over tls"
            fig = (await coords[0].stats())["federation"]
            assert fig["members"] == 1 and fig["batches_sent"] > 0
        finally:
            for c in clients:
                await c.close()
            for coord in coords:
                await coord.close()


async def test_broadcast_across_coordinators_has_one_order(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west", "north") as fed:
        names = ["alice", "bob", "carol", "dave"]
        homes = ["east", "west", "north", "west"]
        clients = [await fed.client(n, c) for n, c in zip(names, homes, strict=True)]
        members = [await c.new_broadcast("room") for c in clients]
        per_sender = 100

        async def send_all(i: int) -> None:
            for k in range(per_sender):
                await members[i][0].send(b"%s:%d" % (names[i].encode(), k))

        readers = [asyncio.create_task(drain(r, per_sender * len(names)))
                   for _, r in members]
        await asyncio.gather(*(send_all(i) for i in range(len(names))))
        seen = await asyncio.gather(*readers)
        # Counts are federation-wide, asked on any Coordinator.
        for c in clients:
            assert await c.broadcast_count("room") == (4, 4)
        outsider = await fed.client("erin", "north")
        assert await outsider.broadcast_count("room") == (4, 4)
        with pytest.raises(NoSuchBroadcast):
            await outsider.broadcast_count("nothing")
        # Every member heard every member, all in one order.
        for other in seen[1:]:
            assert other == seen[0]
        for name in names:
            mine = [m.data for m in seen[0] if m.sender == name]
            assert mine == [b"%s:%d" % (name.encode(), k) for k in range(per_sender)]


async def drain(recv: Any, n: int, timeout: float = 20) -> list[Any]:
    return [await asyncio.wait_for(recv.recv(), timeout) for _ in range(n)]


async def test_bucket_leader_killed_admissions_and_lookups_go_on(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west") as fed:
        a, b = await fed.client("alice", "east"), await fed.client("bob", "west")
        # The worst NATS node to lose: the one leading the ids bucket
        # (writes wait seconds for a new leader in nats-server 2.9).
        await fed.cluster.kill(await fed.cluster.stream_leader("KV_conec_ids"))

        async def retrying(what: Any, timeout: float = 10.0) -> Any:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    return await what()
                except (StreamReset, ConnectFailed, NoSuchPeer):
                    # Streams that were crossing hosts when the node died
                    # may be reset; a Coordinator on the dead node reconnects.
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        async def stream_to_bob() -> bytes:
            s, _ = await a.new_proxied_stream("bob")
            await s.send(b"during the election")
            return await (await next_incoming(b)).recv.recv()

        # Lookups go on ...
        assert await retrying(stream_to_bob) == b"during the election"
        # ... and so do admissions, and DuplicateId holds.
        carol = await retrying(lambda: fed.client("carol", "west"))
        with pytest.raises(DuplicateId):
            await fed.client("alice", "west")
        # Admitted on a replica's word while no leader takes writes, carol
        # is visible from other Coordinators once her claim is written.
        async def stream_to_carol() -> bytes:
            s, _ = await a.new_proxied_stream("carol")
            await s.send(b"hi carol")
            return await (await next_incoming(carol)).recv.recv()

        assert await retrying(stream_to_carol, timeout=20) == b"hi carol"
        with pytest.raises(DuplicateId):
            await fed.client("carol", "east")


async def test_coordinator_with_shards_in_a_federation(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        await fed.start("east", "--frontends", "2")
        await fed.start("west")
        # Six clients on east's two shards (placed by the kernel), one on west.
        easts = [await fed.client(f"e{i}", "east") for i in range(6)]
        w = await fed.client("w", "west")
        with pytest.raises(DuplicateId):
            await fed.client("e0", "west")
        with pytest.raises(DuplicateId):
            await fed.client("w", "east")
        got: list[Any] = []
        server = asyncio.create_task(serve_mailbox(w, got))
        servers = [asyncio.create_task(serve_mailbox(c, [])) for c in easts]
        try:
            for i, c in enumerate(easts):
                # Across hosts, both ways, and between east's own shards.
                assert await c.ask("w", i, timeout=10) == ["re", i]
                assert await w.ask(c.id, i, timeout=10) == ["re", i]
                other = easts[(i + 1) % len(easts)].id
                assert await c.ask(other, i, timeout=10) == ["re", i]
                for k in range(50):
                    await c.tell("w", (i, k))
            await wait_for(lambda: len(got) == 300, timeout=10)
            for i in range(6):
                assert [m for m in got if m[0] == i] == [[i, k] for k in range(50)]
            members = [await c.new_broadcast("room") for c in (easts[0], easts[1], w)]
            for n, (send, _) in enumerate(members):
                await send.send(b"%d" % n)
            seen = [[m.data for m in await drain(r, 3)] for _, r in members]
            assert seen[0] == seen[1] == seen[2] and sorted(seen[0]) == [b"0", b"1", b"2"]
        finally:
            server.cancel()
            for t in servers:
                t.cancel()


async def test_same_certificate_replaces_its_session_across_shards(tmp_path: Path) -> None:
    from conec_actors.certs import self_signed

    alice = self_signed(["alice"])
    async with federation(tmp_path) as fed:
        await fed.start("east", "--frontends", "2")
        await fed.start("west")
        w = await fed.client("w", "west")
        prev = await fed.client("alice", "east", cert=alice.cert_pem, key=alice.key_pem)
        for i in range(6):
            # Whichever shard the kernel puts it on, the new session replaces
            # the stale one, and the federation's entry follows it.
            new = await fed.client("alice", "east", cert=alice.cert_pem, key=alice.key_pem)
            await wait_for(lambda p=prev: p.is_closed, timeout=10)  # type: ignore[misc]
            assert not new.is_closed
            server = asyncio.create_task(serve_mailbox(new, []))
            try:
                assert await w.ask("alice", i, timeout=10) == ["re", i]
            finally:
                server.cancel()
            prev = new
        # Another certificate still gets DuplicateId, from either Coordinator.
        for coord in ("east", "west"):
            with pytest.raises(DuplicateId):
                await fed.client("alice", coord)


async def answer_as(c: Client) -> None:
    async for env in c.mailbox:
        if env.is_ask:
            await env.reply((c.id, env.body))


async def test_groups_across_coordinators(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west", "north") as fed:
        ms = [await fed.client("m0", "east"), await fed.client("m1", "west"),
              await fed.client("m2", "north")]
        s = await fed.client("s", "west")
        for m in ms:
            await m.join_group("g")
        # One group across the federation, asked from any Coordinator.
        for c in (*ms, s):
            await wait_for(lambda c=c: _members(c, "g", ["m0", "m1", "m2"]),  # type: ignore[misc]
                           timeout=10)
        tasks = [asyncio.create_task(answer_as(m)) for m in ms]
        try:
            answers = [await s.ask_group("g", i, timeout=10) for i in range(12)]
            assert [body for _, body in answers] == list(range(12))
            assert {who for who, _ in answers} == {"m0", "m1", "m2"}
            # A member that leaves is not chosen; one whose Coordinator
            # dies stops being chosen within the death's notice.
            await ms[0].leave_group("g")
            await wait_for(lambda: _members(s, "g", ["m1", "m2"]), timeout=10)
            fed.coords["north"].kill()
            await wait_for(lambda: _members(s, "g", ["m1"]), timeout=10)
            answers = [await s.ask_group("g", i, timeout=10) for i in range(4)]
            assert {who for who, _ in answers} == {"m1"}
        finally:
            for t in tasks:
                t.cancel()


async def _members(c: Client, name: str, want: list[str]) -> bool:
    return await c.group_members(name) == want


async def test_a_groups_home_coordinator_dies(tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west", "north") as fed:
        # m0 joins first: east homes the group.
        m0 = await fed.client("m0", "east")
        await m0.join_group("g")
        m1, m2 = await fed.client("m1", "west"), await fed.client("m2", "north")
        await m1.join_group("g")
        await m2.join_group("g")
        s = await fed.client("s", "west")
        await wait_for(lambda: _members(s, "g", ["m0", "m1", "m2"]), timeout=10)
        fed.coords["east"].kill()
        # The members left are joined again at a new home, unasked.
        await wait_for(lambda: _members(s, "g", ["m1", "m2"]), timeout=15)
        tasks = [asyncio.create_task(answer_as(m)) for m in (m1, m2)]
        try:
            answers = [await s.ask_group("g", i, timeout=10) for i in range(6)]
            assert {who for who, _ in answers} == {"m1", "m2"}
        finally:
            for t in tasks:
                t.cancel()


async def test_a_stalled_reader_on_another_host_stops_exactly_its_writer(
        tmp_path: Path) -> None:
    async with federation(tmp_path, "east", "west") as fed:
        a, b = await fed.client("alice", "east"), await fed.client("bob", "west")
        c, d = await fed.client("carol", "east"), await fed.client("dave", "west")
        chunk = 64 * 1024
        total = 400  # 25 MiB, far more than any window
        stalled, _ = await a.new_proxied_stream("bob")
        sent = 0

        async def write() -> None:
            nonlocal sent
            for i in range(total):
                await stalled.send(bytes([i % 251]) * chunk)
                sent += 1

        writer = asyncio.create_task(write())
        inc = await next_incoming(b)
        # bob reads nothing: alice's writes stop, bounded by the windows.
        await asyncio.sleep(3)
        held = sent
        await asyncio.sleep(1)
        assert sent == held < total // 4
        # Another pair across the same two hosts is not held up.
        send, _ = await c.new_proxied_stream("dave")
        for i in range(200):
            await send.send(b"%d" % i)
        other = await next_incoming(d)
        assert [await asyncio.wait_for(other.recv.recv(), 10) for _ in range(200)] == \
            [b"%d" % i for i in range(200)]
        # bob reads: everything arrives, in order, whole.
        for i in range(total):
            assert await asyncio.wait_for(inc.recv.recv(), 20) == bytes([i % 251]) * chunk
        await writer
        # Never a slow consumer in NATS's eyes.
        for i in range(3):
            assert "Slow Consumer" not in fed.cluster.log_path(i).read_text()


async def test_same_certificate_replaces_its_session_on_another_coordinator(
        tmp_path: Path) -> None:
    from conec_actors.certs import self_signed

    alice = self_signed(["alice"])
    async with federation(tmp_path, "east", "west") as fed:
        w = await fed.client("w", "west")
        old = await fed.client("alice", "east", cert=alice.cert_pem, key=alice.key_pem)
        watch = await w.watch("alice")
        # alice comes back through west (her east session gone stale, say):
        # the same certificate replaces that session at once.
        new = await fed.client("alice", "west", cert=alice.cert_pem, key=alice.key_pem)
        await wait_for(lambda: old.is_closed, timeout=10)
        assert not new.is_closed
        server = asyncio.create_task(serve_mailbox(new, []))
        try:
            assert await w.ask("alice", 1, timeout=10) == ["re", 1]
        finally:
            server.cancel()
        # No departure: the watch on her holds.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(watch.wait()), 1.0)
        # Another certificate is still refused, on either Coordinator.
        for coord in ("east", "west"):
            with pytest.raises(DuplicateId):
                await fed.client("alice", coord)
