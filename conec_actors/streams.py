"""User-facing stream handles and the per-stream state behind them.

`StreamCore` is the state of one framed QUIC stream at a client: it reassembles
incoming frames into a bounded queue of messages, credits the QUIC receive
window as the application takes messages (so a reader that stops reading
stalls its writer; the bytes of a message still arriving are credited only
while a reader waits for it, so a stream nobody reads holds at most its
window), and blocks writers above a high watermark of unsent bytes until
ACKs drain them below a low one. `OutStream` and `InStream` are the
two halves the user holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Generic, NamedTuple, Self, TypeVar

from . import wire
from ._util import Waiters
from .errors import MessageTooLarge, StreamClosed, StreamReset
from .framing import HEADER_SIZE, FrameDecoder, FrameTooLarge

if TYPE_CHECKING:
    from .transport import Conn

#: Writers wait above this many unsent bytes and resume below LOW_WATER.
HIGH_WATER = 256 * 1024
LOW_WATER = 128 * 1024
#: Receive window of a stream beyond what the application consumed.
STREAM_WINDOW = 256 * 1024
#: Broadcast streams queue less at every hop: a broadcast runs flat out at
#: the pace of its slowest reader, and what queues ahead of it is latency for
#: every member. The member's writer waits above BROADCAST_WRITE_HIGH unsent
#: bytes; the front-end stops fanning out while a reader has more than
#: BROADCAST_HIGH_WATER unsent; both directions' windows are at most
#: BROADCAST_WINDOW (the front-end splits a budget among members).
BROADCAST_WRITE_HIGH = 16 * 1024
BROADCAST_WRITE_LOW = 8 * 1024
BROADCAST_HIGH_WATER = 32 * 1024
BROADCAST_LOW_WATER = 16 * 1024
BROADCAST_WINDOW = 64 * 1024
MAX_STREAM_NUMBER = 2**62
#: Largest stream header frame accepted (headers carry ids, so they are small).
HEADER_FRAME_MAX = 1024


class StreamId(NamedTuple):
    """Identifies a stream to its two ends: `n` is the number its opener chose,
    unique per (peer, kind). `kind` is "proxied" or "direct" (and "broadcast"
    on a broadcast stream's halves)."""

    kind: wire.StreamKind
    n: int

    @property
    def is_proxied(self) -> bool:
        return self.kind == "proxied"

    @property
    def is_direct(self) -> bool:
        return self.kind == "direct"


def check_stream_number(n: object) -> int:
    """Validate a user-chosen stream number (0 <= n < 2**62)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError(f"stream_id must be an int, not {type(n).__name__}")
    if not 0 <= n < MAX_STREAM_NUMBER:
        raise ValueError(f"stream_id must be in [0, 2**62), got {n}")
    return n


class StreamCore:
    """One framed bidirectional stream on a connection (client side)."""

    __slots__ = (
        "_queued_bytes", "_readers", "_received", "_waiting", "_writers", "conn", "decoder",
        "high_water", "low_water", "max_message_size", "on_wake", "queue", "recv_error",
        "recv_extra", "recv_fin", "send_error", "send_finished", "sid", "stream_id",
    )

    def __init__(self, conn: Conn, sid: int, stream_id: StreamId,
                 max_message_size: int, recv_extra: int = 0) -> None:
        self.conn = conn
        self.sid = sid
        self.stream_id = stream_id
        self.max_message_size = max_message_size
        # The first frame is a stream header (or acceptance), which may be
        # larger than a tiny payload limit; `take_first` applies the real one.
        self.decoder = FrameDecoder(max(max_message_size + recv_extra, HEADER_FRAME_MAX))
        self.recv_extra = recv_extra
        self.queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._received = 0
        # Every waiting reader and writer (several tasks may share a half):
        # all are woken, each checks its condition again.
        self._readers = Waiters()
        self._writers = Waiters()
        self._waiting = 0  # readers inside `recv`, waiting for a message
        self.recv_fin = False
        self.recv_error: StreamReset | None = None
        self.send_error: StreamReset | None = None
        self.send_finished = False
        self.high_water = HIGH_WATER
        self.low_water = LOW_WATER
        #: Called synchronously whenever a waiting reader would be woken
        #: (messages queued, the stream ended or failed): for a reader that
        #: consumes with `recv_nowait` from the connection's callbacks.
        self.on_wake: Callable[[], None] | None = None

    def limit_to(self, limit: int) -> None:
        """Apply the stream's effective message size limit, as the other end
        or the Coordinator announced it (0: unknown, keep ours): `send`
        refuses larger messages with `MessageTooLarge`."""
        if 0 < limit < self.max_message_size:
            self.max_message_size = limit
            self.decoder.max_size = limit + self.recv_extra

    def set_buffers(self, *, window: int, high_water: int, low_water: int) -> None:
        """Queue less than point-to-point streams do (broadcast streams)."""
        self.high_water = high_water
        self.low_water = low_water
        self.conn.set_stream_window(self.sid, window)

    # -- events from the connection ------------------------------------------

    def data_received(self, data: bytes, fin: bool) -> list[bytes] | None:
        """Feed bytes; returns the messages if the owner must see the first
        ones (header handling), else queues them. None on a framing error."""
        self._received += len(data)
        if self.recv_error is not None:
            # Failed or closed by this end: late data is dropped, not decoded.
            self._credit()
            return []
        try:
            msgs = self.decoder.feed(data) if data else []
        except FrameTooLarge as exc:
            self.fail_local(wire.Code.MESSAGE_TOO_LARGE, str(exc))
            return None
        if fin and not self.decoder.at_boundary:
            self.fail_local(wire.Code.PROTOCOL, "stream ended inside a message")
            return None
        for m in msgs:
            self._queued_bytes += len(m) + HEADER_SIZE
        self.queue.extend(msgs)
        if fin:
            self.recv_fin = True
        self._wake()
        self._credit()
        return msgs

    def take_first(self) -> bytes | None:
        """Pop the first queued message without waiting (for headers)."""
        if not self.queue:
            return None
        m = self.queue.popleft()
        self._queued_bytes -= len(m) + HEADER_SIZE
        self.decoder.max_size = self.max_message_size + self.recv_extra
        self._credit()
        return m

    def reset_received(self, code: int) -> None:
        if self.recv_error is None and not self.recv_fin:
            self.recv_error = wire.stream_reset(code)
        self._wake()

    def stop_received(self, code: int) -> None:
        # aioquic resets our sending side by itself on STOP_SENDING.
        if self.send_error is None:
            self.send_error = wire.stream_reset(code)
        self._wake_writer()

    def path_failed(self, code: int, reason: str) -> None:
        """The connection is gone: both halves fail."""
        err = wire.stream_reset(code, reason)
        if self.recv_error is None and not self.recv_fin:
            self.recv_error = err
        if self.send_error is None and not self.send_finished:
            self.send_error = err
        self._wake()
        self._wake_writer()

    def fail_local(self, code: int, reason: str) -> None:
        """A protocol violation on this stream: reset both directions."""
        err = wire.stream_reset(code, reason)
        self.recv_error = self.recv_error or err
        self.send_error = self.send_error or err
        self.conn.stop(self.sid, code)
        self.conn.reset(self.sid, code)
        self._wake()
        self._wake_writer()

    # -- reading --------------------------------------------------------------

    def _credit(self) -> None:
        # Whole messages are credited as the application takes them; the
        # bytes of a partial one only while a reader waits with nothing else
        # to take (else a message larger than the window could never
        # complete, and a stream nobody reads could hold a whole one).
        held = self._queued_bytes
        if self.queue or (not self._waiting and self.on_wake is None):
            held += self.decoder.buffered
        self.conn.consume_to(self.sid, self._received - held)

    def _wake(self) -> None:
        self._readers.wake()
        if self.on_wake is not None:
            self.on_wake()

    async def recv(self) -> bytes:
        while True:
            if self.queue:
                m = self.queue.popleft()
                self._queued_bytes -= len(m) + HEADER_SIZE
                self._credit()
                return m
            if self.recv_error is not None:
                raise self.recv_error
            if self.recv_fin:
                raise StreamClosed("the writer finished the stream")
            self._waiting += 1
            try:
                if self.decoder.buffered:
                    self._credit()  # a reader waits: let a partial message complete
                await self._readers.wait()
            finally:
                self._waiting -= 1

    def recv_nowait(self) -> bytes | None:
        if self.queue:
            m = self.queue.popleft()
            self._queued_bytes -= len(m) + HEADER_SIZE
            self._credit()
            return m
        return None

    def close_recv(self) -> None:
        if self.recv_error is None and not self.recv_fin:
            self.recv_error = wire.stream_reset(wire.Code.READER_CLOSED,
                                                "this end closed the stream")
            if not self.conn.closed:
                self.conn.stop(self.sid, wire.Code.READER_CLOSED)
        self.queue.clear()
        self._queued_bytes = 0
        self._wake()

    # -- writing --------------------------------------------------------------

    def _wake_writer(self) -> None:
        self._writers.wake()

    def _on_drain(self) -> None:
        if self.conn.unsent(self.sid) <= self.low_water or self.send_error is not None:
            self.conn.unwatch_drain(self.sid)
            self._wake_writer()

    def _check_send(self) -> None:
        if self.send_error is not None:
            raise self.send_error
        if self.send_finished:
            raise StreamClosed("send.finish() was called on this stream")

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if n > self.max_message_size:
            raise MessageTooLarge(
                f"message of {n} bytes exceeds max_message_size {self.max_message_size}")
        self._check_send()
        conn = self.conn
        while conn.unsent(self.sid) > self.high_water:
            conn.watch_drain(self.sid, self._on_drain)
            await self._writers.wait()
            self._check_send()
        conn.send(self.sid, n.to_bytes(HEADER_SIZE, "big") + bytes(data))

    def write_raw(self, framed: bytes) -> None:
        """Write already-framed bytes (headers), no waiting."""
        self.conn.send(self.sid, framed)

    async def finish(self) -> None:
        if self.send_finished:
            return
        self._check_send()
        self.send_finished = True
        self.conn.send(self.sid, b"", end=True)

    def reset(self, code: int) -> None:
        if self.send_finished or self.send_error is not None:
            return
        self.send_error = wire.stream_reset(code, "this end reset the stream")
        self.conn.reset(self.sid, code)
        self._wake_writer()


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


T = TypeVar("T")


@dataclass(frozen=True)
class BroadcastMessage(Generic[T]):
    """One message of a broadcast and the id of the member that sent it."""

    sender: str
    data: T


class BroadcastInStream(Reader[BroadcastMessage[bytes]]):
    """Receiving half of a broadcast stream: every member's messages, its own
    included, in the one order all members share."""

    __slots__ = ("_core", "_parts", "_parts_size")

    def __init__(self, core: StreamCore) -> None:
        self._core = core
        # Pieces of a large message (the Coordinator forwards those as they
        # arrive); kept here so a cancelled recv() loses nothing.
        self._parts: list[bytes] = []
        self._parts_size = 0

    @property
    def stream_id(self) -> StreamId:
        return self._core.stream_id

    async def recv(self) -> BroadcastMessage[bytes]:
        """The next message with its sender. Raises `StreamClosed` once every
        member has finished sending, `StreamReset` if the broadcast or the
        path failed, `MessageTooLarge` for a message above this client's
        limit (skipped; the stream goes on)."""
        while True:
            try:
                raw = await self._core.recv()
            except StreamClosed:
                raise StreamClosed("the broadcast ended: every member finished sending"
                                   ) from None
            if raw[:1] == b"\x00":
                self._notice(raw)
                continue
            n = raw[0] if raw else 0
            try:
                if len(raw) < 1 + n:
                    raise ValueError("short")
                sender = raw[1:1 + n].decode()
            except ValueError:
                raise StreamReset(wire.Code.PROTOCOL, "malformed broadcast delivery") from None
            data = raw[1 + n:]
            if self._parts:
                self._parts.append(data)
                data = b"".join(self._parts)
                self._parts = []
                self._parts_size = 0
            return BroadcastMessage(sender, data)

    def _notice(self, raw: bytes) -> None:
        kind = raw[:2]
        if kind == wire.BROADCAST_PART:
            self._parts_size += len(raw) - 2
            if self._parts_size > self._core.max_message_size:
                raise StreamReset(wire.Code.MESSAGE_TOO_LARGE,
                                  "a broadcast message grew beyond max_message_size")
            self._parts.append(raw[2:])
            return
        self._parts = []
        self._parts_size = 0
        if kind == wire.BROADCAST_DROPPED:
            return  # its sender went away in the middle of it
        if kind == wire.BROADCAST_TOO_LARGE and len(raw) >= 11:
            size = int.from_bytes(raw[2:10], "big")
            sender = raw[11:11 + raw[10]].decode(errors="replace")
            raise MessageTooLarge(
                f"a broadcast message of {size} bytes from {sender!r} was skipped: it "
                f"exceeds this client's max_message_size {self._core.max_message_size}")
        raise StreamReset(wire.Code.PROTOCOL, "malformed broadcast delivery")

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
