"""The receiving side's driver: incoming mailbox streams into the inbox.

Every incoming mailbox stream (`InRoute`, an `InboundLog`) is read from the
stream's wake-up callback (no reader task in between) into one bounded inbox;
when the inbox is full, reading stops mid-batch and the rest stays unread in
the stream (flow control then holds the sender back) until the inbox has room.
One writer task per stream sends replies, acknowledgements and the fence
answer on its return half.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict, deque
from collections.abc import Callable

import msgspec

from ..._util import EndableQueue, Waiters
from ...errors import ProtocolError, StreamClosed, StreamReset
from ...streams import IncomingStream
from ...wire import Code
from .host import MailboxHost
from .inbound import NO_DEADLINE, InboundLog, KnownSender, ask_deadline, expired
from .limits import (
    ANSWERS_KEPT,
    ANSWERS_KEPT_BYTES,
    BACK_QUEUE_ITEMS,
    INBOX_BYTES,
    INBOX_ITEMS,
    MAX_MAILBOX_STREAMS,
    SENDER_TTL,
)
from .state import RecvEvent, RecvState
from .streamio import log_failure, write_idle
from .wire import BATCH_OVERHEAD, Ask, Tell, decode_batch, encode_batch

log = logging.getLogger(__name__)

_FORWARD = (Tell, Ask)
_READING = RecvState.READING
_CLOSED = RecvState.CLOSED


class InRoute(InboundLog):
    """One incoming mailbox stream: the reading state of its forward half and
    the writer of its return half."""

    __slots__ = ("back_putters", "hold", "idle", "in_progress", "on_read_end", "peer", "recv",
                 "send", "wait_room", "wake", "writer")

    def __init__(self, inc: IncomingStream, on_read_end: Callable[[str], None]) -> None:
        super().__init__()
        #: Called with the peer once the forward half stops being read.
        self.on_read_end = on_read_end
        self.peer = inc.peer
        self.send = inc.send
        self.recv = inc.recv
        self.back_putters = Waiters()
        self.wake = asyncio.Event()
        self.hold: asyncio.TimerHandle | None = None
        #: `Receiver._read_in` is running (it may be re-entered through the stream).
        self.in_progress = False
        #: Queued in `Inbox.wait_room`.
        self.wait_room = False
        self.writer: asyncio.Task[None] | None = None
        #: True while the return half's writer waits with nothing to do.
        self.idle = False

    def handle(self, event: RecvEvent) -> None:
        reading = self.state is _READING
        super().handle(event)
        if reading and self.state is not _READING:
            self.on_read_end(self.peer)


class _SenderRecord(KnownSender):
    """A `KnownSender` with its open streams and the timer that forgets it."""

    __slots__ = ("answers", "answers_bytes", "expiry", "routes")

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[InRoute] = []
        self.expiry: asyncio.TimerHandle | None = None
        #: ask id -> its answer, the latest `ANSWERS_KEPT` (and at most
        #: `ANSWERS_KEPT_BYTES`): an ask the sender sends again after a broken
        #: stream (its answer may have been lost with it) is answered again.
        self.answers: OrderedDict[int, bytes] = OrderedDict()
        self.answers_bytes = 0

    def keep_answer(self, ask_id: int, item: bytes) -> None:
        answers = self.answers
        old = answers.pop(ask_id, None)
        if old is not None:
            self.answers_bytes -= len(old)
        answers[ask_id] = item
        self.answers_bytes += len(item)
        while answers and (len(answers) > ANSWERS_KEPT
                           or self.answers_bytes > ANSWERS_KEPT_BYTES):
            _, dropped = answers.popitem(last=False)
            self.answers_bytes -= len(dropped)


class Delivered:
    """An envelope in the inbox, body still encoded; an ask's `deadline` is
    on this client's loop clock (`NO_DEADLINE` for a tell)."""

    __slots__ = ("ask_id", "body", "deadline", "route", "sender")

    def __init__(self, sender: str, body: msgspec.Raw, ask_id: int | None,
                 route: InRoute, deadline: float) -> None:
        self.sender = sender
        self.body = body
        self.ask_id = ask_id
        self.route = route
        self.deadline = deadline


def _body_size(d: Delivered) -> int:
    return len(d.body)


class Inbox(EndableQueue[Delivered]):
    """The bounded queue behind `client.mailbox` (items and body bytes), which
    resumes the incoming streams that stopped on it when it has room again."""

    __slots__ = ("resume", "wait_room")

    def __init__(self, resume: Callable[[InRoute], None]) -> None:
        super().__init__(INBOX_ITEMS, INBOX_BYTES, weigh=_body_size)
        #: Incoming streams whose reading stopped on a full inbox, and what
        #: goes on reading one of them.
        self.wait_room: deque[InRoute] = deque()
        self.resume = resume

    async def get(self) -> Delivered | None:
        d = await super().get()
        while self.wait_room and not self.full():
            r = self.wait_room.popleft()
            r.wait_room = False
            self.resume(r)
        return d

    def end(self) -> None:
        super().end()
        self.wait_room.clear()


class Receiver:
    """The receiving half of the mailbox."""

    def __init__(self, host: MailboxHost, loop: asyncio.AbstractEventLoop,
                 session: int) -> None:
        self._host = host
        self._loop = loop
        self._session = session
        self.inbox = Inbox(self._resume_reading)
        self._senders: dict[str, _SenderRecord] = {}
        self._in_routes: set[InRoute] = set()
        #: The return halves' writers (including those of routes already gone).
        self._writers: set[asyncio.Task[None]] = set()
        self.closed = False
        #: Asks handed out by the mailbox and not answered yet (the load a
        #: group member reports; an ask never answered stays counted).
        self.asks_taken = 0
        #: Called with a peer when no mailbox stream from it is read any more
        #: (what death watch waits for before giving a verdict).
        self.on_read_end: Callable[[str], None] | None = None

    def on_stream(self, inc: IncomingStream) -> bool:
        """The host's callback for an incoming mailbox stream."""
        if self.closed or len(self._in_routes) >= MAX_MAILBOX_STREAMS:
            return False
        r = InRoute(inc, self._read_end)
        self._in_routes.add(r)
        sender = self._senders.get(inc.peer)
        if sender is None:
            sender = self._senders[inc.peer] = _SenderRecord()
        if sender.expiry is not None:
            sender.expiry.cancel()
            sender.expiry = None
        sender.routes.append(r)
        r.writer = writer = self._loop.create_task(self._write_back(sender, r))
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)
        inc.recv._core.on_wake = functools.partial(self._read_in, sender, r)
        self._read_in(sender, r)  # what came with the header
        return True

    def _read_in(self, sender: _SenderRecord, r: InRoute) -> None:
        """Move a stream's envelopes into the inbox, dropping resent ones.

        The stream's `on_wake`: it runs as frames arrive, so an envelope
        reaches the inbox (and wakes its reader) without a reader task in
        between. When the inbox is full it stops mid-batch and leaves the rest
        unread in the stream (flow control then holds the sender back);
        `Inbox.get` resumes it once there is room."""
        if r.state is not _READING or r.in_progress:
            return
        inbox = self.inbox
        core = r.recv._core
        r.in_progress = True
        try:
            while True:
                batch = r.batch
                if batch is None:
                    data = core.recv_nowait()
                    if data is None:
                        break
                    batch = r.batch = decode_batch(data)
                    r.next_item = 0
                    sender.begin_batch(batch.session, batch.seq)
                items = batch.items
                i = r.next_item
                # Items before this index were consumed already (resent after
                # a broken stream): dropped.
                fresh_from = sender.fresh_from(batch.seq)
                try:
                    while i < len(items):
                        if inbox.ended:
                            return
                        if inbox.full():
                            if not r.wait_room:
                                r.wait_room = True
                                inbox.wait_room.append(r)
                            return
                        item = items[i]
                        if not isinstance(item, _FORWARD):
                            raise ProtocolError(f"{type(item).__name__} on a forward half")
                        if i < fresh_from:
                            # Consumed already: sent again after a broken
                            # stream. An ask's answer may have been lost
                            # with that stream: answer it again.
                            if isinstance(item, Ask):
                                again = sender.answers.get(item.id)
                                if again is not None and r.state is not _CLOSED:
                                    r.back.append(again)
                                    r.wake.set()
                        elif isinstance(item, Ask):
                            now = self._loop.time()
                            deadline = ask_deadline(item.ttl_ms, now)
                            # One already expired is dropped here (its asker
                            # has given up): never delivered.
                            if not expired(deadline, now):
                                r.asked(item.timeout, now)
                                inbox.put(Delivered(r.peer, item.body, item.id, r, deadline))
                        else:
                            inbox.put(Delivered(r.peer, item.body, None, r, NO_DEADLINE))
                        i += 1
                finally:
                    r.next_item = i
                    sender.consumed(batch.seq + i - 1)
                if r.batch_done(len(items), sender):
                    r.wake.set()  # an Ack is due
            if core.recv_error is not None:
                r.handle(RecvEvent.FAIL)
                self._route_gone(sender, r)
            elif core.recv_fin:
                # The clean end: everything was consumed, answer the fence.
                core.on_wake = None
                r.clean_end(sender)
                r.wake.set()
                if r.pending_asks > 0:
                    r.hold = self._loop.call_later(
                        max(0.0, r.hold_until - self._loop.time()), self._give_up_asks, r)
        except Exception as exc:  # not into the connection's callbacks
            log_failure(exc, f"mailbox stream from {r.peer!r}")
            core.on_wake = None
            core.fail_local(Code.PROTOCOL, str(exc))
            if r.state is not _CLOSED:
                r.handle(RecvEvent.FAIL)
            self._route_gone(sender, r)
        finally:
            r.in_progress = False

    def _resume_reading(self, r: InRoute) -> None:
        sender = self._senders.get(r.peer)
        if sender is not None and r in sender.routes:
            self._read_in(sender, r)

    @staticmethod
    def drop_expired(d: Delivered) -> None:
        """The ask `d` expired in the inbox: it will not be answered."""
        log.debug("mailbox: dropped an ask from %r whose deadline passed", d.sender)
        if d.route.dropped():
            d.route.wake.set()  # the ended stream waited for this ask alone

    @staticmethod
    def _give_up_asks(r: InRoute) -> None:
        r.give_up_asks()
        r.wake.set()

    async def _write_back(self, sender: _SenderRecord, r: InRoute) -> None:
        """Send replies, acks and the fence answer on a stream's return half;
        finish it once the forward half ended and its asks are answered."""
        try:
            while True:
                while not r.has_work():
                    r.wake.clear()
                    r.idle = True
                    try:
                        await r.wake.wait()
                    finally:
                        r.idle = False
                # Within the return half's limit (a channel's may be smaller
                # than this client's); what does not fit goes in the next frame.
                items = r.cut_back(r.send._core.max_message_size)
                r.back_putters.wake()
                if items:
                    await r.send.send(encode_batch(self._session, 0, items))
                if r.can_finish():
                    await r.send.finish()
                    break
        except (StreamReset, StreamClosed):
            pass
        finally:
            r.handle(RecvEvent.BACK_DONE)
            r.back.clear()
            r.back_putters.wake()
            if r.hold is not None:
                r.hold.cancel()
            self._route_gone(sender, r)

    def _route_gone(self, sender: _SenderRecord, r: InRoute) -> None:
        """`r` is closed: stop reading it, end its writer, and forget the
        sender `SENDER_TTL` after its last stream."""
        r.recv._core.on_wake = None
        if r.writer is not None and not r.writer.done() and r.writer is not \
                asyncio.current_task():
            r.writer.cancel()
        if r in self._in_routes:
            self._in_routes.discard(r)
            try:
                sender.routes.remove(r)
            except ValueError:
                pass
            if not sender.routes and self._senders.get(r.peer) is sender:
                sender.expiry = self._loop.call_later(SENDER_TTL, self._forget_sender,
                                                      r.peer, sender)

    def _forget_sender(self, peer: str, sender: _SenderRecord) -> None:
        if self._senders.get(peer) is sender and not sender.routes:
            del self._senders[peer]

    def _read_end(self, peer: str) -> None:
        if self.on_read_end is not None and not self.reading_from(peer):
            self.on_read_end(peer)

    def reading_from(self, peer: str) -> bool:
        """Whether a mailbox stream from `peer` is still being read (its
        forward half has neither ended nor failed): what it brings is not all
        in the inbox yet."""
        sender = self._senders.get(peer)
        return sender is not None and any(r.state is _READING for r in sender.routes)

    # -- answers ---------------------------------------------------------------------

    def _route_back(self, peer: str, route: InRoute) -> InRoute | None:
        """The ask's stream if its return half is open, else the newest open
        stream from the same peer, else None."""
        if route.state is not _CLOSED:
            return route
        sender = self._senders.get(peer)
        open_routes = [r for r in sender.routes if r.state is not _CLOSED] if sender else []
        return open_routes[-1] if open_routes else None

    def back_limit(self, peer: str, route: InRoute | None) -> int:
        """Room for one reply item toward `peer` on the path back."""
        back = self._route_back(peer, route) if route is not None else None
        limit = self._host.max_message_size
        if back is not None:
            limit = min(limit, back.send._core.max_message_size)
        return limit - BATCH_OVERHEAD

    async def answer(self, peer: str, route: InRoute, item: bytes, ask_id: int) -> None:
        """Send the answer `item` to an ask read from `route`: on that stream,
        or on the newest open stream from the same peer if that one has
        closed; dropped if there is none."""
        if route.answered():
            route.wake.set()  # the ended stream waited for this answer only
        if self.closed:
            raise self._host.closed_error()
        sender = self._senders.get(peer)
        if sender is not None:
            sender.keep_answer(ask_id, item)
        back = self._route_back(peer, route)
        if back is None:
            log.debug("mailbox: no stream back to %r; reply dropped", peer)
            return
        route = back
        # The fast path of an idle return half: nothing queued or owed for
        # its writer, nothing unsent: write at once.
        if (route.idle and route.nothing_owed()
                and write_idle(route.send, encode_batch(self._session, 0, [item]))):
            return
        while len(route.back) >= BACK_QUEUE_ITEMS and route.state is not _CLOSED:
            await route.back_putters.wait()
        if route.state is not _CLOSED:
            route.back.append(item)
            route.wake.set()

    # -- the end -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading, cancel the return halves' writers (`wait_closed`
        awaits them), forget every sender."""
        self.closed = True
        self.inbox.end()
        for r in list(self._in_routes):
            if r.state is not _CLOSED:
                r.handle(RecvEvent.FAIL)
            r.recv._core.on_wake = None
            if r.hold is not None:
                r.hold.cancel()
            r.back_putters.wake()
        self._in_routes.clear()
        for writer in self._writers:
            writer.cancel()
        for sender in self._senders.values():
            if sender.expiry is not None:
                sender.expiry.cancel()
        self._senders.clear()

    async def wait_closed(self) -> None:
        while self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)
