"""Stream adapters: NonblockingInStream, TypedOutStream, TypedInStream.

Most tests run over real proxied and broadcast streams through a real
Coordinator. The tests named `test_unit_*` use `FakeSource`, an in-memory
reader, to unit-test the adapters alone (controlled interleavings, broadcast
items written by hand, errors a real stream cannot produce on demand).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import FrozenInstanceError, dataclass
from typing import Any, Generic, TypeVar

import msgspec
import pytest

from conec_actors import (
    BroadcastMessage,
    DecodeError,
    Lagged,
    NonblockingInStream,
    StreamClosed,
    StreamReset,
    TypedInStream,
    TypedOutStream,
)
from conec_actors.wire import Code

from .conftest import coordinator, wait_for
from .test_wire import DEEP

T = TypeVar("T")


class Point(msgspec.Struct, frozen=True):
    x: int
    y: int


@dataclass(frozen=True)
class Reading:
    sensor: str
    value: float
    tags: list[str]


async def next_incoming(client: Any) -> Any:
    return await asyncio.wait_for(anext(client.incoming), 5)


def num(i: int) -> bytes:
    return i.to_bytes(4, "big")


def unnum(m: bytes) -> int:
    return int.from_bytes(m[:4], "big")


def drain_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("conec-nonblocking-drain")]


class FakeSource(Generic[T]):
    """UNIT TEST ONLY: an in-memory stand-in for an InStream / BroadcastInStream.

    Yields `items` (suspending at least once per item, like a real reader),
    then raises `end` (a clean end by default). `close()` behaves like
    `InStream.close()`.
    """

    def __init__(self, items: Iterable[T], end: Exception | None = None,
                 jitter: random.Random | None = None) -> None:
        self.items = deque(items)
        self.end = end if end is not None else StreamClosed("the writer finished the stream")
        self.jitter = jitter
        self.closed = False

    async def recv(self) -> T:
        for _ in range(1 + (self.jitter.randrange(4) if self.jitter else 0)):
            await asyncio.sleep(0)
        if self.closed:
            raise StreamReset(Code.READER_CLOSED, "this end closed the stream")
        if self.items:
            return self.items.popleft()
        raise self.end

    def close(self) -> None:
        self.closed = True


# -- BroadcastMessage -----------------------------------------------------------


def test_broadcast_message_is_a_frozen_generic_value() -> None:
    m = BroadcastMessage("alice", b"hi")
    assert (m.sender, m.data) == ("alice", b"hi")
    assert m == BroadcastMessage(sender="alice", data=b"hi")
    assert m != BroadcastMessage("bob", b"hi")
    assert hash(m) == hash(BroadcastMessage("alice", b"hi"))
    assert repr(m) == "BroadcastMessage(sender='alice', data=b'hi')"
    with pytest.raises(FrozenInstanceError):
        m.sender = "eve"  # type: ignore[misc]
    match m:
        case BroadcastMessage(sender, data):
            assert (sender, data) == ("alice", b"hi")


def test_broadcast_message_subscripted_construction() -> None:
    with pytest.raises(AttributeError):
        BroadcastMessage("a", 1).extra = 1  # type: ignore[attr-defined]
    assert BroadcastMessage[int]("a", 1) == BroadcastMessage("a", 1)


def test_capacity_must_be_a_positive_int() -> None:
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="capacity"):
            NonblockingInStream(FakeSource([]), bad)  # type: ignore[arg-type]


# -- NonblockingInStream over real proxied streams --------------------------------


async def test_lagged_carries_the_exact_count_then_the_newest_messages() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(num(0))
        inc = await next_incoming(b)
        reader = NonblockingInStream(inc.recv, 10)
        assert reader.capacity == 10 and reader.source is inc.recv
        for i in range(1, 100):
            await send.send(num(i))
        await send.finish()
        await wait_for(lambda: reader.ended)  # the reader did not read meanwhile
        assert reader.received == 100 and reader.buffered == 10
        with pytest.raises(Lagged) as err:
            await reader.recv()
        assert err.value.count == 90
        assert [unnum(await reader.recv()) for _ in range(10)] == list(range(90, 100))
        with pytest.raises(StreamClosed):
            await reader.recv()
        with pytest.raises(StreamClosed):
            await reader.recv()
        assert drain_tasks() == []  # the drain task ended with its source


async def test_writer_never_blocks_on_a_reader_that_does_not_read() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(num(0) + bytes(64 * 1024 - 4))
        inc = await next_incoming(b)
        reader = NonblockingInStream(inc.recv, 2)

        async def writer() -> None:
            for i in range(1, 50):
                await send.send(num(i) + bytes([i]) * (64 * 1024 - 4))
            await send.finish()

        started = time.monotonic()
        # 3.2 MiB: several times what the path holds for a reader that stalls
        await asyncio.wait_for(writer(), 15)
        elapsed = time.monotonic() - started
        await wait_for(lambda: reader.ended)
        assert reader.received == 50 and reader.buffered == 2
        with pytest.raises(Lagged) as err:
            await reader.recv()
        assert err.value.count == 48
        m48, m49 = await reader.recv(), await reader.recv()
        assert unnum(m48) == 48 and m48[4:] == bytes([48]) * (64 * 1024 - 4)
        assert unnum(m49) == 49 and len(m49) == 64 * 1024
        with pytest.raises(StreamClosed):
            await reader.recv()
        assert elapsed < 10, f"the writer took {elapsed:.1f} s"


async def test_reset_is_raised_after_the_kept_messages() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(num(0))
        inc = await next_incoming(b)
        reader = NonblockingInStream(inc.recv, 3)
        for i in range(1, 5):
            await send.send(num(i))
        await wait_for(lambda: reader.received == 5)
        send.reset(7)
        await wait_for(lambda: reader.ended)
        with pytest.raises(Lagged) as err:
            await reader.recv()
        assert err.value.count == 2
        assert [unnum(await reader.recv()) for _ in range(3)] == [2, 3, 4]
        for _ in range(2):
            with pytest.raises(StreamReset) as reset:
                await reader.recv()
            assert reset.value.code == 7


async def test_close_cancels_the_drain_and_closes_the_source() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(num(0))
        inc = await next_incoming(b)
        async with NonblockingInStream(inc.recv, 4) as reader:
            assert unnum(await reader.recv()) == 0
            assert len(drain_tasks()) == 1
        await asyncio.sleep(0)
        assert drain_tasks() == []
        assert reader.ended and reader.buffered == 0
        with pytest.raises(StreamReset) as err:
            await reader.recv()
        assert err.value.code == Code.READER_CLOSED
        # the writer learns the reader went away
        with pytest.raises(StreamReset) as err:
            for _ in range(1000):
                await send.send(b"y" * 1000)
                await asyncio.sleep(0.005)
        assert err.value.code == Code.READER_CLOSED


async def test_close_wakes_a_waiting_reader() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(num(0))
        inc = await next_incoming(b)
        reader = NonblockingInStream(inc.recv, 4)
        assert unnum(await reader.recv()) == 0
        waiting = asyncio.create_task(reader.recv())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        reader.close()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(waiting, 2)


async def test_lag_counts_are_exact_while_a_slow_reader_reads() -> None:
    """Drops and deliveries interleave: every gap in the delivered sequence is
    exactly the preceding Lagged count, and nothing is counted twice."""
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(num(0))
        inc = await next_incoming(b)
        reader = NonblockingInStream(inc.recv, 8)
        total = 3000

        async def writer() -> None:
            for i in range(1, total):
                await send.send(num(i))
                if i % 100 == 0:
                    await asyncio.sleep(0)
            await send.finish()

        task = asyncio.create_task(writer())
        rng = random.Random(7)
        expected, lags, delivered = 0, 0, 0
        while True:
            try:
                m = await reader.recv()
            except Lagged as err:
                assert err.count > 0
                expected += err.count
                lags += 1
                continue
            except StreamClosed:
                break
            assert unnum(m) == expected
            expected += 1
            delivered += 1
            if rng.random() < 0.1:
                await asyncio.sleep(rng.random() * 0.003)
        await task
        assert expected == total
        assert lags > 0 and delivered >= 8


# -- NonblockingInStream, UNIT tests with FakeSource --------------------------------


async def test_unit_lag_counts_exact_under_random_interleavings() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        total, capacity = 500, rng.randint(1, 12)
        reader = NonblockingInStream(FakeSource(range(total), jitter=rng), capacity)
        expected = 0
        while True:
            try:
                item = await reader.recv()
            except Lagged as err:
                assert 0 < err.count
                expected += err.count
                continue
            except StreamClosed:
                break
            assert item == expected
            expected += 1
            for _ in range(rng.randrange(8)):
                await asyncio.sleep(0)
        assert expected == total, seed


async def test_unit_async_for_resumes_after_lagged() -> None:
    reader = NonblockingInStream(FakeSource(range(10)), 3)
    await wait_for(lambda: reader.ended)
    got: list[int] = []
    with pytest.raises(Lagged) as err:
        async for item in reader:
            got.append(item)
    assert err.value.count == 7 and got == []
    async for item in reader:  # iterating again picks up where it stopped
        got.append(item)
    assert got == [7, 8, 9]


def test_unit_drain_starts_lazily_without_a_running_loop() -> None:
    source = FakeSource(range(5))
    reader = NonblockingInStream(source, 2)  # no running loop here

    async def use() -> int:
        await asyncio.sleep(0.01)
        assert drain_tasks() == [] and reader.received == 0  # nothing drains yet
        expected = 0
        while True:  # the first recv() starts the drain task
            try:
                item = await reader.recv()
            except Lagged as err:
                expected += err.count
                continue
            except StreamClosed:
                return expected
            assert item == expected
            expected += 1

    assert asyncio.run(use()) == 5


async def test_unit_nonblocking_keeps_broadcast_messages() -> None:
    msgs = [BroadcastMessage(f"peer{i % 3}", num(i)) for i in range(6)]
    reader = NonblockingInStream(FakeSource(msgs), 4)
    await wait_for(lambda: reader.ended)
    with pytest.raises(Lagged) as err:
        await reader.recv()
    assert err.value.count == 2
    assert [m async for m in reader] == msgs[2:]


async def test_unit_reset_after_kept_messages_and_other_errors_too() -> None:
    reader = NonblockingInStream(FakeSource([b"a", b"b"], end=StreamReset(5, "gone")), 5)
    assert [await reader.recv(), await reader.recv()] == [b"a", b"b"]
    with pytest.raises(StreamReset, match="gone"):
        await reader.recv()
    reader = NonblockingInStream(FakeSource([b"a"], end=RuntimeError("bug")), 5)
    assert await reader.recv() == b"a"
    with pytest.raises(RuntimeError, match="bug"):
        await reader.recv()


async def test_unit_decode_errors_of_a_typed_source_stay_in_place() -> None:
    """NonblockingInStream over TypedInStream: a bad message is delivered as a
    DecodeError in its slot and the stream goes on."""
    raw = [msgspec.msgpack.encode(1), b"\xc1", msgspec.msgpack.encode(3)]
    reader = NonblockingInStream(TypedInStream(FakeSource(raw), int), 5)
    assert await reader.recv() == 1
    with pytest.raises(DecodeError):
        await reader.recv()
    assert await reader.recv() == 3
    with pytest.raises(StreamClosed):
        await reader.recv()


# -- typed streams over real proxied streams ----------------------------------------


async def test_typed_round_trips() -> None:
    cases: list[tuple[Any, list[Any]]] = [
        (Point, [Point(1, 2), Point(-3, 4)]),
        (Reading, [Reading("t1", 21.5, ["in"]), Reading("t2", -4.0, [])]),
        (dict[str, list[int]], [{"a": [1, 2]}, {}, {"b": []}]),
        (list[int], [[1, 2, 3], []]),
        (bytes, [b"\x00raw", b""]),
    ]
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        for tp, values in cases:
            send, _ = await a.new_proxied_stream("bob")
            async with TypedOutStream(send, tp) as tsend:
                assert tsend.value_type is tp and tsend.inner is send
                for v in values:
                    await tsend.send(v)
            inc = await next_incoming(b)
            async with TypedInStream(inc.recv, tp) as trecv:
                got = [v async for v in trecv]
            assert got == values, tp
            assert all(type(g) is type(v) for g, v in zip(got, values, strict=True))


async def test_decode_error_then_the_stream_keeps_working() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        tsend = TypedOutStream(send, Point)
        await send.send(b"\xc1")  # not msgpack at all
        await send.send(msgspec.msgpack.encode({"x": "one", "y": 2}))  # wrong field type
        await tsend.send(Point(5, 6))
        await send.send(msgspec.msgpack.encode([1, 2, 3]))  # not a Point
        await tsend.send(Point(7, 8))
        await tsend.finish()
        inc = await next_incoming(b)
        trecv = TypedInStream(inc.recv, Point)
        with pytest.raises(DecodeError, match="did not decode as Point"):
            await trecv.recv()
        with pytest.raises(DecodeError, match=r"as Point: Expected `int`, got `str`"):
            await trecv.recv()
        assert await trecv.recv() == Point(5, 6)
        got: list[Point] = []
        with pytest.raises(DecodeError):
            async for p in trecv:
                got.append(p)
        async for p in trecv:  # iterating again resumes after the bad message
            got.append(p)
        assert got == [Point(7, 8)]
        with pytest.raises(StreamClosed):
            await trecv.recv()


async def test_typed_out_resets_on_exception_and_passes_reset_code() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        with pytest.raises(RuntimeError):
            async with TypedOutStream(send, int) as tsend:
                await tsend.send(1)
                raise RuntimeError("boom")
        inc = await next_incoming(b)
        trecv = TypedInStream(inc.recv, int)
        with pytest.raises(StreamReset) as err:
            assert await trecv.recv() == 1  # a reset may overtake the data
            await trecv.recv()
        assert err.value.code == 0

        send2, _ = await a.new_proxied_stream("bob")
        tsend2 = TypedOutStream(send2, int)
        await tsend2.send(1)
        inc2 = await next_incoming(b)
        trecv2 = TypedInStream(inc2.recv, int)
        assert await trecv2.recv() == 1
        tsend2.reset(9)
        with pytest.raises(StreamReset) as err:
            await trecv2.recv()
        assert err.value.code == 9


async def test_typed_reader_close_closes_the_stream() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        tsend = TypedOutStream(send, str)
        await tsend.send("hi")
        inc = await next_incoming(b)
        async with TypedInStream(inc.recv, str) as trecv:
            assert await trecv.recv() == "hi"
        with pytest.raises(StreamReset) as err:
            for _ in range(1000):
                await tsend.send("y" * 1000)
                await asyncio.sleep(0.005)
        assert err.value.code == Code.READER_CLOSED


async def test_typed_over_nonblocking() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        tsend = TypedOutStream(send, Point)
        await tsend.send(Point(0, 0))
        inc = await next_incoming(b)
        nb = NonblockingInStream(inc.recv, 5)
        trecv = TypedInStream(nb, Point)
        for i in range(1, 20):
            await tsend.send(Point(i, -i))
        await send.send(b"\xc1")  # decoding happens at delivery: a kept bad message
        await tsend.send(Point(20, -20))
        await tsend.finish()
        await wait_for(lambda: nb.ended)
        with pytest.raises(Lagged) as err:
            await trecv.recv()
        assert err.value.count == 17
        assert [await trecv.recv() for _ in range(3)] == [Point(i, -i) for i in (17, 18, 19)]
        with pytest.raises(DecodeError):
            await trecv.recv()
        assert [p async for p in trecv] == [Point(20, -20)]
        trecv.close()
        assert nb.ended and drain_tasks() == []


# -- adapters over real broadcast streams -------------------------------------------


async def test_typed_over_nonblocking_over_a_real_broadcast() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        asend, arecv = await a.new_broadcast("news")
        bsend, brecv = await b.new_broadcast("news")
        arecv.close()  # alice only sends
        nb = NonblockingInStream(brecv, 3)
        trecv = TypedInStream(nb, Point)
        async with TypedOutStream(asend, Point) as tsend:
            for i in range(20):
                await tsend.send(Point(i, 2 * i))
        await bsend.finish()
        await wait_for(lambda: nb.ended)
        assert nb.received == 20
        with pytest.raises(Lagged) as err:
            await trecv.recv()
        assert err.value.count == 17
        got = [m async for m in trecv]
        assert got == [BroadcastMessage("alice", Point(i, 2 * i)) for i in (17, 18, 19)]


async def test_nonblocking_readers_keep_broadcast_senders_unblocked() -> None:
    """Delivery blocks on the slowest reader: readers that drain into a ring
    never are the slowest, even when the application does not read them."""
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        asend, arecv = await a.new_broadcast("bulk")
        bsend, brecv = await b.new_broadcast("bulk")
        readers = [NonblockingInStream(arecv, 2), NonblockingInStream(brecv, 2)]
        big = 64 * 1024 - 4

        async def sender(send: Any, tag: int) -> None:
            for i in range(20):
                await send.send(num(i) + bytes([tag]) * big)
            await send.finish()

        await asyncio.wait_for(asyncio.gather(sender(asend, 1), sender(bsend, 2)), 15)
        kept = []
        for r in readers:
            await wait_for(lambda r=r: r.ended)
            assert r.received == 40 and r.buffered == 2
            with pytest.raises(Lagged) as err:
                await r.recv()
            assert err.value.count == 38
            kept.append([m async for m in r])
        assert all(m.sender in ("alice", "bob") and len(m.data) == big + 4 for m in kept[0])
        assert kept[0] == kept[1]  # every member sees the one order


# -- typed readers over broadcast items: UNIT tests with FakeSource -------------------


async def test_unit_typed_reader_yields_broadcast_messages_of_t() -> None:
    enc = msgspec.msgpack.encode
    source = FakeSource([
        BroadcastMessage("alice", enc(Point(1, 2))),
        BroadcastMessage("bob", b"\xc1"),
        BroadcastMessage("bob", enc(Point(3, 4))),
    ])
    trecv = TypedInStream(source, Point)
    first = await trecv.recv()
    assert first == BroadcastMessage("alice", Point(1, 2))
    assert isinstance(first, BroadcastMessage) and type(first.data) is Point
    with pytest.raises(DecodeError, match="from 'bob' did not decode as Point"):
        await trecv.recv()
    assert [m async for m in trecv] == [BroadcastMessage("bob", Point(3, 4))]
    trecv.close()
    assert source.closed


async def test_unit_typed_over_nonblocking_over_broadcast() -> None:
    enc = msgspec.msgpack.encode
    msgs = [BroadcastMessage(f"p{i % 2}", enc({"n": i})) for i in range(8)]
    nb = NonblockingInStream(FakeSource(msgs), 3)
    trecv = TypedInStream(nb, dict[str, int])
    await wait_for(lambda: nb.ended)
    with pytest.raises(Lagged) as err:
        await trecv.recv()
    assert err.value.count == 5
    assert [m async for m in trecv] == [BroadcastMessage(f"p{i % 2}", {"n": i})
                                        for i in (5, 6, 7)]


# -- messages nested deeper than the recursion limit ----------------------------------


#: A Point whose extra field (skipped, but skipping recurses) is nested too deep.
DEEP_POINT = b"\x83\xa1x\x01\xa1y\x02\xa3zzz" + DEEP


@pytest.mark.parametrize(("typ", "deep", "good"), [
    (Point, DEEP_POINT, Point(1, 2)),
    (list[Any], DEEP, [1, [2]]),
    (Any, DEEP, {"k": "v"}),
], ids=["struct", "list", "any"])
async def test_a_typed_stream_refuses_a_message_nested_too_deep(
        typ: Any, deep: bytes, good: Any) -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(deep)
        await TypedOutStream(send, typ).send(good)
        await send.finish()
        trecv = TypedInStream((await next_incoming(b)).recv, typ)
        with pytest.raises(DecodeError, match="recursion"):
            await trecv.recv()
        assert await trecv.recv() == good  # the stream stays usable
        with pytest.raises(StreamClosed):
            await trecv.recv()


async def test_a_typed_broadcast_reader_refuses_a_message_nested_too_deep() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        asend, arecv = await a.new_broadcast("news")
        _bsend, brecv = await b.new_broadcast("news")
        arecv.close()
        await asend.send(DEEP_POINT)
        await TypedOutStream(asend, Point).send(Point(3, 4))
        trecv = TypedInStream(brecv, Point)
        with pytest.raises(DecodeError, match="from 'alice' did not decode as Point"):
            await trecv.recv()
        assert await trecv.recv() == BroadcastMessage("alice", Point(3, 4))


async def test_a_tell_nested_too_deep_breaks_nothing_at_the_receiver(
        caplog: pytest.LogCaptureFixture) -> None:
    # The mailbox's frames are a protocol: that message is a protocol error
    # on its stream (a warning, not a crash), and the receiver goes on.
    async with coordinator() as h:
        a, b, c = await h.client("alice"), await h.client("bob"), await h.client("carol")
        with caplog.at_level(logging.WARNING, logger="conec_actors"):
            await a.tell("bob", msgspec.Raw(DEEP))
            await c.tell("bob", "from carol")
            env = await asyncio.wait_for(anext(b.mailbox.typed(str)), 5)
            assert (env.sender, env.body) == ("carol", "from carol")
            await wait_for(lambda: any("recursion" in r.getMessage()
                                       for r in caplog.records))
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        await c.tell("bob", "again")
        env = await asyncio.wait_for(anext(b.mailbox.typed(str)), 5)
        assert (env.sender, env.body) == ("carol", "again")
