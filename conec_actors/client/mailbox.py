"""Tell and ask: the per-client mailbox machinery behind `Client.tell`,
`Client.ask` and `Client.mailbox`.

Sending. Each (sender, receiver) pair has one *mailbox stream* (a data
stream whose header carries the purpose ``"mailbox"``), a bounded queue and
one writer task. `tell` encodes the message, checks its size and puts it in
the queue; it waits only while the queue is full, and the first tell to a
peer also waits until the stream has opened (``NoSuchPeer`` if the peer is
not connected). The writer drains the queue: when several tells are queued
it packs them into one frame, and it flushes as soon as the queue is empty,
so an idle line sends each tell at once and a busy one batches (no timers).
On an idle line (nothing queued, the writer waiting, the route settled and
nothing unsent on the stream) `tell` and `ask` skip the queue and write the
frame themselves, which is what the writer would do one loop turn later;
replies take the same shortcut on the return half.

Path. The stream rides the direct channel when one is open and the
Coordinator otherwise; mailbox streams never open channels. When the path
changes, the writer *fences* the old stream before using the new one: it
finishes the old stream and waits until the receiver has consumed all of it
(the receiver answers the clean end with ``Drained``), while tells queued
meanwhile wait. When a stream breaks instead (a channel closed under it), the
writer reopens on the current path and resends what the receiver has not
acknowledged yet; items carry per-pair sequence numbers and the receiver drops
duplicates, so order holds and nothing is lost while the peer stays
connected. When the peer is gone the reopen fails: the route is dead,
queued and in-flight tells are lost, pending asks fail, and the next tell
raises ``NoSuchPeer``.

Limits. A pair's size limit is the Coordinator's at first, then the
smallest of every path the pair has opened (the stream's `max_message_size`:
a channel's is the smaller of both ends', a proxied stream's the smallest of
both clients' and the Coordinator's), so the first tell to a peer is checked
once its route has opened and `tell`/`ask` raise ``MessageTooLarge`` rather
than a path dropping the message later. A reply is checked against the return
half it will take; one too large fails that ask alone
(``RemoteError("MessageTooLarge", ...)`` at the asker).

Closing. `Client.close` first drains: new tells and asks raise
``ClientClosed``, and each pair's writer sends what is queued, then fences its
stream (finish, wait for ``Drained``), within `client.CLOSE_DRAIN` (5 s) however
the receivers read.

Receiving. Every incoming mailbox stream is read as its frames arrive, from
the stream's wake-up callback (no reader task in between), into one bounded
inbox (`Client.mailbox`): a receiver that does not read leaves frames unread
in the streams, their flow control stalls and the senders' queues fill, so
their tells wait. Replies to asks, acknowledgements and the fence answer
travel back on the return half of the stream, whose answers are likewise
handled as they arrive.

Wire format (msgpack, array-like tagged structs): every frame on a mailbox
stream is one `Batch` ``["mbox", version, session, seq, items]``. Forward
items are `Tell` and `Ask`; `seq` numbers the first of them and the rest
follow consecutively; `session` identifies the sending client instance.
Backward items are `Reply`, `Fail`, `Ack` and `Drained`. Bodies are raw
msgpack (`msgspec.Raw`), decoded lazily with the type the receiver asks for.

Bodies that do not decode. A typed reader (`Mailbox.typed(T)`,
`Actor.message_type`) skips an envelope whose body does not decode as ``T``:
it logs a warning and, for an ask, answers with a ``DecodeError`` failure, so
the asker gets ``RemoteError("DecodeError", ...)`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

import msgspec

from .. import framing, wire
from .._util import Waiters
from ..errors import (
    ClientClosed,
    ConecError,
    DecodeError,
    MessageTooLarge,
    NoChannel,
    NoSuchPeer,
    ProtocolError,
    RemoteError,
    StreamClosed,
    StreamReset,
)
from ..ids import is_valid_id
from ..streams import IncomingStream, InStream, OutStream
from .mailbox_wire import (
    BATCH_OVERHEAD,
    DRAINED,
    Ack,
    Ask,
    AskOut,
    Batch,
    Drained,
    Fail,
    Reply,
    ReplyOut,
    Tell,
    TellOut,
    any_decoder,
    decode_batch,
    encode_batch,
    encoder,
)

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Header `purpose` of mailbox streams.
PURPOSE = "mailbox"
#: A pair's send queue holds this many messages or bytes before `tell` waits.
PAIR_QUEUE_ITEMS = 1024
PAIR_QUEUE_BYTES = 1024 * 1024
#: A batch grows up to this many bytes (a single larger message goes alone,
#: up to the message size limit): big enough to amortise per-frame costs,
#: small enough to keep frames pipelined within a stream window.
BATCH_BYTES = 64 * 1024
#: The inbox (`client.mailbox`) holds this many envelopes or bytes before the
#: stream readers wait (and flow control pushes back on the senders).
INBOX_ITEMS = 1024
INBOX_BYTES = 4 * 1024 * 1024
#: Replies waiting for a return half before `Envelope.reply` waits.
BACK_QUEUE_ITEMS = 1024
#: The receiver acknowledges after consuming this many messages (and at a
#: stream's clean end); the sender keeps unacknowledged ones for resending.
ACK_EVERY = 256
#: Mailbox streams a client accepts at once (one per sending peer).
MAX_MAILBOX_STREAMS = 4096
#: A route that breaks this many times in a row without progress is dead.
REOPEN_ATTEMPTS = 3
#: A stream that lived this long before breaking counts as progress.
ROUTE_SETTLED = 1.0
#: The receiver forgets a sender's sequence numbers this long after its last
#: mailbox stream ended.
SENDER_TTL = 60.0
#: How long a finished stream's return half stays open for the replies of an
#: ask sent without a timeout.
ASK_HOLD_MAX = 300.0


_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
_FORWARD = (Tell, Ask)


def _decoder_for(typ: Any) -> msgspec.msgpack.Decoder[Any]:
    if typ is None or typ is Any:
        return any_decoder
    try:
        return _decoders[typ]
    except (KeyError, TypeError):
        dec: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(typ)
        with contextlib.suppress(TypeError):  # unhashable type expressions
            _decoders[typ] = dec
        return dec


def _copy_error(err: ConecError) -> ConecError:
    """A fresh instance to raise (one instance raised many times grows its
    traceback)."""
    fresh = ClientClosed(str(err)) if isinstance(err, ClientClosed) else NoSuchPeer(str(err))
    fresh.__cause__ = err.__cause__
    return fresh


# --- small waiting helpers -----------------------------------------------------

def _write_idle(stream: OutStream, data: bytes) -> bool:
    """Write one frame now if `stream` is open and has nothing unsent (so the
    write neither waits for the high watermark nor overtakes anything);
    False, writing nothing, otherwise."""
    core = stream._core
    conn = core.conn
    if (core.send_error is not None or core.send_finished or conn.closed
            or conn.unsent(core.quic_id) or len(data) > core.max_message_size):
        return False
    core.write_raw(framing.frame(data))
    return True


def _check_size(peer: str, item: bytes, max_message_size: int) -> None:
    """`MessageTooLarge` if `item` does not fit one frame of `max_message_size`."""
    limit = max_message_size - BATCH_OVERHEAD
    if len(item) > limit:
        raise MessageTooLarge(
            f"message of {len(item)} encoded bytes exceeds the message size limit toward "
            f"{peer!r} ({limit} bytes for a tell or ask, max_message_size "
            f"{max_message_size})")


def _log_failure(exc: Exception, where: str) -> None:
    if isinstance(exc, ProtocolError):
        log.warning("%s: %s", where, exc)
    else:  # a bug
        log.error("%s failed", where, exc_info=exc)


def _time_out(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


# --- sending side -----------------------------------------------------------------

class _Route:
    """One outgoing mailbox stream (the current or a fenced one)."""

    __slots__ = ("broken", "drained", "finishing", "kind", "opened_at", "progress",
                 "recv", "send")

    def __init__(self, kind: str, send: OutStream, recv: InStream, now: float) -> None:
        self.kind = kind
        self.send = send
        self.recv = recv
        self.opened_at = now
        self.drained = asyncio.Event()
        self.broken = False
        self.finishing = False
        self.progress = False


class _Pair:
    """This client's sending state toward one peer."""

    __slots__ = ("dead", "draining", "failures", "frames", "idle", "limit", "messages",
                 "next_seq", "peer", "putters", "queue", "queued_bytes", "routed", "stream",
                 "unacked", "wake", "writer")

    def __init__(self, peer: str, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.peer = peer
        #: The pair's message size limit (max_message_size of a frame): the
        #: Coordinator's, then the smallest of every path opened to the peer.
        self.limit = limit
        #: The client is closing: deliver what is queued, fence, and end.
        self.draining = False
        #: (seq, encoded item) waiting for the writer, then sent but not yet
        #: acknowledged by the receiver (resent if the stream breaks).
        self.queue: deque[tuple[int, bytes]] = deque()
        self.unacked: deque[tuple[int, bytes]] = deque()
        self.queued_bytes = 0
        self.next_seq = 0
        self.putters = Waiters()
        self.wake = asyncio.Event()
        #: Resolved when the first stream opened (the route exists).
        self.routed: asyncio.Future[None] = loop.create_future()
        self.dead: ConecError | None = None
        self.stream: _Route | None = None
        self.writer: asyncio.Task[None] | None = None
        #: True while the writer waits with nothing to do (no batch in flight,
        #: no fence or resend under way).
        self.idle = False
        self.failures = 0
        self.frames = 0
        self.messages = 0

    def full(self) -> bool:
        return len(self.queue) >= PAIR_QUEUE_ITEMS or self.queued_bytes >= PAIR_QUEUE_BYTES


# --- receiving side ---------------------------------------------------------------

class _Sender:
    """What the receiver remembers of one sending peer: its session and the
    last sequence number consumed (to drop resent duplicates)."""

    __slots__ = ("expiry", "last", "routes", "session")

    def __init__(self) -> None:
        self.session: int | None = None
        self.last = -1
        self.routes: list[_InRoute] = []
        self.expiry: asyncio.TimerHandle | None = None


class _InRoute:
    """One incoming mailbox stream: the reading state of its forward half and
    the writer of its return half."""

    __slots__ = ("ack_to", "back", "back_open", "back_putters", "batch", "consumed",
                 "drained", "ended", "hold", "hold_until", "idle", "in_progress", "next_item",
                 "peer", "pending_asks", "reading", "recv", "send", "wait_room", "wake",
                 "writer")

    def __init__(self, inc: IncomingStream) -> None:
        self.peer = inc.peer
        self.send = inc.send
        self.recv = inc.recv
        self.back: deque[bytes] = deque()
        self.back_putters = Waiters()
        self.back_open = True
        self.wake = asyncio.Event()
        self.ack_to: int | None = None
        self.drained = False
        self.ended = False
        self.consumed = 0
        self.pending_asks = 0
        self.hold_until = 0.0
        self.hold: asyncio.TimerHandle | None = None
        #: True until the forward half ended, failed or was given up.
        self.reading = True
        #: `Mailbox._read_in` is running (it may be re-entered through the stream).
        self.in_progress = False
        #: A batch not yet wholly delivered (the inbox was full) and the index
        #: of its next item.
        self.batch: Batch | None = None
        self.next_item = 0
        #: Queued in `_Inbox.wait_room`.
        self.wait_room = False
        self.writer: asyncio.Task[None] | None = None
        #: True while the return half's writer waits with nothing to do.
        self.idle = False

    def answered(self) -> None:
        self.pending_asks -= 1
        if self.ended and self.pending_asks <= 0:
            self.wake.set()


class _Delivered:
    """An envelope in the inbox, body still encoded."""

    __slots__ = ("ask_id", "body", "route", "sender")

    def __init__(self, sender: str, body: msgspec.Raw, ask_id: int | None,
                 route: _InRoute) -> None:
        self.sender = sender
        self.body = body
        self.ask_id = ask_id
        self.route = route


class _Inbox:
    """The bounded queue behind `client.mailbox`."""

    __slots__ = ("ended", "getters", "items", "nbytes", "resume", "wait_room")

    def __init__(self, resume: Callable[[_InRoute], None]) -> None:
        self.items: deque[_Delivered] = deque()
        self.nbytes = 0
        self.getters = Waiters()
        #: Incoming streams whose reading stopped on a full inbox, and what
        #: goes on reading one of them.
        self.wait_room: deque[_InRoute] = deque()
        self.resume = resume
        self.ended = False

    def full(self) -> bool:
        return len(self.items) >= INBOX_ITEMS or self.nbytes >= INBOX_BYTES

    def put(self, d: _Delivered) -> None:
        self.items.append(d)
        self.nbytes += len(d.body)
        self.getters.wake()

    async def get(self) -> _Delivered | None:
        while not self.items:
            if self.ended:
                return None
            await self.getters.wait()
        d = self.items.popleft()
        self.nbytes -= len(d.body)
        while self.wait_room and not self.full():
            r = self.wait_room.popleft()
            r.wait_room = False
            self.resume(r)
        return d

    def end(self) -> None:
        self.ended = True
        self.getters.wake()
        self.wait_room.clear()


# --- user-facing objects ------------------------------------------------------------

class Envelope(Generic[T]):
    """A message told or asked by `sender`, as read from `client.mailbox`.

    `body` is the decoded message: builtins (``bytes`` stay ``bytes``, a
    Struct arrives as a ``dict``) unless the reader asked for a type. For an
    ask (`is_ask`), `await envelope.reply(value)` sends the answer; for a tell
    it does nothing.
    """

    __slots__ = ("_ask_id", "_mailbox", "_replied", "_route", "body", "sender")

    def __init__(self, sender: str, body: T, ask_id: int | None, route: _InRoute | None,
                 mailbox: Mailbox) -> None:
        self.sender = sender
        self.body = body
        self._ask_id = ask_id
        self._route = route
        self._mailbox = mailbox
        self._replied = False

    @property
    def is_ask(self) -> bool:
        """True for an `ask` (which waits for `reply`), False for a `tell`."""
        return self._ask_id is not None

    async def reply(self, value: Any) -> None:
        """Answer an ask with `value` (bytes or any msgspec-encodable value);
        a no-op for a tell or an ask already answered.

        Raises `MessageTooLarge` if the encoded answer exceeds the size limit
        of the path back to the asker (the smallest of both clients' and, when
        proxied, the Coordinator's); the asker then gets
        `RemoteError("MessageTooLarge", ...)` at once and the path stays usable.
        and `TypeError` if `value` cannot be encoded (nothing is sent: answer
        again or let the asker time out).
        """
        if self._ask_id is None or self._replied:
            return
        item = encoder.encode(ReplyOut(self._ask_id, value))
        # The limit of the path back to the asker (a channel's is the smaller
        # of both ends'), checked here so an answer too large for it fails
        # this ask alone instead of the return half.
        limit = self._mailbox._back_limit(self.sender, self._route)
        if len(item) > limit:
            err = MessageTooLarge(f"the reply of {len(item)} bytes exceeds the message "
                                  f"size limit toward {self.sender!r} ({limit} bytes for "
                                  "a reply)")
            await self._fail("MessageTooLarge", str(err))
            raise err
        await self._send(item)

    async def _fail(self, type_name: str, message: str) -> None:
        """Answer an ask with a failure (raised as `RemoteError` by the asker)."""
        if self._ask_id is None or self._replied:
            return
        # Cut the message so that the failure itself fits the path back.
        room = min(4096, self._mailbox._back_limit(self.sender, self._route) - 64)
        message = message.encode()[:max(0, room)].decode(errors="ignore")
        await self._send(encoder.encode(Fail(self._ask_id, type_name, message)))

    async def _send(self, item: bytes) -> None:
        self._replied = True
        route = self._route
        assert route is not None
        route.answered()
        await self._mailbox._send_back(self.sender, route, item)

    def __repr__(self) -> str:
        kind = "ask" if self.is_ask else "tell"
        return f"<Envelope {kind} from {self.sender!r}: {self.body!r}>"


class TypedMailbox(Generic[T]):
    """`client.mailbox.typed(T)`: an async iterator of `Envelope[T]`."""

    __slots__ = ("_decoder", "_mailbox", "_type")

    def __init__(self, mailbox: Mailbox, typ: Any) -> None:
        self._mailbox = mailbox
        self._type = typ
        self._decoder = _decoder_for(typ)

    def __aiter__(self) -> TypedMailbox[T]:
        return self

    async def __anext__(self) -> Envelope[T]:
        env = await self._mailbox._next(self._decoder, self._type)
        if env is None:
            raise StopAsyncIteration
        return cast(Envelope[T], env)


class Mailbox:
    """The mailbox component of a `Client` (`client.mailbox`).

    Iterate it (``async for envelope in client.mailbox``) to read what other
    clients told or asked this one; it ends when the client closes. Use
    `typed(T)` to decode bodies as ``T``. `tell` and `ask` are also available
    on the client itself.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._session = secrets.randbits(63)
        self._pairs: dict[str, _Pair] = {}
        self._pending: dict[int, tuple[str, asyncio.Future[msgspec.Raw]]] = {}
        self._ask_ids = itertools.count(1)
        self._inbox = _Inbox(self._resume_reading)
        self._senders: dict[str, _Sender] = {}
        self._in_routes: set[_InRoute] = set()
        self._closed = False
        #: close() is delivering what tell() accepted: no new tells.
        self._draining = False
        client._router.handlers[PURPOSE] = self._on_stream

    # -- sending ------------------------------------------------------------------

    async def tell(self, peer: str, msg: Any) -> None:
        """Send `msg` (bytes or any msgspec-encodable value) to `peer`.

        Returns once the message is queued; waits while the queue toward
        `peer` is full, and for the first tell to a peer until its mailbox
        stream has opened. Raises `NoSuchPeer` if `peer` is not connected (or
        its route was found dead), `MessageTooLarge` if the encoded message
        exceeds the pair's size limit (the smallest of both clients' and, when
        proxied, the Coordinator's), `ClientClosed` once the client closes.
        """
        item = encoder.encode(TellOut(msg))
        pair = self._pair_for(peer, item)
        if not self._put_nowait(pair, item):
            await self._put(pair, item)

    async def ask(self, peer: str, msg: Any, timeout: float | None = 5.0, *,
                  reply_type: Any = None) -> Any:
        """Send `msg` to `peer` and wait for its answer (`Envelope.reply`).

        Raises the builtin `TimeoutError` after `timeout` seconds (None: no
        limit), `RemoteError` if the receiver failed to answer (an `Actor`
        whose `receive` raised), `NoSuchPeer`, `MessageTooLarge`,
        `ClientClosed`. The answer is decoded as builtins, or as `reply_type`
        (`DecodeError` if it does not decode). Cancelled, the ask forgets its
        reply slot; an answer that comes later is dropped.
        """
        deadline = None if timeout is None else self._loop.time() + timeout
        ask_id = next(self._ask_ids)
        item = encoder.encode(AskOut(ask_id, float(timeout or 0.0), msg))
        pair = self._pair_for(peer, item)
        fut: asyncio.Future[msgspec.Raw] = self._loop.create_future()
        self._pending[ask_id] = (peer, fut)
        timer: asyncio.TimerHandle | None = None
        try:
            if not self._put_nowait(pair, item):
                # The first message to a peer, or a full queue: wait for it
                # within the timeout too.
                async with asyncio.timeout_at(deadline):
                    await self._put(pair, item)
            if deadline is not None:
                # Not a timeout scope (cheaper): one timer fails the reply
                # future with TimeoutError at the deadline.
                timer = self._loop.call_at(deadline, _time_out, fut)
            raw = await fut
        finally:
            self._pending.pop(ask_id, None)
            if timer is not None:
                timer.cancel()
        try:
            return _decoder_for(reply_type).decode(raw)
        except wire.DECODE_ERRORS as exc:
            raise DecodeError(f"the answer from {peer!r} does not decode as "
                              f"{reply_type!r}: {exc}") from None

    def _pair_for(self, peer: str, item: bytes) -> _Pair:
        """Check a message to `peer`; the pair toward it, created (with its
        writer) on first use."""
        self._check_open()
        pair = self._pairs.get(peer)
        _check_size(peer, item, self._client.max_message_size if pair is None else pair.limit)
        if pair is not None and pair.dead is not None:
            # The route is known dead: say so once, then start afresh.
            del self._pairs[peer]
            raise _copy_error(pair.dead)
        if pair is None:
            if not is_valid_id(peer):
                raise NoSuchPeer(f"no client {peer!r} is connected (not a valid id)")
            pair = _Pair(peer, self._loop, self._client.max_message_size)
            self._pairs[peer] = pair
            pair.writer = self._loop.create_task(self._write(pair))
        return pair

    def _put_nowait(self, pair: _Pair, item: bytes) -> bool:
        """Send `item` if that needs no waiting: the queue has room and the
        route is open. False, doing nothing: the caller awaits `_put`."""
        if pair.full() or not pair.routed.done():
            return False
        # The fast path: on an idle line, write the frame now instead of
        # waking the writer to do the same one loop turn later.
        if not self._write_now(pair, item):
            self._queue(pair, item)
        return True

    async def _put(self, pair: _Pair, item: bytes) -> None:
        """Queue `item`: for the first messages to a peer, once the route has
        opened (which tells the pair's size limit); while the queue is full,
        once there is room."""
        if not pair.routed.done():
            try:
                await asyncio.shield(pair.routed)
            except ConecError as exc:
                raise _copy_error(exc) from None
            _check_size(pair.peer, item, pair.limit)
        while pair.full():
            await pair.putters.wait()
            if pair.dead is not None:
                raise _copy_error(pair.dead)
        self._check_open()
        if pair.dead is not None:
            raise _copy_error(pair.dead)
        self._queue(pair, item)

    @staticmethod
    def _queue(pair: _Pair, item: bytes) -> None:
        pair.queue.append((pair.next_seq, item))
        pair.next_seq += 1
        pair.queued_bytes += len(item)
        pair.wake.set()

    def _write_now(self, pair: _Pair, item: bytes) -> bool:
        """The fast path of an idle line: write `item` in a frame of its own at
        once, without waking the writer (one task hop and one loop turn less
        per message). Only when that is what the writer would do: nothing is
        queued or in flight, the route is open on the current path (no fence,
        reopen or resend due) and the stream has nothing unsent (so a busy
        line still queues and coalesces). False: queue `item` instead."""
        route = pair.stream
        if (pair.queue or not pair.idle or route is None or route.broken
                or (route.kind == "direct") != self._has_channel(pair.peer)):
            return False
        data = encode_batch(self._session, pair.next_seq, [item])
        if not _write_idle(route.send, data):
            return False
        pair.unacked.append((pair.next_seq, item))
        pair.next_seq += 1
        pair.frames += 1
        pair.messages += 1
        return True

    def _check_open(self) -> None:
        if self._closed or self._draining:
            raise self._client._closed_error()

    def _has_channel(self, peer: str) -> bool:
        ch = self._client._channels.get(peer)
        return ch is not None and ch.link is not None and not ch.link.closed.done()

    async def _write(self, pair: _Pair) -> None:
        """The pair's writer: drain the queue into batches on the current route.

        It ends by itself once the pair is dead (not by cancellation, which
        could drop a stream the client has just opened for it)."""
        try:
            while pair.dead is None:
                # (A new pair opens its route at once: the first tells wait
                # for it, and learn the pair's size limit from it.)
                while pair.dead is None and pair.routed.done() and not pair.queue \
                        and not pair.draining \
                        and not (pair.stream is not None and pair.stream.broken):
                    pair.wake.clear()
                    pair.idle = True
                    try:
                        await pair.wake.wait()
                    finally:
                        pair.idle = False
                if pair.dead is not None:
                    return
                if pair.draining and not pair.queue and not pair.unacked and (
                        pair.stream is None or pair.stream.broken):
                    return  # closing, and nothing is left to deliver
                route = await self._ensure_route(pair)
                if pair.queue and not route.broken:
                    await self._send_batch(pair, route, from_queue=True)
                elif pair.draining and not pair.queue and not route.broken:
                    # Closing: everything is sent; finish the stream and wait
                    # until the receiver consumed it (a break reopens and
                    # resends, then fences again).
                    await self._fence(route)
                    if not route.broken:
                        return
        except ConecError as exc:
            if pair.dead is None:
                self._kill(pair, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: do not leave tellers hanging
            log.exception("mailbox writer toward %r failed", pair.peer)
            self._kill(pair, NoSuchPeer(f"the mailbox route to {pair.peer!r} failed: {exc}"))

    async def _send_batch(self, pair: _Pair, route: _Route, *, from_queue: bool,
                          resend: deque[tuple[int, bytes]] | None = None) -> None:
        """Pack queued (or resent) items into one frame within the size limits."""
        src = pair.queue if from_queue else resend
        assert src is not None
        hard = min(self._client.max_message_size, route.send._core.max_message_size)
        soft = min(BATCH_BYTES, hard)
        items: list[bytes] = []
        size = BATCH_OVERHEAD
        seq0 = src[0][0]
        while src:
            seq, data = src[0]
            if items and size + len(data) > soft:
                break
            src.popleft()
            items.append(data)
            size += len(data)
            if from_queue:
                pair.queued_bytes -= len(data)
                pair.unacked.append((seq, data))
        if from_queue and not pair.full():
            pair.putters.wake()
        try:
            await route.send.send(encode_batch(self._session, seq0, items))
        except StreamReset:
            route.broken = True  # the items stay unacknowledged: resent on reopen
            return
        except MessageTooLarge as exc:
            # Only a message accepted before the pair learnt a smaller limit
            # gets here (`_put` checks the first ones once the route is open).
            log.warning("mailbox: dropped a message to %r: %s", pair.peer, exc)
            with contextlib.suppress(ValueError):
                pair.unacked.remove((seq0, items[0]))
            self._fail_ask_item(items[0], exc)
            return
        except StreamClosed:
            route.broken = True
            return
        pair.frames += 1
        pair.messages += len(items)

    def _fail_ask_item(self, item: bytes, exc: ConecError) -> None:
        with contextlib.suppress(Exception):
            decoded = msgspec.msgpack.decode(item)
            if isinstance(decoded, list) and decoded and decoded[0] == 1:
                entry = self._pending.get(int(decoded[1]))
                if entry is not None and not entry[1].done():
                    entry[1].set_exception(MessageTooLarge(str(exc)))

    async def _ensure_route(self, pair: _Pair) -> _Route:
        """The current route, fenced, reopened or resent as the path requires."""
        while True:
            if pair.dead is not None:
                raise pair.dead
            route = pair.stream
            want_direct = self._has_channel(pair.peer)
            if route is not None and not route.broken:
                if (route.kind == "direct") == want_direct:
                    return route
                await self._fence(route)
                pair.stream = None
                if not route.broken:
                    continue
            if route is not None:  # broken: count it unless it had settled
                pair.stream = None
                lived = self._loop.time() - route.opened_at
                if not route.progress and lived < ROUTE_SETTLED:
                    pair.failures += 1
                    if pair.failures >= REOPEN_ATTEMPTS:
                        raise NoSuchPeer(f"the mailbox route to {pair.peer!r} keeps failing")
                    await asyncio.sleep(0.05 * pair.failures)
            route = await self._open(pair, want_direct)
            if pair.dead is not None:  # closed meanwhile
                raise pair.dead
            pair.limit = min(pair.limit, route.send._core.max_message_size)
            pair.stream = route
            if not pair.routed.done():
                pair.routed.set_result(None)
            # Resend what the receiver may not have consumed; it drops what
            # it already has.
            resend = deque(pair.unacked)
            while resend and not route.broken:
                await self._send_batch(pair, route, from_queue=False, resend=resend)

    async def _open(self, pair: _Pair, direct: bool) -> _Route:
        while True:
            if pair.dead is not None:
                raise pair.dead
            try:
                if direct:
                    try:
                        send, recv = await self._client._open_direct(pair.peer, None, PURPOSE)
                    except NoChannel:
                        direct = False
                        continue
                else:
                    send, recv = await self._client._open_proxied(pair.peer, None, PURPOSE)
            except (NoSuchPeer, ClientClosed):
                raise
            except ConecError as exc:
                pair.failures += 1
                if pair.failures >= REOPEN_ATTEMPTS:
                    raise NoSuchPeer(f"cannot open a mailbox stream to {pair.peer!r}: "
                                     f"{exc}") from None
                await asyncio.sleep(0.05 * pair.failures)
                continue
            route = _Route("direct" if direct else "proxied", send, recv, self._loop.time())
            recv._core.on_wake = functools.partial(self._read_replies, pair, route)
            self._read_replies(pair, route)
            return route

    async def _fence(self, route: _Route) -> None:
        """Finish `route` and wait until the receiver consumed all of it."""
        route.finishing = True
        try:
            await route.send.finish()
        except (StreamReset, StreamClosed):
            route.broken = True
            return
        await route.drained.wait()

    def _read_replies(self, pair: _Pair, route: _Route) -> None:
        """Read the return half of an outgoing stream: the stream's `on_wake`,
        so answers reach their asks without a reader task in between."""
        core = route.recv._core
        try:
            while (frame := core.recv_nowait()) is not None:
                batch = decode_batch(frame)
                route.progress = True
                pair.failures = 0
                for item in batch.items:
                    if isinstance(item, Reply):
                        entry = self._pending.get(item.id)
                        if entry is not None and not entry[1].done():
                            entry[1].set_result(item.body)
                    elif isinstance(item, Fail):
                        entry = self._pending.get(item.id)
                        if entry is not None and not entry[1].done():
                            entry[1].set_exception(RemoteError(item.type_name, item.message))
                    elif isinstance(item, Ack):
                        while pair.unacked and pair.unacked[0][0] <= item.seq:
                            pair.unacked.popleft()
                    elif isinstance(item, Drained):
                        route.drained.set()
                    else:
                        raise ProtocolError("a tell or ask on the return half")
            if core.recv_error is not None:
                route.broken = True
            elif core.recv_fin:
                if not route.finishing:
                    route.broken = True
            else:
                return  # more to come
        except Exception as exc:  # not into the connection's callbacks
            _log_failure(exc, f"mailbox stream to {pair.peer!r}")
            core.on_wake = None
            core.fail_local(wire.Code.PROTOCOL, str(exc))
            route.broken = True
        core.on_wake = None
        route.drained.set()
        if pair.stream is route:
            pair.wake.set()

    def _kill(self, pair: _Pair, exc: ConecError) -> None:
        """The route to `pair.peer` is dead: fail whoever waits on it."""
        if not isinstance(exc, NoSuchPeer | ClientClosed):
            exc = NoSuchPeer(f"the mailbox route to {pair.peer!r} failed: {exc}")
        pair.dead = exc
        if not pair.routed.done():
            pair.routed.set_exception(exc)
            pair.routed.exception()
            # Never routed: the next tell tries again from scratch.
            if self._pairs.get(pair.peer) is pair:
                del self._pairs[pair.peer]
        pair.queue.clear()
        pair.unacked.clear()
        pair.queued_bytes = 0
        pair.putters.wake()
        pair.wake.set()
        route = pair.stream
        if route is not None:
            route.recv._core.on_wake = None
            route.drained.set()  # a writer fencing it goes on, and ends
        for peer, fut in list(self._pending.values()):
            if peer == pair.peer and not fut.done():
                fut.set_exception(_copy_error(exc))
                fut.exception()  # the ask may already be raising another error

    # -- receiving ------------------------------------------------------------------

    def _on_stream(self, inc: IncomingStream) -> bool:
        """Router callback for an incoming mailbox stream."""
        if self._closed or len(self._in_routes) >= MAX_MAILBOX_STREAMS:
            return False
        r = _InRoute(inc)
        self._in_routes.add(r)
        sender = self._senders.get(inc.peer)
        if sender is None:
            sender = self._senders[inc.peer] = _Sender()
        if sender.expiry is not None:
            sender.expiry.cancel()
            sender.expiry = None
        sender.routes.append(r)
        r.writer = self._loop.create_task(self._write_back(sender, r))
        inc.recv._core.on_wake = functools.partial(self._read_in, sender, r)
        self._read_in(sender, r)  # what came with the header
        return True

    def _read_in(self, sender: _Sender, r: _InRoute) -> None:
        """Move a stream's envelopes into the inbox, dropping resent ones.

        The stream's `on_wake`: it runs as frames arrive, so an envelope
        reaches the inbox (and wakes its reader) without a reader task in
        between. When the inbox is full it stops mid-batch and leaves the rest
        unread in the stream (flow control then holds the sender back);
        `_Inbox.get` resumes it once there is room."""
        if not r.reading or r.in_progress:
            return
        inbox = self._inbox
        core = r.recv._core
        r.in_progress = True
        try:
            while True:
                batch = r.batch
                if batch is None:
                    frame = core.recv_nowait()
                    if frame is None:
                        break
                    batch = r.batch = decode_batch(frame)
                    r.next_item = 0
                    if sender.session != batch.session:  # a new sender instance
                        sender.session = batch.session
                        sender.last = batch.seq - 1
                items = batch.items
                while r.next_item < len(items):
                    if inbox.ended:
                        return
                    if inbox.full():
                        if not r.wait_room:
                            r.wait_room = True
                            inbox.wait_room.append(r)
                        return
                    item = items[r.next_item]
                    if not isinstance(item, _FORWARD):
                        raise ProtocolError(f"{type(item).__name__} on a forward half")
                    seq = batch.seq + r.next_item
                    if seq > sender.last:
                        sender.last = seq
                        if isinstance(item, Ask):
                            r.pending_asks += 1
                            hold = item.timeout if item.timeout > 0 else ASK_HOLD_MAX
                            r.hold_until = max(r.hold_until, self._loop.time() + hold)
                            inbox.put(_Delivered(r.peer, item.body, item.id, r))
                        else:
                            inbox.put(_Delivered(r.peer, item.body, None, r))
                    r.next_item += 1
                r.batch = None
                r.consumed += len(items)
                if r.consumed >= ACK_EVERY:
                    r.consumed = 0
                    r.ack_to = sender.last
                    r.wake.set()
            if core.recv_error is not None:
                r.reading = False
                core.on_wake = None
                self._route_gone(sender, r)
            elif core.recv_fin:
                # The clean end: everything was consumed, answer the fence.
                r.reading = False
                core.on_wake = None
                r.ended = True
                if sender.session is not None:
                    r.ack_to = sender.last
                r.drained = True
                r.wake.set()
                if r.pending_asks > 0:
                    r.hold = self._loop.call_later(
                        max(0.0, r.hold_until - self._loop.time()), self._give_up_asks, r)
        except Exception as exc:  # not into the connection's callbacks
            _log_failure(exc, f"mailbox stream from {r.peer!r}")
            r.reading = False
            core.on_wake = None
            core.fail_local(wire.Code.PROTOCOL, str(exc))
            self._route_gone(sender, r)
        finally:
            r.in_progress = False

    def _resume_reading(self, r: _InRoute) -> None:
        sender = self._senders.get(r.peer)
        if sender is not None and r in sender.routes:
            self._read_in(sender, r)

    @staticmethod
    def _give_up_asks(r: _InRoute) -> None:
        r.pending_asks = 0
        r.wake.set()

    async def _write_back(self, sender: _Sender, r: _InRoute) -> None:
        """Send replies, acks and the fence answer on a stream's return half;
        finish it once the forward half ended and its asks are answered."""
        try:
            while True:
                while not (r.back or r.ack_to is not None or r.drained
                           or (r.ended and r.pending_asks <= 0)):
                    r.wake.clear()
                    r.idle = True
                    try:
                        await r.wake.wait()
                    finally:
                        r.idle = False
                # Within the return half's limit (a channel's may be smaller
                # than this client's); what does not fit goes in the next frame.
                hard = r.send._core.max_message_size
                soft = min(BATCH_BYTES, hard)
                items: list[bytes] = []
                size = BATCH_OVERHEAD
                while r.back and (not items or size + len(r.back[0]) <= soft):
                    item = r.back.popleft()
                    items.append(item)
                    size += len(item)
                r.back_putters.wake()
                if r.ack_to is not None:
                    ack = encoder.encode(Ack(r.ack_to))
                    if not items or size + len(ack) <= hard:
                        items.append(ack)
                        size += len(ack)
                        r.ack_to = None
                if r.drained and (not items or size + len(DRAINED) <= hard):
                    items.append(DRAINED)
                    r.drained = False
                if items:
                    await r.send.send(encode_batch(self._session, 0, items))
                if (r.ended and r.pending_asks <= 0 and not r.back and r.ack_to is None
                        and not r.drained):
                    await r.send.finish()
                    break
        except (StreamReset, StreamClosed):
            pass
        finally:
            r.back_open = False
            r.back.clear()
            r.back_putters.wake()
            if r.hold is not None:
                r.hold.cancel()
            self._route_gone(sender, r)

    def _route_gone(self, sender: _Sender, r: _InRoute) -> None:
        if r.reading:  # the return half failed: give up the forward half too
            r.reading = False
            r.recv._core.on_wake = None
        if r.writer is not None and not r.writer.done() and r.writer is not \
                asyncio.current_task():
            r.writer.cancel()
        if r in self._in_routes:
            self._in_routes.discard(r)
            with contextlib.suppress(ValueError):
                sender.routes.remove(r)
            if not sender.routes and self._senders.get(r.peer) is sender:
                sender.expiry = self._loop.call_later(SENDER_TTL, self._forget_sender,
                                                      r.peer, sender)

    def _forget_sender(self, peer: str, sender: _Sender) -> None:
        if self._senders.get(peer) is sender and not sender.routes:
            del self._senders[peer]

    def _route_back(self, peer: str, route: _InRoute) -> _InRoute | None:
        """The ask's stream if its return half is open, else the newest open
        stream from the same peer, else None."""
        if route.back_open:
            return route
        sender = self._senders.get(peer)
        open_routes = [r for r in sender.routes if r.back_open] if sender else []
        return open_routes[-1] if open_routes else None

    def _back_limit(self, peer: str, route: _InRoute | None) -> int:
        """Room for one reply item toward `peer` on the path back."""
        back = self._route_back(peer, route) if route is not None else None
        limit = self._client.max_message_size
        if back is not None:
            limit = min(limit, back.send._core.max_message_size)
        return limit - BATCH_OVERHEAD

    async def _send_back(self, peer: str, route: _InRoute, item: bytes) -> None:
        """Queue a reply on the ask's stream, or on the newest open stream from
        the same peer if that one has closed; dropped if there is none."""
        if self._closed:
            raise self._client._closed_error()
        back = self._route_back(peer, route)
        if back is None:
            log.debug("mailbox: no stream back to %r; reply dropped", peer)
            return
        route = back
        # The fast path of an idle return half (see `_write_now`): nothing
        # queued or pending for its writer, nothing unsent: write at once.
        if (route.idle and not route.back and route.ack_to is None and not route.drained
                and _write_idle(route.send, encode_batch(self._session, 0, [item]))):
            return
        while len(route.back) >= BACK_QUEUE_ITEMS and route.back_open:
            await route.back_putters.wait()
        if route.back_open:
            route.back.append(item)
            route.wake.set()

    async def _next(self, decoder: msgspec.msgpack.Decoder[Any], typ: Any
                    ) -> Envelope[Any] | None:
        """The next envelope that decodes, or None at the end."""
        while True:
            d = await self._inbox.get()
            if d is None:
                return None
            try:
                body = decoder.decode(d.body)
            except wire.DECODE_ERRORS as exc:
                what = getattr(typ, "__name__", repr(typ))
                log.warning("mailbox: skipped a message from %r that does not decode as "
                            "%s: %s", d.sender, what, exc)
                env: Envelope[Any] = Envelope(d.sender, None, d.ask_id, d.route, self)
                if d.ask_id is not None and not self._closed:
                    await env._fail("DecodeError", f"the message does not decode as {what}: "
                                                   f"{exc}")
                continue
            return Envelope(d.sender, body, d.ask_id, d.route, self)

    # -- user-facing reading -----------------------------------------------------------

    def __aiter__(self) -> Mailbox:
        return self

    async def __anext__(self) -> Envelope[Any]:
        env = await self._next(any_decoder, None)
        if env is None:
            raise StopAsyncIteration
        return env

    @overload
    def typed(self, typ: type[T]) -> TypedMailbox[T]: ...
    @overload
    def typed(self, typ: Any) -> TypedMailbox[Any]: ...

    def typed(self, typ: Any) -> TypedMailbox[Any]:
        """An async iterator of envelopes whose bodies are decoded as `typ` (a
        msgspec Struct, dataclass or builtin type). An envelope that does not
        decode is skipped with a warning in the log; an ask among them is
        answered with ``RemoteError("DecodeError", ...)``."""
        return TypedMailbox(self, typ)

    # -- figures --------------------------------------------------------------------------

    def frames_sent(self, peer: str) -> int:
        """Mailbox frames sent to `peer` so far (each carries one or more messages)."""
        pair = self._pairs.get(peer)
        return pair.frames if pair is not None else 0

    def messages_sent(self, peer: str) -> int:
        """Tells and asks sent to `peer` so far, as they went on the wire
        (a message resent after a broken path counts again)."""
        pair = self._pairs.get(peer)
        return pair.messages if pair is not None else 0

    def route(self, peer: str) -> str | None:
        """The path of the mailbox stream to `peer`: ``"direct"``,
        ``"proxied"``, or None while there is none (never told, or between
        paths)."""
        pair = self._pairs.get(peer)
        if pair is None or pair.stream is None or pair.stream.broken:
            return None
        return pair.stream.kind

    @property
    def pending_asks(self) -> int:
        """Asks waiting for their answer."""
        return len(self._pending)

    # -- the end ----------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Deliver every tell and ask already accepted, then return (within
        `timeout` seconds whatever the receivers do); refuse new ones with
        `ClientClosed`. Called by `Client.close` before it closes."""
        if self._closed or self._draining:
            return
        self._draining = True
        writers: list[asyncio.Task[None]] = []
        for pair in self._pairs.values():
            if pair.dead is None and pair.writer is not None and not pair.writer.done():
                pair.draining = True
                pair.wake.set()
                writers.append(pair.writer)
        if writers:
            await asyncio.wait(writers, timeout=timeout)

    def end_inbox(self) -> None:
        """Nothing more can arrive: readers get what is queued, then the end."""
        self._inbox.end()

    def close(self) -> None:
        """End the mailbox (called by `Client` when it closes)."""
        if self._closed:
            return
        self._closed = True
        self._client._router.handlers.pop(PURPOSE, None)
        self._inbox.end()
        err = self._client._closed_error()
        for pair in list(self._pairs.values()):
            self._kill(pair, err)
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._client._closed_error())
                fut.exception()
        for r in list(self._in_routes):
            r.reading = False
            r.recv._core.on_wake = None
            if r.writer is not None:
                r.writer.cancel()
            if r.hold is not None:
                r.hold.cancel()
            r.back_open = False
            r.back_putters.wake()
        self._in_routes.clear()
        for sender in self._senders.values():
            if sender.expiry is not None:
                sender.expiry.cancel()
        self._senders.clear()


__all__ = ["Envelope", "Mailbox", "TypedMailbox"]
