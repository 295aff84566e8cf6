"""Broadcast streams through a real Coordinator with 1 and 2 broadcast workers."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from conec_actors import MessageTooLarge, NoSuchBroadcast, StreamClosed, StreamReset
from conec_actors.streams import BroadcastMessage
from conec_actors.wire import Code

from .conftest import coordinator, wait_for

pytestmark = pytest.mark.parametrize("workers", [1, 2], ids=["1bw", "2bw"])


async def drain(recv: Any, n: int, timeout: float = 10) -> list[BroadcastMessage[bytes]]:
    return [await asyncio.wait_for(recv.recv(), timeout) for _ in range(n)]


async def count(h: Any) -> int:
    return int(await h.coord.num_broadcasts())


async def test_everyone_gets_everything_in_one_order_with_senders(workers: int) -> None:
    async with coordinator(broadcast_workers=workers) as h:
        names = ["alice", "bob", "carol"]
        clients = [await h.client(n) for n in names]
        members = [await c.new_broadcast("room") for c in clients]
        per_sender = 200

        async def talk(i: int) -> None:
            send = members[i][0]
            for k in range(per_sender):
                await send.send(b"%s:%d" % (names[i].encode(), k))

        readers = [asyncio.create_task(drain(r, per_sender * 3)) for _, r in members]
        await asyncio.gather(*(talk(i) for i in range(3)))
        seen = [await r for r in readers]
        assert seen[0] == seen[1] == seen[2]  # one order for all, own messages included
        for name in names:
            mine = [m.data for m in seen[0] if m.sender == name]
            assert mine == [b"%s:%d" % (name.encode(), k) for k in range(per_sender)]


async def test_members_see_what_is_ordered_after_their_join(workers: int) -> None:
    async with coordinator(broadcast_workers=workers) as h:
        a, b = await h.client("alice"), await h.client("bob")
        sa, ra = await a.new_broadcast("news")
        await sa.send(b"early")
        assert await ra.recv() == BroadcastMessage("alice", b"early")
        _sb, rb = await b.new_broadcast("news")
        await sa.send(b"late")
        assert await rb.recv() == BroadcastMessage("alice", b"late")
        assert await ra.recv() == BroadcastMessage("alice", b"late")


async def test_counts_and_unknown_broadcasts(workers: int) -> None:
    async with coordinator(broadcast_workers=workers) as h:
        a, b = await h.client("alice"), await h.client("bob")
        with pytest.raises(NoSuchBroadcast):
            await a.broadcast_count("nothing")
        sa, _ra = await a.new_broadcast("c")
        assert await a.broadcast_count("c") == (1, 1)
        sb, rb = await b.new_broadcast("c")
        assert await a.broadcast_count("c") == (2, 2)  # as soon as the join returned
        assert await count(h) == 1
        await sb.finish()  # stops sending, keeps receiving
        await wait_for(lambda: _counts(a, "c", (1, 2)))
        await sa.send(b"still heard")
        assert (await rb.recv()).data == b"still heard"
        rb.close()
        await wait_for(lambda: _counts(a, "c", (1, 1)))


async def _counts(client: Any, name: str, expected: tuple[int, int]) -> bool:
    return bool(await client.broadcast_count(name) == expected)


async def test_clean_end_when_every_member_finished_then_fresh_start(workers: int) -> None:
    async with coordinator(broadcast_workers=workers) as h:
        a, b = await h.client("alice"), await h.client("bob")
        sa, ra = await a.new_broadcast("talk")
        sb, rb = await b.new_broadcast("talk")
        await sa.send(b"bye")
        await sa.finish()
        await sb.finish()
        for r in (ra, rb):
            assert [m async for m in r] == [BroadcastMessage("alice", b"bye")]
            with pytest.raises(StreamClosed):
                await r.recv()
        await wait_for(lambda: _zero(h))
        with pytest.raises(NoSuchBroadcast):
            await a.broadcast_count("talk")
        s2, r2 = await b.new_broadcast("talk")  # a fresh broadcast
        assert await b.broadcast_count("talk") == (1, 1)
        await s2.send(b"new")
        assert await r2.recv() == BroadcastMessage("bob", b"new")


async def _zero(h: Any) -> bool:
    return await count(h) == 0


async def test_no_reader_left_removes_it_and_later_sends_fail(workers: int) -> None:
    async with coordinator(broadcast_workers=workers) as h:
        a, b = await h.client("alice"), await h.client("bob")
        sa, ra = await a.new_broadcast("quiet")
        _sb, rb = await b.new_broadcast("quiet")
        ra.close()
        rb.close()
        await wait_for(lambda: _zero(h))
        with pytest.raises(StreamReset) as err:
            for _ in range(1000):  # up to 10 s on a loaded machine
                await sa.send(b"anyone?")
                await asyncio.sleep(0.01)
        assert err.value.code == Code.BROADCAST_ENDED


class _Flood:
    """Sends `data` on `send` in a loop, counting the bytes sent."""

    def __init__(self, send: Any, data: bytes) -> None:
        self.sent = 0
        self.task = asyncio.create_task(self._run(send, data))

    async def _run(self, send: Any, data: bytes) -> None:
        while True:
            await send.send(data)
            self.sent += len(data)

    async def stalled(self, quiet: float = 0.5, timeout: float = 10.0) -> int:
        """The byte count once it has stopped moving for `quiet` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                before = self.sent
                await asyncio.sleep(quiet)
                if before and self.sent == before:
                    return before


async def test_slowest_reader_throttles_and_closing_it_unblocks(workers: int) -> None:
    async with coordinator(broadcast_workers=workers) as h:
        a, b, slow = await h.client("alice"), await h.client("bob"), await h.client("slow")
        sa, ra = await a.new_broadcast("bulk")
        _sb, rb = await b.new_broadcast("bulk")
        _ss, rs = await slow.new_broadcast("bulk")
        chunk = b"x" * 65536
        readers = [asyncio.create_task(_count_forever(r)) for r in (ra, rb)]
        flood = _Flood(sa, chunk)
        stalled = await flood.stalled()  # throttled by the slow reader
        assert stalled < 8 * 1024 * 1024
        rs.close()  # the slow member stops counting at once
        await wait_for(lambda: flood.sent > stalled + 20 * len(chunk), timeout=10)
        flood.task.cancel()
        for t in readers:
            t.cancel()


async def test_a_stalled_broadcast_queues_little(workers: int) -> None:
    # What queues ahead of the slowest reader is latency for every member:
    # broadcast streams hold ~350 KB here (~930 KB with point-to-point buffers).
    async with coordinator(broadcast_workers=workers) as h:
        a, slow = await h.client("alice"), await h.client("slow")
        sa, ra = await a.new_broadcast("q")
        _ss, rs = await slow.new_broadcast("q")
        reader = asyncio.create_task(_count_forever(ra))
        flood = _Flood(sa, b"y" * 1000)
        stalled = await flood.stalled()  # throttled by the slow reader
        assert stalled < 700 * 1024, f"{stalled} bytes queued ahead of a stalled reader"
        flood.task.cancel()
        reader.cancel()
        rs.close()


async def _count_forever(recv: Any) -> None:
    while True:
        await recv.recv()


async def test_a_vanished_reader_is_dropped_at_its_idle_timeout(workers: int) -> None:
    async with coordinator(broadcast_workers=workers, idle_timeout=1.0) as h:
        a, ghost = await h.client("alice"), await h.client("ghost")
        sa, ra = await a.new_broadcast("b")
        _sg, _rg = await ghost.new_broadcast("b")
        reader = asyncio.create_task(_count_forever(ra))
        ghost._endpoint.close()  # gone without a word, its reader never reads
        sent = 0
        for _ in range(200):
            await asyncio.wait_for(sa.send(b"y" * 65536), 8)
            sent += 1
        assert sent == 200
        assert await a.broadcast_count("b") == (1, 1)
        reader.cancel()


async def test_broadcast_worker_restart_loses_nothing(workers: int) -> None:
    async with coordinator(broadcast_workers=workers) as h:
        a, b = await h.client("alice"), await h.client("bob")
        sa, ra = await a.new_broadcast("steady")
        _sb, rb = await b.new_broadcast("steady")
        n = 300

        async def talk() -> None:
            for k in range(n):
                await sa.send(b"%d" % k)
                if k == n // 3:
                    for pid in h.coord.worker_pids("broadcast"):
                        os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(0.001)

        got_a = asyncio.create_task(drain(ra, n))
        got_b = asyncio.create_task(drain(rb, n))
        await talk()
        expected = [BroadcastMessage("alice", b"%d" % k) for k in range(n)]
        assert await got_a == expected
        assert await got_b == expected
        await wait_for(lambda: _counts(b, "steady", (2, 2)), timeout=5)
        c = await h.client("carol")
        _sc, _rc = await c.new_broadcast("steady")  # joins after the restart work
        assert await c.broadcast_count("steady") == (3, 3)
        st = await h.coord.stats()
        assert sum(w["restarts"] for w in st["workers"] if w["kind"] == "broadcast") \
            == workers


async def test_oversize_message_resets_only_that_member(workers: int) -> None:
    async with coordinator(broadcast_workers=workers, max_message_size=1000) as h:
        a, b = await h.client("alice"), await h.client("bob")
        sa, ra = await a.new_broadcast("lim")
        sb, rb = await b.new_broadcast("lim")
        with pytest.raises(MessageTooLarge):
            await sa.send(b"z" * 1001)
        sa._core.write_raw((5000).to_bytes(4, "big") + b"z" * 5000)
        with pytest.raises(StreamReset) as err:
            await asyncio.wait_for(ra.recv(), 5)
        assert err.value.code == Code.MESSAGE_TOO_LARGE
        await sb.send(b"b goes on")
        assert await rb.recv() == BroadcastMessage("bob", b"b goes on")


async def test_the_control_stream_outlasts_its_window(workers: int) -> None:
    # Control messages (here ~275 B count requests) must keep flowing long
    # after their total passes a stream window (256 KiB): the front-end
    # credits the control stream as it decodes it.
    async with coordinator(broadcast_workers=workers) as h:
        a = await h.client("alice")
        name = "n" * 250
        for _ in range(60):
            got = await asyncio.gather(*(a.broadcast_count(name) for _ in range(20)),
                                       return_exceptions=True)
            assert all(isinstance(e, NoSuchBroadcast) for e in got), got
        await a.new_broadcast(name)
        assert await a.broadcast_count(name) == (1, 1)


async def test_a_member_that_finished_and_stopped_reading_is_let_go(workers: int) -> None:
    async with coordinator(broadcast_workers=workers) as h:
        a, b = await h.client("alice"), await h.client("bob")
        _sa, ra = await a.new_broadcast("c")
        sb, rb = await b.new_broadcast("c")
        await wait_for(lambda: _counts(a, "c", (2, 2)))
        members = h.coord._fe.hub.broadcasts["c"].members  # the front-end's own view
        await sb.finish()
        rb.close()
        await wait_for(lambda: _counts(a, "c", (1, 1)))
        await wait_for(lambda: len(members) == 1)
        assert [leg.session.client_id for leg in members] == ["alice"]
        ra.close()


async def test_large_and_small_messages_from_many_members_keep_one_order(workers: int) -> None:
    # Messages above what the front-end keeps until whole go out in pieces;
    # other members' messages wait for them and never interleave.
    async with coordinator(broadcast_workers=workers) as h:
        names = ["alice", "bob", "carol"]
        clients = [await h.client(n) for n in names]
        members = [await c.new_broadcast("mixed") for c in clients]
        sizes = [0, 10, 5000, 12_300, 40_000, 1, 200_000, 700, 16_000, 3]

        def body(i: int, k: int) -> bytes:
            return bytes([65 + i]) * 8 + (b"%d:" % k) + bytes([k % 251]) * sizes[k]

        async def talk(i: int) -> None:
            send = members[i][0]
            for k in range(len(sizes)):
                await send.send(body(i, k))

        total = len(sizes) * len(names)
        readers = [asyncio.create_task(drain(r, total, timeout=30)) for _, r in members]
        await asyncio.gather(*(talk(i) for i in range(len(names))))
        seen = [await r for r in readers]
        assert seen[0] == seen[1] == seen[2]
        for i, name in enumerate(names):
            mine = [m.data for m in seen[0] if m.sender == name]
            assert mine == [body(i, k) for k in range(len(sizes))]
