"""Proxied streams through a real Coordinator (front-end + routing worker)."""

from __future__ import annotations

import asyncio

import pytest

from conec_actors import (
    IncomingStream,
    MessageTooLarge,
    NoSuchPeer,
    StreamClosed,
    StreamId,
    StreamIdInUse,
    StreamReset,
)
from conec_actors.wire import Code

from .conftest import coordinator, wait_for


async def next_incoming(client: object) -> IncomingStream:
    it = client.incoming.__aiter__()  # type: ignore[attr-defined]
    return await asyncio.wait_for(it.__anext__(), 5)


async def test_round_trip_both_directions() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, recv = await a.new_proxied_stream("bob")
        await send.send(b"hello")
        inc = await next_incoming(b)
        assert inc.peer == "alice"
        assert inc.stream_id == StreamId("proxied", send.stream_id.n)
        assert inc.stream_id.is_proxied and not inc.stream_id.is_direct
        assert await inc.recv.recv() == b"hello"
        await inc.send.send(b"world")
        assert await recv.recv() == b"world"


async def test_order_and_integrity_many_sizes() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        msgs = [bytes([i % 251]) * (i * 97 % 70000) for i in range(200)]

        async def writer() -> None:
            for m in msgs:
                await send.send(m)
            await send.finish()

        task = asyncio.create_task(writer())
        inc = await next_incoming(b)
        got = [m async for m in inc.recv]
        await task
        assert got == msgs


async def test_empty_message_and_memoryview() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"")
        await send.send(memoryview(b"mv"))
        await send.send(bytearray(b"ba"))
        inc = await next_incoming(b)
        assert [await inc.recv.recv() for _ in range(3)] == [b"", b"mv", b"ba"]


async def test_loopback_to_self() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        send, recv = await a.new_proxied_stream("alice")
        await send.send(b"me")
        inc = await next_incoming(a)
        assert inc.peer == "alice"
        assert await inc.recv.recv() == b"me"
        await inc.send.send(b"also me")
        assert await recv.recv() == b"also me"


async def test_no_such_peer() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        with pytest.raises(NoSuchPeer, match="nobody"):
            await a.new_proxied_stream("nobody")
        with pytest.raises(NoSuchPeer):
            await a.new_proxied_stream("Not-A-Valid-Id")
        # the client is still usable
        await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"ok")


async def test_explicit_stream_ids_and_reuse() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob", stream_id=42)
        assert send.stream_id == StreamId("proxied", 42)
        inc = await next_incoming(b)
        assert inc.stream_id.n == 42
        with pytest.raises(StreamIdInUse):
            await a.new_proxied_stream("bob", stream_id=42)
        # numbers are per opener: bob may use 42 toward alice
        send2, _ = await b.new_proxied_stream("alice", stream_id=42)
        assert send2.stream_id.n == 42
        # the default counter skips numbers already taken
        s3, _ = await a.new_proxied_stream("bob")
        s4, _ = await a.new_proxied_stream("bob")
        assert len({42, s3.stream_id.n, s4.stream_id.n}) == 3
        for bad in (-1, 2**62, "3"):
            with pytest.raises(ValueError):
                await a.new_proxied_stream("bob", stream_id=bad)  # type: ignore[arg-type]


async def test_finish_gives_clean_end_then_stream_closed() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        async with send:
            await send.send(b"1")
            await send.send(b"2")
        inc = await next_incoming(b)
        assert await inc.recv.recv() == b"1"
        assert await inc.recv.recv() == b"2"
        with pytest.raises(StreamClosed):
            await inc.recv.recv()
        with pytest.raises(StreamClosed):
            await send.send(b"after finish")


async def test_reset_reaches_reader_with_code() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"x")
        inc = await next_incoming(b)
        assert await inc.recv.recv() == b"x"
        send.reset(7)
        with pytest.raises(StreamReset) as err:
            await inc.recv.recv()
        assert err.value.code == 7
        with pytest.raises(ValueError):
            send.reset(1 << 20)


async def test_async_with_send_resets_on_exception() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        with pytest.raises(RuntimeError):
            async with send:
                await send.send(b"partial")
                raise RuntimeError("boom")
        inc = await next_incoming(b)
        # a reset may overtake data already sent: the reader sees at most the
        # whole message, then the reset, never a clean end
        with pytest.raises(StreamReset) as err:
            assert await inc.recv.recv() == b"partial"
            await inc.recv.recv()
        assert err.value.code == 0


async def test_reader_close_stops_writer() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"x")
        inc = await next_incoming(b)
        async with inc.recv:
            assert await inc.recv.recv() == b"x"
        with pytest.raises(StreamReset) as err:
            for _ in range(1000):
                await send.send(b"y" * 1000)
                await asyncio.sleep(0.005)
        assert err.value.code == Code.READER_CLOSED


async def test_message_too_large_sender_side_keeps_stream_usable() -> None:
    async with coordinator(max_message_size=1000) as h:
        a = await h.client("alice")
        b = await h.client("bob")
        assert a.max_message_size == 1000  # the Coordinator's smaller limit wins
        send, _ = await a.new_proxied_stream("bob")
        with pytest.raises(MessageTooLarge):
            await send.send(b"z" * 1001)
        await send.send(b"z" * 1000)
        inc = await next_incoming(b)
        assert await inc.recv.recv() == b"z" * 1000


async def test_client_limit_smaller_than_coordinator() -> None:
    async with coordinator() as h:
        a = await h.client("alice", max_message_size=10)
        assert a.max_message_size == 10
        await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        with pytest.raises(MessageTooLarge):
            await send.send(b"0123456789A")


async def test_oversize_frame_from_a_broken_writer_resets_only_that_stream() -> None:
    """A writer that bypasses the client's check (a broken or hostile peer)
    gets its stream reset by the Coordinator; other streams keep flowing."""
    async with coordinator(max_message_size=1000) as h:
        a, b = await h.client("alice"), await h.client("bob")
        good_send, _ = await a.new_proxied_stream("bob")
        bad_send, _ = await a.new_proxied_stream("bob")
        good = await next_incoming(b)
        bad = await next_incoming(b)
        core = bad_send._core
        core.write_raw((5000).to_bytes(4, "big") + b"q" * 5000)  # lies about the limit
        with pytest.raises(StreamReset) as err:
            await bad.recv.recv()
        assert err.value.code == Code.MESSAGE_TOO_LARGE
        with pytest.raises(StreamReset):
            for _ in range(1000):  # up to 10 s on a loaded machine
                await bad_send.send(b"more")
                await asyncio.sleep(0.01)
        await good_send.send(b"still fine")
        assert await good.recv.recv() == b"still fine"


async def test_truncated_message_is_a_reset_not_a_clean_end() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        core = send._core
        core.write_raw((100).to_bytes(4, "big") + b"only part")
        core.conn.send(core.quic_id, b"", end=True)
        inc = await next_incoming(b)
        with pytest.raises(StreamReset) as err:
            await inc.recv.recv()
        assert err.value.code == Code.PROTOCOL


async def test_back_pressure_stalls_writer_but_not_other_streams() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        stalled_send, _ = await a.new_proxied_stream("bob")
        flowing_send, _ = await a.new_proxied_stream("bob")
        stalled = await next_incoming(b)
        flowing = await next_incoming(b)
        chunk = b"s" * 65536
        sent = 0

        async def flood() -> None:
            nonlocal sent
            while True:
                await stalled_send.send(chunk)
                sent += 1

        task = asyncio.create_task(flood())
        # the writer must block: windows and watermarks bound what is in flight
        await asyncio.sleep(1.0)
        blocked_at = sent
        await asyncio.sleep(0.5)
        assert sent == blocked_at, "writer kept going although nobody reads"
        assert sent * len(chunk) < 4 * 1024 * 1024
        # meanwhile another stream on the same connections flows
        for i in range(50):
            await flowing_send.send(b"%d" % i)
        assert [await flowing.recv.recv() for _ in range(50)] == [b"%d" % i for i in range(50)]
        # reading resumes the stalled stream, nothing lost or reordered
        for _ in range(sent + 5):
            assert await stalled.recv.recv() == chunk
        await wait_for(lambda: sent > blocked_at + 5)
        task.cancel()


async def test_cancelled_send_sends_nothing() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        inc_task = asyncio.create_task(next_incoming(b))
        n = 0
        while True:  # fill the path until a send blocks
            t = asyncio.create_task(send.send(b"%08d" % n + b"." * 65528))
            await asyncio.sleep(0.05)
            if not t.done():
                t.cancel()
                break
            n += 1
        inc = await inc_task
        last = asyncio.create_task(send.send(b"last"))
        got = []
        while True:
            m = await inc.recv.recv()
            if m == b"last":
                break
            got.append(int(m[:8]))
        await last
        assert got == list(range(n))


async def test_many_concurrent_streams() -> None:
    from conec_actors.coord.pairing import MAX_STREAMS_PER_PAIR

    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        pairs = [await a.new_proxied_stream("bob") for _ in range(MAX_STREAMS_PER_PAIR)]
        incs = [await next_incoming(b) for _ in range(MAX_STREAMS_PER_PAIR)]
        by_n = {i.stream_id.n: i for i in incs}
        for send, _ in pairs:
            await send.send(b"n=%d" % send.stream_id.n)
        for send, _ in pairs:
            assert await by_n[send.stream_id.n].recv.recv() == b"n=%d" % send.stream_id.n
        st = await h.coord.stats()
        assert st["streams"] >= MAX_STREAMS_PER_PAIR
        assert st["messages_forwarded"] >= MAX_STREAMS_PER_PAIR


async def test_peer_leaving_resets_its_streams() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, recv = await a.new_proxied_stream("bob")
        await send.send(b"x")
        inc = await next_incoming(b)
        await b.close()
        with pytest.raises(StreamReset):
            await recv.recv()
        with pytest.raises(StreamReset):
            for _ in range(1000):  # up to 10 s on a loaded machine
                await send.send(b"y")
                await asyncio.sleep(0.01)
        # what had arrived before the close is still readable, then the reset
        with pytest.raises(StreamReset):
            assert await inc.recv.recv() == b"x"
            await inc.recv.recv()


async def test_too_many_pending_opens_is_a_named_refusal() -> None:
    """Opens waiting on the control plane are capped per client; the rest
    proceed once the routing worker answers again."""
    import os
    import signal

    from conec_actors import ProtocolError
    from conec_actors.coord.session import MAX_PENDING_OPENS

    async with coordinator() as h:
        a, _ = await h.client("alice"), await h.client("bob")
        (pid,) = h.coord.worker_pids("routing")
        os.kill(pid, signal.SIGSTOP)
        try:
            tasks = [asyncio.create_task(a.new_proxied_stream("bob"))
                     for _ in range(MAX_PENDING_OPENS + 6)]
            # nothing can open while the worker is stopped: what finishes is refused
            await wait_for(lambda: sum(t.done() for t in tasks) >= 6, timeout=20)
            await asyncio.sleep(0.2)
        finally:
            os.kill(pid, signal.SIGCONT)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 6
        assert all(isinstance(r, ProtocolError) and "too many" in str(r) for r in refused)


async def test_broken_stream_headers_reset_only_that_stream() -> None:
    from conec_actors import ProtocolError, wire
    from conec_actors.framing import frame
    from conec_actors.streams import StreamCore

    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        link, conn = a._link, a._conn
        bad_headers = [
            frame(b"\x00not msgpack"),
            frame(wire.encode(wire.StreamAccepted())),
            frame(wire.encode(wire.StreamHeader("direct", "bob", 1))),
            (5000).to_bytes(4, "big") + b"h" * 5000,  # oversized header frame
        ]
        for raw in bad_headers:
            quic_id = conn.new_stream_id()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            link.streams[quic_id] = StreamCore(conn, quic_id, StreamId("proxied", 10**6 + quic_id),
                                           1 << 20)
            link.opening[quic_id] = fut
            conn.send(quic_id, raw)
            with pytest.raises(ProtocolError):
                await asyncio.wait_for(fut, 5)
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"unharmed")
        inc = await next_incoming(b)
        assert await inc.recv.recv() == b"unharmed"
