"""User-facing stream handles, and the waiting behind them.

`StreamCore` is a stream's state (`stream_state.StreamState`: framing,
queue, window credit, how each direction ended) plus the waiting: readers
wait for a message, writers wait above a high watermark of unsent bytes
until ACKs drain them below a low one. `OutStream` and `InStream` are the two
halves the user holds; `BroadcastInStream` reads a broadcast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Generic, NamedTuple, Self, TypeVar

from . import wire
from ._util import Waiters
from .errors import StreamClosed
from .framing import HEADER_SIZE
from .stream_state import (  # re-exported: the public API and other modules import them here
    BROADCAST_HIGH_WATER,
    BROADCAST_LOW_WATER,
    BROADCAST_WINDOW,
    BROADCAST_WRITE_HIGH,
    BROADCAST_WRITE_LOW,
    HEADER_FRAME_MAX,
    HIGH_WATER,
    LOW_WATER,
    STREAM_WINDOW,
    BroadcastAssembler,
    BroadcastMessage,
    StreamConn,
    StreamId,
    StreamState,
)
from .used_numbers import MAX_STREAM_NUMBER, check_stream_number

__all__ = [
    "BROADCAST_HIGH_WATER", "BROADCAST_LOW_WATER", "BROADCAST_WINDOW", "BROADCAST_WRITE_HIGH",
    "BROADCAST_WRITE_LOW", "HEADER_FRAME_MAX", "HIGH_WATER", "LOW_WATER", "MAX_STREAM_NUMBER",
    "STREAM_WINDOW", "BroadcastInStream", "BroadcastMessage", "InStream", "IncomingStream",
    "OutStream", "Reader", "StreamCore", "StreamId", "Writer", "check_stream_number",
]


class StreamCore(StreamState):
    """A stream's state plus its waiting readers and writers (several tasks
    may share a half: all are woken, each checks its condition again)."""

    __slots__ = ("_readers", "_writers")

    def __init__(self, conn: StreamConn, quic_id: int, stream_id: StreamId,
                 max_message_size: int, recv_extra: int = 0) -> None:
        super().__init__(conn, quic_id, stream_id, max_message_size, recv_extra)
        self._readers = Waiters()
        self._writers = Waiters()

    def _wake(self) -> None:
        self._readers.wake()
        if self.on_wake is not None:
            self.on_wake()

    def _wake_writer(self) -> None:
        self._writers.wake()

    async def recv(self) -> bytes:
        """The next message, waiting for it."""
        while True:
            if self.queue:
                m = self.queue.popleft()
                self._queued_bytes -= len(m) + HEADER_SIZE
                self._credit()
                return m
            self.check_recv()
            self.reader_waits()
            try:
                await self._readers.wait()
            finally:
                self.reader_done()

    def _on_drain(self) -> None:
        if self.drained():
            self._writers.wake()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send one message, waiting while more than the high watermark is
        unsent."""
        n = len(data)
        if n > self.max_message_size:
            self.check_size(n)
        self.check_send()
        conn, quic_id = self.conn, self.quic_id
        while conn.unsent(quic_id) > self.high_water:
            conn.watch_drain(quic_id, self._on_drain)
            await self._writers.wait()
            self.check_send()
        conn.send(quic_id, n.to_bytes(HEADER_SIZE, "big") + bytes(data))

    async def finish(self) -> None:
        """End the sending side cleanly."""
        self.finish_now()


class Writer:
    """What every writing handle shares: `async with` finishes the stream on a
    clean exit and resets it (code 0) on an exception. Subclasses give
    `finish` and `reset`."""

    __slots__ = ()

    async def finish(self) -> None:
        raise NotImplementedError

    def reset(self, code: int = 0) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            await self.finish()
        else:
            self.reset(0)


class OutStream(Writer):
    """Sending half of a stream: ordered, framed messages."""

    __slots__ = ("_core",)

    def __init__(self, core: StreamCore) -> None:
        self._core = core

    @property
    def stream_id(self) -> StreamId:
        return self._core.stream_id

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send one message. Waits while the path is full (back-pressure);
        raises `MessageTooLarge` (stream still usable) or `StreamReset` if the
        reader went away. Cancelled while waiting, it sends nothing. Several
        tasks may send at once: each message goes whole."""
        await self._core.send(data)

    async def finish(self) -> None:
        """End the stream cleanly: the reader sees `StreamClosed` after the
        last message."""
        await self._core.finish()

    def reset(self, code: int = 0) -> None:
        """Abort now; the reader gets `StreamReset` with `code` (0..65535)."""
        if not 0 <= code < wire.USER_CODE_LIMIT:
            raise ValueError(f"reset code must be in [0, {wire.USER_CODE_LIMIT}), got {code}")
        self._core.reset(code)

    def __repr__(self) -> str:
        return f"<OutStream {self.stream_id}>"


R_co = TypeVar("R_co", covariant=True)


class Reader(Generic[R_co]):
    """What every reading handle shares: `async for` until the clean end,
    and `async with` closing it on exit. Subclasses give `recv` and `close`."""

    __slots__ = ()

    async def recv(self) -> R_co:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[R_co]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[R_co]:
        while True:
            try:
                yield await self.recv()
            except StreamClosed:
                return

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class InStream(Reader[bytes]):
    """Receiving half of a stream."""

    __slots__ = ("_core",)

    def __init__(self, core: StreamCore) -> None:
        self._core = core

    @property
    def stream_id(self) -> StreamId:
        return self._core.stream_id

    async def recv(self) -> bytes:
        """The next message. Raises `StreamClosed` at a clean end, `StreamReset`
        (with `.code` and `.reason`) if the writer or the path failed. Several
        tasks may wait at once: each message goes to one of them."""
        return await self._core.recv()

    def close(self) -> None:
        """Stop reading: the writer's next send raises `StreamReset`."""
        self._core.close_recv()

    def __repr__(self) -> str:
        return f"<InStream {self.stream_id}>"


class BroadcastInStream(Reader[BroadcastMessage[bytes]]):
    """Receiving half of a broadcast stream: every member's messages, its own
    included, in the one order all members share."""

    __slots__ = ("_assembler", "_core")

    def __init__(self, core: StreamCore) -> None:
        self._core = core
        self._assembler = BroadcastAssembler(core.max_message_size)

    @property
    def stream_id(self) -> StreamId:
        return self._core.stream_id

    async def recv(self) -> BroadcastMessage[bytes]:
        """The next message with its sender. Raises `StreamClosed` once every
        member has finished sending, `StreamReset` if the broadcast or the
        path failed, `MessageTooLarge` for a message above this client's
        limit (skipped; the stream goes on)."""
        feed = self._assembler.feed
        while True:
            try:
                raw = await self._core.recv()
            except StreamClosed:
                raise StreamClosed("the broadcast ended: every member finished sending"
                                   ) from None
            msg = feed(raw)
            if msg is not None:
                return msg

    def close(self) -> None:
        """Stop reading: this member no longer counts as a receiver."""
        self._core.close_recv()

    def __repr__(self) -> str:
        return f"<BroadcastInStream {self.stream_id}>"


class IncomingStream(NamedTuple):
    """A stream another client opened to this one."""

    peer: str
    stream_id: StreamId
    send: OutStream
    recv: InStream
