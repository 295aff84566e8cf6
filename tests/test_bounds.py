"""Per-stream and per-pair bounds (DESIGN 3.1): partial messages, control
replies, stream slots, stream numbers, and a stream's message size limit
when its two ends' limits differ. Everything runs through a real
Coordinator; the hostile clients are real clients whose protocol layer is
bypassed (raw frames, a control stream nobody reads)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conec_actors import (
    MessageTooLarge,
    NonblockingInStream,
    NoSuchPeer,
    StreamIdInUse,
    StreamReset,
    wire,
)
from conec_actors.streams import STREAM_WINDOW, BroadcastInStream, BroadcastMessage
from conec_actors.wire import Code

from .conftest import coordinator

MiB = 1024 * 1024


async def next_incoming(client: Any, timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(client.incoming.__aiter__().__anext__(), timeout)


def unsent(send: Any) -> int:
    core = send._core  # the raw core of a stream the test owns
    return int(core.conn.unsent(core.quic_id))


# -- stream numbers ------------------------------------------------------------------


def test_used_numbers_is_a_floor_plus_the_few_out_of_order() -> None:
    from conec_actors.used_numbers import MAX_OUT_OF_ORDER, UsedNumbers

    used = UsedNumbers()
    assert used.next_free() == 0
    assert used.add(0) and used.add(1)
    assert not used.add(1)  # never reused
    assert used.add(5)  # out of order
    assert 5 in used and 3 not in used and 1 in used
    assert used.next_free() == 2 and len(used) == 1
    for n in (2, 3, 4):
        assert used.add(n)
    assert used.floor == 6 and len(used) == 0  # the gap filled: nothing remembered
    assert not used.add(5)
    # scattered numbers cost at most MAX_OUT_OF_ORDER entries: past that the
    # lowest gap is given up (those numbers count as used, never reused)
    for k in range(1, MAX_OUT_OF_ORDER + 2):
        assert used.add(10 + 2 * k)
    assert len(used) <= MAX_OUT_OF_ORDER
    assert 7 in used and 12 in used and not used.add(12)
    assert 13 not in used and used.add(13)


@pytest.mark.timeout(180)
async def test_ten_thousand_sequential_opens_keep_the_bookkeeping_constant() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        session = h.coord._fe.by_id["alice"]
        for _ in range(10_000):
            with pytest.raises(NoSuchPeer):
                await a.new_proxied_stream("nobody")
        # every number was used once; none is remembered one by one
        assert session.core.used_numbers.floor == 10_000 and len(session.core.used_numbers) == 0
        assert a._used_proxied.floor == 10_000 and len(a._used_proxied) == 0
        with pytest.raises(NoSuchPeer):  # numbers stay unique: 10,000 is next
            await a.new_proxied_stream("nobody", stream_id=10_000)
        await h.client("bob")
        with pytest.raises(StreamIdInUse):
            await a.new_proxied_stream("bob", stream_id=5)
        send, _ = await a.new_proxied_stream("bob", stream_id=20_000)
        await send.send(b"x")
        assert a._used_proxied.floor == 10_001 and len(a._used_proxied) == 1


# -- partial messages ----------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_client_that_does_not_read_holds_at_most_its_window_of_a_big_message() -> None:
    """A writer that announces a big message and trickles it into a stream
    nobody reads is stopped by the reader's window; once the application
    reads, the message completes whole."""
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"hello")
        inc = await next_incoming(b)
        assert await inc.recv.recv() == b"hello"
        size = 4 * MiB
        body = bytes(range(256)) * (size // 256)
        raw = send._core
        raw.write_raw(size.to_bytes(4, "big") + body[:2 * MiB])
        reader = inc.send._core
        await asyncio.sleep(1.5)  # nobody reads at bob meanwhile
        # bob holds at most its window; the rest waits at alice's end
        assert reader.decoder.buffered <= STREAM_WINDOW, reader.decoder.buffered
        assert unsent(send) > MiB
        raw.write_raw(body[2 * MiB:])
        assert await asyncio.wait_for(inc.recv.recv(), 30) == body
        await send.send(b"after")
        assert await inc.recv.recv() == b"after"


@pytest.mark.timeout(60)
async def test_a_broadcast_member_trickling_a_big_message_costs_the_front_end_little() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        sa, ra = await a.new_broadcast("room")
        _sb, rb = await b.new_broadcast("room")
        await sa.send(b"hi")
        assert await ra.recv() == BroadcastMessage("alice", b"hi")
        assert await rb.recv() == BroadcastMessage("alice", b"hi")
        size = 4 * MiB
        body = bytes(range(256)) * (size // 256)
        raw = sa._core
        raw.write_raw(size.to_bytes(4, "big") + body[:2 * MiB])
        await asyncio.sleep(1.5)  # bob does not read: the front-end must not absorb it
        assert unsent(sa) > MiB
        raw.write_raw(body[2 * MiB:])
        got_a, got_b = await asyncio.wait_for(asyncio.gather(ra.recv(), rb.recv()), 30)
        assert got_a == got_b == BroadcastMessage("alice", body)
        await sa.send(b"after")
        assert await rb.recv() == BroadcastMessage("alice", b"after")


async def test_a_member_leaving_inside_a_big_message_harms_nobody() -> None:
    async with coordinator() as h:
        a, b, c = await h.client("alice"), await h.client("bob"), await h.client("carol")
        sa, ra = await a.new_broadcast("room")
        _sb, rb = await b.new_broadcast("room")
        sc, rc = await c.new_broadcast("room")
        # The others read too (the slowest reader throttles the broadcast).
        drains = [asyncio.create_task(_read_all(r)) for r in (ra, rc)]
        await sc.send(b"before")
        assert await rb.recv() == BroadcastMessage("carol", b"before")
        # alice's big message is fanned out piece by piece, then she resets
        sa._core.write_raw((MiB).to_bytes(4, "big") + b"p" * 100_000)
        reading = asyncio.create_task(rb.recv())
        await asyncio.sleep(0.5)
        sa.reset(3)
        await sc.send(b"after")  # waited behind alice's message, then goes out
        assert await asyncio.wait_for(reading, 10) == BroadcastMessage("carol", b"after")
        for d in drains:
            d.cancel()
        await asyncio.gather(*drains, return_exceptions=True)


async def _read_all(r: BroadcastInStream) -> None:
    async for _ in r:
        pass


async def test_a_broadcast_reader_with_a_smaller_limit_is_told_not_reset() -> None:
    async with coordinator() as h:
        a = await h.client("alice", max_message_size=100_000)
        b = await h.client("bob", max_message_size=100)
        sa, ra = await a.new_broadcast("room")
        _sb, rb = await b.new_broadcast("room")
        for size in (500, 50_000):  # kept whole / fanned out in pieces
            await sa.send(b"L" * size)
            assert await ra.recv() == BroadcastMessage("alice", b"L" * size)
            with pytest.raises(MessageTooLarge, match=f"{size} bytes from 'alice'"):
                await rb.recv()
        await sa.send(b"small")
        assert await rb.recv() == BroadcastMessage("alice", b"small")
        assert await ra.recv() == BroadcastMessage("alice", b"small")
        # behind a NonblockingInStream the notice is one item, not the end
        nb = NonblockingInStream(rb, 8)
        for data in (b"S" * 500, b"ok"):
            await sa.send(data)
            assert await ra.recv() == BroadcastMessage("alice", data)
        with pytest.raises(MessageTooLarge):
            await nb.recv()
        assert await nb.recv() == BroadcastMessage("alice", b"ok")


# -- control replies -----------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_control_requests_stop_being_read_while_their_replies_are_unread() -> None:
    CONTROL_REPLY_HIGH = 64 * 1024
    async with coordinator() as h:
        a = await h.client("alice")
        link = a._link
        session = h.coord._fe.by_id["alice"]
        link._control_data = lambda *args: None  # from now on alice reads no reply
        # replies (~600 B: a reason and the name, each cut to 256 characters)
        # outweigh these requests (~320 B): without a bound, they pile up
        for i in range(8000):
            link.send_control(wire.ChannelRequest(10_000 + i, "Q" * 300))
            if i % 500 == 0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        backlog = session.conn.unsent(session.core.control_quic_id)
        assert backlog < CONTROL_REPLY_HIGH + 4096, backlog
        assert a._conn.unsent(0) > MiB  # the front-end stopped taking requests
        assert a.id == "alice" and not a.is_closed


async def test_a_reason_quotes_at_most_256_characters_of_peer_input() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        _, intro = await a._link.request_channel("Q" * 16_000, True)
        assert intro.code == Code.NO_SUCH_PEER
        assert len(intro.reason) < 400 and "16000 characters" in intro.reason
        assert "Q" * 256 in intro.reason and "Q" * 257 not in intro.reason


# -- stream slots --------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_one_opener_holds_at_most_32_streams_to_a_target() -> None:
    MAX_STREAMS_PER_PAIR = 32
    async with coordinator() as h:
        a, b, c = await h.client("alice"), await h.client("bob"), await h.client("carol")
        opened = [await a.new_proxied_stream("bob") for _ in range(MAX_STREAMS_PER_PAIR)]
        held = [await next_incoming(b) for _ in range(MAX_STREAMS_PER_PAIR)]  # unread
        extra = asyncio.create_task(a.new_proxied_stream("bob"))
        await asyncio.sleep(0.5)
        assert not extra.done()  # waits at the Coordinator; bob sees nothing of it
        # everyone else still reaches bob
        send_c, _recv_c = await c.new_proxied_stream("bob")
        await send_c.send(b"from carol")
        inc_c = await next_incoming(b)
        assert inc_c.peer == "carol" and await inc_c.recv.recv() == b"from carol"

        async def answer() -> None:
            async for env in b.mailbox:
                await env.reply(b"pong")

        answering = asyncio.create_task(answer())
        assert await c.ask("bob", b"ping") == b"pong"
        # one of alice's streams ends: the waiting open proceeds
        send0, recv0 = opened[0]
        send0.reset(0)
        recv0.close()
        send_x, _ = await asyncio.wait_for(extra, 10)
        await send_x.send(b"the 33rd")
        inc_x = await next_incoming(b)
        assert inc_x.peer == "alice" and await inc_x.recv.recv() == b"the 33rd"
        answering.cancel()
        del held


async def test_incoming_streams_nobody_claims_are_reset_after_the_idle_timeout() -> None:
    async with coordinator(idle_timeout=1.0) as h:
        a, _b = await h.client("alice"), await h.client("bob")
        send, recv = await a.new_proxied_stream("bob")
        await send.send(b"anyone?")
        with pytest.raises(StreamReset) as err:
            await asyncio.wait_for(recv.recv(), 10)
        assert err.value.code == Code.UNCLAIMED


# -- message size limits ---------------------------------------------------------------


async def test_a_proxied_stream_takes_the_smaller_limit_of_its_two_ends() -> None:
    async with coordinator() as h:
        a = await h.client("alice", max_message_size=1000)
        b = await h.client("bob", max_message_size=100)
        send, recv = await a.new_proxied_stream("bob")
        with pytest.raises(MessageTooLarge):
            await send.send(b"x" * 101)  # legal for alice, not for bob
        await send.send(b"y" * 100)  # the stream is still usable
        inc = await next_incoming(b)
        assert await inc.recv.recv() == b"y" * 100  # bob was not reset
        await inc.send.send(b"z" * 100)
        assert await recv.recv() == b"z" * 100
        with pytest.raises(MessageTooLarge):
            await inc.send.send(b"z" * 101)


@pytest.mark.timeout(90)
async def test_no_stream_is_opened_beyond_the_targets_quic_stream_limit() -> None:
    """Openers that together fill the target's QUIC stream limit: a further
    open waits at the Coordinator (it is not accepted into a stream QUIC
    would hold back) and proceeds once the target has room again."""
    async with coordinator() as h:
        b = await h.client("bob")
        target = h.coord._fe.by_id["bob"].conn.quic
        held: list[Any] = []
        opened: list[Any] = []
        k = 0
        while target.can_open_stream():
            opener = await h.client(f"o{k}")
            k += 1
            for _ in range(32):
                if not target.can_open_stream():
                    break
                opened.append(await opener.new_proxied_stream("bob"))
                held.append(await next_incoming(b))
        late = await h.client("late")
        extra = asyncio.create_task(late.new_proxied_stream("bob"))
        await asyncio.sleep(0.5)
        assert not extra.done()  # not accepted into a stream QUIC holds back
        send0, recv0 = opened[0]
        send0.reset(0)
        recv0.close()
        send_x, _ = await asyncio.wait_for(extra, 10)
        await send_x.send(b"room again")
        inc = await next_incoming(b)
        assert inc.peer == "late" and await inc.recv.recv() == b"room again"
