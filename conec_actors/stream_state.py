"""The state of one framed stream at a client, without waiting in it.

`StreamState` reassembles incoming frames into a bounded queue of messages,
credits the QUIC receive window as the application takes messages (so a
reader that stops reading stalls its writer; the bytes of a message still
arriving are credited only while a reader waits for it, so a stream nobody
reads holds at most its window), and keeps both directions' ends and
errors. It drives its connection through `StreamConn` and tells whoever
waits on it through two hooks, `_wake` (readers) and `_wake_writer`; the
asyncio half (`streams.StreamCore`) adds the waiting.

`BroadcastAssembler` turns the deliveries of a broadcast stream (sender id
and data, pieces of large messages, notices) back into messages.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from . import wire
from .errors import MessageTooLarge, StreamClosed, StreamReset
from .framing import HEADER_SIZE, FrameDecoder, FrameTooLarge
from .limits import effective_limit

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


T = TypeVar("T")


@dataclass(frozen=True)
class BroadcastMessage(Generic[T]):
    """One message of a broadcast and the id of the member that sent it."""

    sender: str
    data: T


class StreamConn(Protocol):
    """What a stream and its owner ask of the QUIC connection it runs on
    (`transport.Conn`); `quic_id` is the stream's id on that connection."""

    @property
    def closed(self) -> bool: ...
    def send(self, quic_id: int, data: bytes, end: bool = False) -> None: ...
    def reset(self, quic_id: int, code: int) -> None: ...
    def stop(self, quic_id: int, code: int) -> None: ...
    def consume_to(self, quic_id: int, offset: int) -> None: ...
    def unsent(self, quic_id: int) -> int: ...
    def set_stream_window(self, quic_id: int, window: int) -> None: ...
    def watch_drain(self, quic_id: int, cb: Callable[[], None]) -> None: ...
    def unwatch_drain(self, quic_id: int) -> None: ...
    def forget_stream(self, quic_id: int) -> None: ...


class StreamState:
    """One framed bidirectional stream on a connection (client side): what
    arrived, what was taken, how each direction ended. Nothing here waits."""

    __slots__ = (
        "_queued_bytes", "_received", "_waiting", "conn", "decoder", "high_water",
        "low_water", "max_message_size", "on_wake", "queue", "quic_id", "recv_error",
        "recv_extra", "recv_fin", "send_error", "send_finished", "stream_id",
    )

    def __init__(self, conn: StreamConn, quic_id: int, stream_id: StreamId,
                 max_message_size: int, recv_extra: int = 0) -> None:
        self.conn = conn
        #: The stream's id on its QUIC connection.
        self.quic_id = quic_id
        #: What both ends call the stream.
        self.stream_id = stream_id
        self.max_message_size = max_message_size
        # The first frame is a stream header (or acceptance), which may be
        # larger than a tiny payload limit; `take_first` applies the real one.
        self.decoder = FrameDecoder(max(max_message_size + recv_extra, HEADER_FRAME_MAX))
        self.recv_extra = recv_extra
        self.queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._received = 0
        self._waiting = 0  # readers waiting for a message
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

    # -- hooks for the half that waits ------------------------------------------

    def _wake(self) -> None:
        """Readers may go on: messages came, or the receiving side ended."""
        if self.on_wake is not None:
            self.on_wake()

    def _wake_writer(self) -> None:
        """Writers may go on: the sending side drained or ended."""

    # -- settings ---------------------------------------------------------------

    def limit_to(self, limit: int) -> None:
        """Apply the stream's effective message size limit, as the other end
        or the Coordinator announced it (0: unknown, keep ours): `send`
        refuses larger messages with `MessageTooLarge`."""
        limit = effective_limit(self.max_message_size, limit)
        if limit != self.max_message_size:
            self.max_message_size = limit
            self.decoder.max_size = limit + self.recv_extra

    def set_buffers(self, *, window: int, high_water: int, low_water: int) -> None:
        """Queue less than point-to-point streams do (broadcast streams)."""
        self.high_water = high_water
        self.low_water = low_water
        self.conn.set_stream_window(self.quic_id, window)

    # -- events from the connection ---------------------------------------------

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
        """The writer reset the stream."""
        if self.recv_error is None and not self.recv_fin:
            self.recv_error = wire.stream_reset(code)
        self._wake()

    def stop_received(self, code: int) -> None:
        """The reader asked this end to stop sending."""
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
        self.conn.stop(self.quic_id, code)
        self.conn.reset(self.quic_id, code)
        self._wake()
        self._wake_writer()

    # -- reading ----------------------------------------------------------------

    def _credit(self) -> None:
        # Whole messages are credited as the application takes them; the
        # bytes of a partial one only while a reader waits with nothing else
        # to take (else a message larger than the window could never
        # complete, and a stream nobody reads could hold a whole one).
        held = self._queued_bytes
        if self.queue or (not self._waiting and self.on_wake is None):
            held += self.decoder.buffered
        self.conn.consume_to(self.quic_id, self._received - held)

    def recv_nowait(self) -> bytes | None:
        """The next queued message, or None if there is none yet."""
        if self.queue:
            m = self.queue.popleft()
            self._queued_bytes -= len(m) + HEADER_SIZE
            self._credit()
            return m
        return None

    def check_recv(self) -> None:
        """Nothing is queued: raise how the receiving side ended, if it did
        (`StreamReset`, or `StreamClosed` at a clean end)."""
        if self.recv_error is not None:
            raise self.recv_error
        if self.recv_fin:
            raise StreamClosed("the writer finished the stream")

    def reader_waits(self) -> None:
        """A reader starts waiting with nothing queued: a partial message may
        now complete (its bytes are credited)."""
        self._waiting += 1
        if self.decoder.buffered:
            self._credit()

    def reader_done(self) -> None:
        """A reader stopped waiting (woken or cancelled)."""
        self._waiting -= 1

    def close_recv(self) -> None:
        """Stop reading: drop what is queued and ask the writer to stop."""
        if self.recv_error is None and not self.recv_fin:
            self.recv_error = wire.stream_reset(wire.Code.READER_CLOSED,
                                                "this end closed the stream")
            if not self.conn.closed:
                self.conn.stop(self.quic_id, wire.Code.READER_CLOSED)
        self.queue.clear()
        self._queued_bytes = 0
        self._wake()

    # -- writing ----------------------------------------------------------------

    def check_send(self) -> None:
        """Raise if nothing more may be sent (`StreamReset`, `StreamClosed`)."""
        if self.send_error is not None:
            raise self.send_error
        if self.send_finished:
            raise StreamClosed("send.finish() was called on this stream")

    def check_size(self, n: int) -> None:
        """Raise `MessageTooLarge` for a message of `n` bytes above the limit."""
        if n > self.max_message_size:
            raise MessageTooLarge(
                f"message of {n} bytes exceeds max_message_size {self.max_message_size}")

    def drained(self) -> bool:
        """Called as ACKs come while a writer waits: True (and no more calls)
        once it may go on, below the low watermark or failed."""
        if self.conn.unsent(self.quic_id) <= self.low_water or self.send_error is not None:
            self.conn.unwatch_drain(self.quic_id)
            return True
        return False

    def write_raw(self, framed: bytes) -> None:
        """Write already-framed bytes (headers), no waiting."""
        self.conn.send(self.quic_id, framed)

    def finish_now(self) -> None:
        """End the sending side cleanly (a no-op if it already was)."""
        if self.send_finished:
            return
        self.check_send()
        self.send_finished = True
        self.conn.send(self.quic_id, b"", end=True)

    def reset(self, code: int) -> None:
        """Abort the sending side (no-op if it is over)."""
        if self.send_finished or self.send_error is not None:
            return
        self.send_error = wire.stream_reset(code, "this end reset the stream")
        self.conn.reset(self.quic_id, code)
        self._wake_writer()


class BroadcastAssembler:
    """Turns the deliveries of a broadcast stream into messages.

    A delivery is ``len(sender) sender data``; one starting with a zero byte
    is a notice: a piece of a large message (the Coordinator forwards those
    as they arrive; the piece before the final delivery), its sender gone in
    the middle of one, or a message skipped for exceeding this client's
    limit. Pieces are kept here between calls, so a reader cancelled while
    waiting loses nothing.
    """

    __slots__ = ("_parts", "_parts_size", "max_message_size")

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._parts: list[bytes] = []
        self._parts_size = 0

    def feed(self, raw: bytes) -> BroadcastMessage[bytes] | None:
        """The message `raw` completes, or None for a notice that completes
        none. Raises `MessageTooLarge` for a skipped message (the stream goes
        on), `StreamReset` for a malformed delivery or a message growing
        beyond `max_message_size`."""
        if raw[:1] == b"\x00":
            self._notice(raw)
            return None
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
            if self._parts_size > self.max_message_size:
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
                f"exceeds this client's max_message_size {self.max_message_size}")
        raise StreamReset(wire.Code.PROTOCOL, "malformed broadcast delivery")
