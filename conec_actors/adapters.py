"""Adapters over stream halves: a reader that never blocks its writer, and
typed (msgpack) readers and writers.

- `NonblockingInStream(recv, capacity)` keeps draining a reader into a ring of
  `capacity` messages, dropping the oldest when full and reporting the drops
  as `Lagged(n)`.
- `TypedOutStream(send, T)` / `TypedInStream(recv, T)` send and receive values
  of type `T` encoded with msgspec msgpack.

They work on any `MessageSource` (an `InStream`, a `BroadcastInStream`, or
another adapter) and stack: `TypedInStream(NonblockingInStream(recv, 64), T)`.
Items of a broadcast reader are `BroadcastMessage(sender, data)`; the typed
reader decodes `data` and yields `BroadcastMessage[T]`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, cast, overload

from . import wire
from .errors import DecodeError, Lagged, MessageTooLarge, StreamClosed
from .streams import (
    BroadcastMessage,  # re-exported: the items of a BroadcastInStream
    Writer,
)
from .typed_codec import TypedCodec, type_name

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
M = TypeVar("M")
"""Item type of a `NonblockingInStream` (whatever its source yields)."""
R = TypeVar("R")
"""What a `TypedInStream` yields: `T`, or `BroadcastMessage[T]`."""

#: The drain task yields to the event loop after this many messages taken
#: without waiting, so a source that always has data cannot starve the loop.
_DRAIN_BURST = 256


class MessageSource(Protocol[T_co]):
    """What the readers adapt: `InStream` (items are `bytes`),
    `BroadcastInStream` (items are `BroadcastMessage[bytes]`), and the
    adapters in this module.

    `recv()` raises `StreamClosed` at a clean end and `StreamReset` if the
    stream failed; `close()` stops reading and tells the writer.
    """

    async def recv(self) -> T_co:
        """The next item."""
        ...

    def close(self) -> None:
        """Stop reading."""
        ...


class MessageSink(Protocol):
    """What `TypedOutStream` writes to: an `OutStream` or a broadcast's
    sending half."""

    async def send(self, data: bytes) -> None:
        """Send one message."""
        ...

    async def finish(self) -> None:
        """End the stream cleanly."""
        ...

    def reset(self, code: int = 0) -> None:
        """Abort the stream with `code`."""
        ...


class _Failed:
    """A per-message error kept in a `NonblockingInStream`'s ring, delivered in
    its place (a `DecodeError` from a typed source, a `MessageTooLarge` notice
    from a broadcast reader)."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class NonblockingInStream(Generic[M]):
    """A reader that never makes its writer wait: it keeps at most `capacity`
    messages and drops the oldest when full.

    A background task takes every message from `recv` as soon as it arrives,
    so the stream's flow control never stalls the sender on this reader.
    When messages had to be dropped, the next `recv()` raises `Lagged(n)`
    with the exact number dropped since the previous delivery, then delivery
    resumes with the oldest message kept. At the source's clean end the kept
    messages are delivered, then `StreamClosed`; if the source failed
    (`StreamReset`, or any other error) the kept messages are delivered, then
    that error. A `DecodeError` from a typed source is delivered in its place
    among the messages and does not end the stream.

    The drain task starts at construction when an event loop is running,
    otherwise on first use (`recv()`, `async for` or `async with`); until
    then nothing is drained. It ends when the source ends, and `close()`
    cancels it and closes the source.

    `async for item in reader` ends at a clean end; `Lagged` propagates out
    of the loop, and iterating again resumes delivery. `async with reader:`
    closes it on exit. Items are whatever the source yields: `bytes` from an
    `InStream`, `BroadcastMessage[bytes]` from a `BroadcastInStream`.
    """

    __slots__ = ("_capacity", "_closed", "_dropped", "_end", "_ready", "_received",
                 "_ring", "_source", "_task")

    def __init__(self, recv: MessageSource[M], capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self._source = recv
        self._capacity = capacity
        self._ring: deque[M | _Failed] = deque(maxlen=capacity)
        self._dropped = 0
        self._received = 0
        # How the source ended (or why reading stopped); None while it runs.
        self._end: Exception | None = None
        self._closed = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._start()

    # -- state, for monitoring ---------------------------------------------

    @property
    def source(self) -> MessageSource[M]:
        """The wrapped reader."""
        return self._source

    @property
    def capacity(self) -> int:
        """How many messages are kept at most."""
        return self._capacity

    @property
    def received(self) -> int:
        """How many messages were taken from the source so far (kept or
        dropped)."""
        return self._received

    @property
    def buffered(self) -> int:
        """How many messages are kept, waiting for `recv()`."""
        return len(self._ring)

    @property
    def ended(self) -> bool:
        """True once nothing more will be taken from the source: it ended
        (cleanly or not) or `close()` was called. Kept messages may remain."""
        return self._end is not None

    # -- the drain task -----------------------------------------------------

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._drain(), name=f"conec-nonblocking-drain {self._source!r}")

    def _ensure_started(self) -> None:
        if self._task is None and self._end is None:
            self._start()

    async def _drain(self) -> None:
        source, ring, capacity = self._source, self._ring, self._capacity
        burst = 0
        try:
            while True:
                try:
                    item: M | _Failed = await source.recv()
                except (DecodeError, MessageTooLarge) as exc:  # the stream goes on
                    item = _Failed(exc)
                self._received += 1
                if len(ring) == capacity:
                    self._dropped += 1  # the append below pushes out the oldest
                ring.append(item)
                self._ready.set()
                burst += 1
                if burst >= _DRAIN_BURST:
                    burst = 0
                    await asyncio.sleep(0)
        except Exception as exc:
            if self._end is None:
                self._end = exc
        finally:
            self._ready.set()

    # -- reading ------------------------------------------------------------

    async def recv(self) -> M:
        """The next kept message. Raises `Lagged(n)` first if `n` messages
        were dropped since the previous delivery; `StreamClosed` after the
        last message of a clean end; the source's error (`StreamReset`) after
        the last kept message otherwise."""
        self._ensure_started()
        while True:
            if self._dropped:
                n, self._dropped = self._dropped, 0
                raise Lagged(n)
            if self._ring:
                item = self._ring.popleft()
                if isinstance(item, _Failed):
                    raise item.exc
                return item
            end = self._end
            if end is not None:
                if isinstance(end, StreamClosed):
                    raise StreamClosed(*end.args)
                raise end
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Stop reading: cancel the drain task, drop the kept messages and
        close the source (its writer's next send raises `StreamReset`).
        A later `recv()` raises like `InStream.recv()` after `close()`."""
        if self._closed:
            return
        self._closed = True
        if self._end is None:
            self._end = wire.stream_reset(wire.Code.READER_CLOSED, "this end closed the stream")
        if self._task is not None:
            self._task.cancel()
        self._ring.clear()
        self._dropped = 0
        self._source.close()
        self._ready.set()

    def __aiter__(self) -> NonblockingInStream[M]:
        self._ensure_started()
        return self

    async def __anext__(self) -> M:
        try:
            return await self.recv()
        except StreamClosed:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> NonblockingInStream[M]:
        self._ensure_started()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<NonblockingInStream {self._source!r} "
                f"{len(self._ring)}/{self._capacity} kept>")


class TypedOutStream(Writer, Generic[T]):
    """Sends values of type `T` (a `msgspec.Struct`, a dataclass or a builtin
    type such as `dict[str, int]`), msgpack encoded, one message per value.

    `send` is an `OutStream` (or a broadcast's sending half). Values are
    encoded as they are, not checked against `T`; a value msgspec cannot
    encode raises `TypeError` and nothing is sent. `async with` finishes the
    stream on a clean exit and resets it on an exception, like `OutStream`.
    """

    __slots__ = ("_codec", "_encode", "_send")

    @overload
    def __init__(self: TypedOutStream[T], send: MessageSink, type: type[T]) -> None: ...
    @overload
    def __init__(self: TypedOutStream[Any], send: MessageSink, type: Any) -> None: ...
    def __init__(self, send: MessageSink, type: Any) -> None:
        self._send = send
        self._codec: TypedCodec[T] = TypedCodec(type)
        self._encode = self._codec.encode

    @property
    def inner(self) -> MessageSink:
        """The wrapped writer."""
        return self._send

    @property
    def value_type(self) -> Any:
        """The type of the values sent."""
        return self._codec.type

    async def send(self, value: T) -> None:
        """Encode `value` and send it as one message (waits like
        `OutStream.send`; `MessageTooLarge` and `StreamReset` pass through)."""
        await self._send.send(self._encode(value))

    async def finish(self) -> None:
        """End the stream cleanly: the reader sees `StreamClosed` after the
        last value."""
        await self._send.finish()

    def reset(self, code: int = 0) -> None:
        """Abort now; the reader gets `StreamReset` with `code` (0..65535)."""
        self._send.reset(code)

    def __repr__(self) -> str:
        return f"<TypedOutStream[{type_name(self._codec.type)}] {self._send!r}>"


class TypedInStream(Generic[R]):
    """Receives values of type `T`, decoded from msgpack with a
    `msgspec.msgpack.Decoder(T)`.

    On a plain stream it yields `T`; when the source yields
    `BroadcastMessage` items (a `BroadcastInStream`, possibly behind a
    `NonblockingInStream`) it decodes their `data` and yields
    `BroadcastMessage[T](sender, value)`. A message that does not decode as
    `T` raises `DecodeError` and the stream stays usable: the next `recv()`
    returns the next message. Errors of the source (`StreamReset`, `Lagged`)
    pass through.

    `async for value in reader` ends at a clean end; a `DecodeError` or
    `Lagged` propagates out of the loop, and iterating again resumes.
    `async with reader:` closes it on exit.
    """

    __slots__ = ("_codec", "_source")

    @overload
    def __init__(self: TypedInStream[BroadcastMessage[T]],
                 recv: MessageSource[BroadcastMessage[bytes]], type: type[T]) -> None: ...
    @overload
    def __init__(self: TypedInStream[T], recv: MessageSource[bytes], type: type[T]) -> None: ...
    @overload
    def __init__(self: TypedInStream[BroadcastMessage[Any]],
                 recv: MessageSource[BroadcastMessage[bytes]], type: Any) -> None: ...
    @overload
    def __init__(self: TypedInStream[Any], recv: MessageSource[Any], type: Any) -> None: ...
    def __init__(self, recv: MessageSource[Any], type: Any) -> None:
        self._source = recv
        self._codec: TypedCodec[Any] = TypedCodec(type)

    @property
    def inner(self) -> MessageSource[Any]:
        """The wrapped reader."""
        return self._source

    @property
    def value_type(self) -> Any:
        """The type values are decoded as."""
        return self._codec.type

    async def recv(self) -> R:
        """The next value. Raises `DecodeError` for a message that is not a
        `T` (the stream stays usable), `StreamClosed` at a clean end, and
        whatever the source raises (`StreamReset`, `Lagged`)."""
        return cast(R, self._codec.decode_item(await self._source.recv()))

    def close(self) -> None:
        """Stop reading: closes the source."""
        self._source.close()

    def __aiter__(self) -> TypedInStream[R]:
        return self

    async def __anext__(self) -> R:
        try:
            return await self.recv()
        except StreamClosed:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> TypedInStream[R]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TypedInStream[{type_name(self._codec.type)}] {self._source!r}>"


__all__ = [
    "BroadcastMessage",
    "MessageSink",
    "MessageSource",
    "NonblockingInStream",
    "TypedInStream",
    "TypedOutStream",
]
