"""Broadcast fan-out in the front-end.

Each member of a broadcast is one stream (a `MemberLeg`) from its client to the
front-end: the client sends its messages on it and receives every member's
messages, its own included, tagged with the sender's id. The broadcast
worker decides membership, counts, epochs and when a broadcast ends; the
front-end carries the payload and keeps the one order all members see (the
order in which it fans messages out).

Back-pressure: messages are fanned out only while every receiving member's
stream is below the (broadcast) high watermark of unsent bytes; otherwise
incoming data is held, uncredited, so the senders' QUIC windows (the
broadcast window) stop them. A reader that
stops reading throttles everyone (nothing is lost); one that closes its
stream or its client stops counting at once.

Partial messages: credit is granted only for bytes fanned out. A small
message (one that fits in three quarters of the smallest member window) is
kept here, uncredited, until it is whole, then fanned out. A larger one is
fanned out as it arrives: its pieces go to the readers as `PART` deliveries
and its last piece as an ordinary tagged message, which the reader joins
(`BroadcastInStream`); meanwhile no other member's message is fanned out
(the pieces of one message must not interleave with others), and after it
the members waiting take their turn. A member that goes away in the middle
of such a message leaves a `DROPPED` delivery, and the readers discard the
pieces. So a member costs the front-end at most its window, whatever it
announces.

Limits: a member's messages are checked against its own limit (the smaller
of its client's and the Coordinator's). A reader whose limit is smaller than
a message gets a `TOO_LARGE` notice instead (its `recv()` raises
`MessageTooLarge`, and the stream goes on): a legal message never resets
another member.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from .. import wire
from ..framing import HEADER_SIZE, FrameTooLarge, frame
from ..limits import effective_limit
from ..stream_state import BROADCAST_HIGH_WATER, BROADCAST_LOW_WATER, BROADCAST_WINDOW
from . import ipc
from .legs import Leg, Peer
from .session import State

#: How the hub reaches the broadcast worker that holds a name.
RequestBroadcast = Callable[[str, ipc.MakeRequest, ipc.ReplyCallback], None]

MAX_NAME = wire.MAX_BROADCAST_NAME
#: What the front-end lets its members' windows hold in all, split among the
#: members (each between MEMBER_WINDOW_MIN and BROADCAST_WINDOW): a message
#: held here waits for the slowest reader, behind what every member sent.
HOLD_BUDGET = 128 * 1024
MEMBER_WINDOW_MIN = 16 * 1024
#: Largest message kept here until whole. A window is raised once a quarter
#: of it was consumed, so 3/4 of the smallest window always has room for it
#: without any credit for the partial message.
BUFFER_MAX = MEMBER_WINDOW_MIN * 3 // 4 - HEADER_SIZE
_PART = wire.BROADCAST_PART
_DROPPED = frame(wire.BROADCAST_DROPPED)


class MemberIn:
    """What a member has sent that was not fanned out yet."""

    __slots__ = ("buf", "head", "held", "limit", "need", "queued", "streaming")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head = b""  # a length prefix not complete yet
        self.need = -1  # payload bytes still to come of the current message
        self.buf = bytearray()  # a small message's payload so far
        self.streaming = False  # the current message is fanned out as it comes
        #: chunks received and not processed (uncredited), in order
        self.held: deque[tuple[bytes, bool]] = deque()
        self.queued = False  # in its broadcast's `turns`

    @property
    def parked(self) -> int:
        """Bytes processed but not fanned out (not credited)."""
        if self.need < 0:
            return len(self.head)
        return 0 if self.streaming else HEADER_SIZE + len(self.buf)

    @property
    def at_boundary(self) -> bool:
        return self.need < 0 and not self.head


class MemberLeg(Leg):
    """A member's stream: what it sends is fanned out to every member's."""

    __slots__ = ("bcast", "bytes_out", "consumed", "member", "messages_in", "messages_out",
                 "pending", "pending_fin", "sending", "tag")

    def __init__(self, session: Peer, quic_id: int, base: int) -> None:
        super().__init__(session, quic_id, base)
        self.bcast: Broadcast | None = None  # once joined
        self.member = MemberIn(session.max_message_size)
        self.tag = wire.sender_tag(session.client_id or "")
        self.pending: list[bytes] = []  # data before the join is settled
        self.pending_fin = False
        self.sending = False
        self.consumed = 0  # bytes of its payload fanned out (or parked)
        self.messages_in = 0  # its messages fanned out
        self.bytes_out = self.messages_out = 0  # delivered to it

    def figures(self) -> tuple[int, int, int, int]:
        return (self.consumed, self.messages_in, self.bytes_out, self.messages_out)

    def data(self, data: bytes, fin: bool) -> None:
        if self.in_done:
            return
        bcast = self.bcast
        if bcast is None:
            if data:
                self.pending.append(data)
            self.pending_fin = self.pending_fin or fin
            return
        bcast.data(self, data, fin)

    def on_drain(self) -> None:
        """Its send buffer drained a bit."""
        if self.bcast is not None:
            self.bcast.drained(self)

    def reset(self, code: int) -> None:
        if self.bcast is None:
            super().reset(code)
            return
        self.bcast.hub.stop_sending(self)
        self.forget_if_done()

    def stopped(self, code: int) -> None:
        if self.bcast is None:
            super().stopped(code)
            return
        self.bcast.hub.stop_receiving(self)
        self.forget_if_done()

    def session_gone(self) -> None:
        if self.bcast is not None:
            self.bcast.hub.member_gone(self)


class Broadcast:
    """One broadcast's members and the messages waiting to go out."""

    def __init__(self, hub: BroadcastHub, name: str, epoch: int) -> None:
        self.hub = hub
        self.name = name
        self.epoch = epoch
        self.members: dict[MemberLeg, None] = {}  # insertion-ordered set
        self.receivers: dict[MemberLeg, None] = {}
        self.blocked_on: set[MemberLeg] = set()
        #: members with held data, each once, served one chunk at a time
        self.turns: deque[MemberLeg] = deque()
        #: the member whose large message is being fanned out piece by piece,
        #: and the readers it goes to (those present, and able, at its start)
        self.current: MemberLeg | None = None
        self.cur_receivers: dict[MemberLeg, None] = {}
        self.min_limit = 0  # the smallest message size limit among readers
        self.over = False
        self.window = BROADCAST_WINDOW

    # -- data --------------------------------------------------------------------

    def data(self, leg: MemberLeg, data: bytes, fin: bool) -> None:
        m = leg.member
        m.held.append((data, fin))
        if not m.queued and self.current is not leg:
            m.queued = True
            self.turns.append(leg)
        if not self.blocked_on:
            self.flush()

    def flush(self) -> None:
        """Fan out held data while no reader is blocked: the member in the
        middle of a large message first, else members in turn, one chunk
        each."""
        while not self.blocked_on and not self.over:
            leg = self.current
            if leg is not None:
                m = leg.member
                if not m.held:
                    return  # waiting for the rest of its message
            else:
                if not self.turns:
                    return
                leg = self.turns.popleft()
                m = leg.member
                m.queued = False
                if not m.held or leg.bcast is not self:
                    continue
            data, fin = m.held.popleft()
            self._process(leg, data, fin)
            if m.held and self.current is not leg and not m.queued and leg.bcast is self:
                m.queued = True
                self.turns.append(leg)

    def _process(self, leg: MemberLeg, data: bytes, fin: bool) -> None:
        m = leg.member
        if not leg.sending:
            return
        hub = self.hub
        tag = leg.tag
        out: list[bytes] = []  # whole deliveries for every reader, in order
        msgs = 0
        nbytes = 0
        pos = 0
        n = len(data)
        while pos < n or m.need == 0:  # (an empty message needs no byte)
            need = m.need
            if need < 0:
                if not m.head and n - pos >= HEADER_SIZE:
                    size = int.from_bytes(data[pos:pos + HEADER_SIZE], "big")
                    pos += HEADER_SIZE
                else:
                    take = min(HEADER_SIZE - len(m.head), n - pos)
                    m.head += data[pos:pos + take]
                    pos += take
                    if len(m.head) < HEADER_SIZE:
                        break
                    size = int.from_bytes(m.head, "big")
                    m.head = b""
                if size > m.limit:
                    hub.abort_member(leg, wire.Code.MESSAGE_TOO_LARGE,
                                          str(FrameTooLarge(size, m.limit)))
                    return
                m.need = size
                if size > BUFFER_MAX:
                    self._send_all(out)
                    out = []
                    self._begin(leg, size)
                continue
            if m.streaming:
                take = min(need, n - pos)
                piece = data[pos:pos + take]
                pos += take
                m.need = need = need - take
                nbytes += take
                if need:
                    self._send_to(self.cur_receivers, frame(_PART + piece))
                    continue
                self._send_to(self.cur_receivers, frame(tag + piece), 1)
                msgs += 1
                m.need = -1
                m.streaming = False
                self.current = None
                self.cur_receivers = {}
                if pos < n and self.turns:
                    # Others waited for this message: the rest is a new turn.
                    m.held.appendleft((data[pos:], fin))
                    fin = False
                    break
                continue
            if not m.buf and n - pos >= need:
                whole = data[pos:pos + need]
                pos += need
            else:
                take = min(need - len(m.buf), n - pos)
                m.buf += data[pos:pos + take]
                pos += take
                if len(m.buf) < need:
                    break
                whole = bytes(m.buf)
                m.buf = bytearray()
            m.need = -1
            msgs += 1
            nbytes += len(whole)
            if len(whole) <= self.min_limit:
                out.append(frame(tag + whole))
            else:
                self._send_all(out)
                out = []
                self._send_sized(leg, whole)
        self._send_all(out)
        leg.consumed += pos
        leg.session.conn.consume_to(leg.quic_id, leg.base + leg.consumed - m.parked)
        if msgs:
            leg.messages_in += msgs
            hub.messages_forwarded += msgs
            hub.deliveries += msgs * len(self.receivers)
        hub.bytes_forwarded += nbytes
        self._check_blocked()
        if fin:
            if not m.at_boundary:
                hub.abort_member(leg, wire.Code.PROTOCOL, "stream ended inside a message")
                return
            hub.stop_sending(leg)

    def _send_all(self, out: list[bytes]) -> None:
        # One write per reader per batch: each stream write costs aioquic far
        # more than joining the frames does.
        if out:
            joined = out[0] if len(out) == 1 else b"".join(out)
            size, msgs = len(joined), len(out)
            for r in self.receivers:
                r.session.conn.send(r.quic_id, joined)
                r.bytes_out += size
                r.messages_out += msgs

    @staticmethod
    def _send_to(readers: Iterable[MemberLeg], delivery: bytes, msgs: int = 0) -> None:
        size = len(delivery)
        for r in readers:
            r.session.conn.send(r.quic_id, delivery)
            r.bytes_out += size
            r.messages_out += msgs

    def _send_sized(self, leg: MemberLeg, whole: bytes) -> None:
        """A message some reader's limit is too small for: they get a notice."""
        delivery = frame(leg.tag + whole)
        notice = frame(wire.too_large_notice(len(whole), leg.tag))
        for r in self.receivers:
            fits = len(whole) <= r.session.max_message_size
            r.session.conn.send(r.quic_id, delivery if fits else notice)
            r.bytes_out += len(delivery) if fits else 0
            r.messages_out += fits

    def _begin(self, leg: MemberLeg, size: int) -> None:
        """Start fanning out a large message piece by piece."""
        m = leg.member
        m.streaming = True
        self.current = leg
        self.cur_receivers = {}
        notice = b""
        for r in self.receivers:
            if size <= r.session.max_message_size:
                self.cur_receivers[r] = None
            else:
                notice = notice or frame(wire.too_large_notice(size, leg.tag))
                r.session.conn.send(r.quic_id, notice)

    def abandon(self, leg: MemberLeg) -> None:
        """`leg` sends no more: readers drop the pieces of its message in
        progress, and what it had held is discarded."""
        m = leg.member
        m.held.clear()
        if self.current is leg:
            self._send_to(self.cur_receivers, _DROPPED)
            self.current = None
            self.cur_receivers = {}
            m.streaming = False
            m.need = -1
            self.flush()

    def _check_blocked(self) -> None:
        for r in self.receivers:
            conn = r.session.conn
            if r not in self.blocked_on and conn.unsent(r.quic_id) > BROADCAST_HIGH_WATER:
                if not self.blocked_on:
                    self.hub.writers_paused += 1  # every sender of it waits
                self.blocked_on.add(r)
                conn.watch_drain(r.quic_id, r.on_drain)

    def _unblock(self, r: MemberLeg) -> None:
        self.blocked_on.discard(r)
        r.session.conn.unwatch_drain(r.quic_id)
        if not self.blocked_on:
            self.hub.writers_resumed += 1

    def drained(self, r: MemberLeg) -> None:
        conn = r.session.conn
        if r in self.blocked_on and (conn.closed or conn.unsent(r.quic_id) <= BROADCAST_LOW_WATER):
            self._unblock(r)
            self.flush()

    # -- membership ------------------------------------------------------------

    def add(self, leg: MemberLeg) -> None:
        self.members[leg] = None
        self.receivers[leg] = None
        self._limits_changed()
        self.size_windows(leg)

    def _limits_changed(self) -> None:
        self.min_limit = effective_limit(*(r.session.max_message_size
                                           for r in self.receivers))

    def size_windows(self, joined: MemberLeg | None = None) -> None:
        """Give each member its share of HOLD_BUDGET as its stream window
        (all of them when the share changed, else just the one that joined)."""
        window = min(BROADCAST_WINDOW,
                     max(MEMBER_WINDOW_MIN, HOLD_BUDGET // max(len(self.members), 1)))
        if window != self.window:
            self.window = window
            legs: Iterable[MemberLeg] = self.members
        else:
            legs = () if joined is None else (joined,)
        for m in legs:
            m.session.conn.set_stream_window(m.quic_id, window)

    def drop_receiver(self, leg: MemberLeg) -> None:
        if self.receivers.pop(leg, None) is not None:
            self._limits_changed()
        self.cur_receivers.pop(leg, None)
        if leg in self.blocked_on:
            self._unblock(leg)
        self.flush()

    @staticmethod
    def member_info(leg: MemberLeg) -> ipc.Member:
        return ipc.Member(leg.session.client_id or "", leg.session.conn_key, leg.quic_id)

    def state(self) -> ipc.BroadcastState:
        return ipc.BroadcastState(
            self.name, self.epoch,
            [self.member_info(m) for m in self.members if m.sending],
            [self.member_info(m) for m in self.receivers])


class BroadcastHub:
    """The front-end's broadcasts, by name."""

    def __init__(self, request: RequestBroadcast, workers: int) -> None:
        self._ask = request
        self.workers = workers
        self.broadcasts: dict[str, Broadcast] = {}
        self.deliveries = 0
        self.messages_forwarded = 0
        self.bytes_forwarded = 0
        #: times a broadcast stopped fanning out, its senders held back by
        #: a reader over the high watermark; and started again
        self.writers_paused = 0
        self.writers_resumed = 0

    def _request(self, name: str, make: ipc.MakeRequest,
                 cb: Callable[[ipc.BroadcastReply], None]) -> None:
        def on_reply(reply: ipc.WorkerReply) -> None:
            if isinstance(reply, ipc.BroadcastReply):
                cb(reply)

        self._ask(name, make, on_reply)

    def rebuild(self, index: int, req: int) -> ipc.RebuildBroadcasts:
        return ipc.RebuildBroadcasts(req, [
            b.state() for name, b in self.broadcasts.items()
            if ipc.shard_of(name, self.workers) == index])

    # -- joining --------------------------------------------------------------

    def join(self, leg: MemberLeg, name: str) -> None:
        """`leg` asks to join broadcast `name` (its client's pending opens
        count it until the worker answers)."""
        s = leg.session
        if not name or len(name) > MAX_NAME:
            s.core.open_settled()
            leg.end_both(wire.Code.PROTOCOL)
            return
        member = Broadcast.member_info(leg)
        self._request(name, lambda req: ipc.Join(req, name, member),
                      lambda reply: self._joined(leg, name, member, reply))

    def _joined(self, leg: MemberLeg, name: str, member: ipc.Member,
                reply: ipc.BroadcastReply) -> None:
        s = leg.session
        s.core.open_settled()
        if reply.code:
            leg.end_both(reply.code)
            return
        if leg.in_done or s.core.state is State.CLOSED:
            # Gone while joining: undo the join.
            self._request(name, lambda req: ipc.Leave(req, name, reply.epoch, member,
                                                      True, True),
                          lambda r: self._left(name, reply.epoch, r))
            return
        b = self.broadcasts.get(name)
        if b is None or b.epoch != reply.epoch:
            b = self.broadcasts[name] = Broadcast(self, name, reply.epoch)
        leg.bcast = b
        leg.sending = True
        b.add(leg)
        s.conn.send(leg.quic_id, frame(wire.encode(wire.StreamAccepted())))
        pending, leg.pending = leg.pending, []
        data = b"".join(pending)
        if data or leg.pending_fin:
            b.data(leg, data, leg.pending_fin)

    # -- leaving ----------------------------------------------------------------

    def stop_sending(self, leg: MemberLeg) -> None:
        """The member finished (or aborted) its sending side."""
        b = leg.bcast
        if b is None or not leg.sending:
            return
        leg.sending = False
        leg.in_done = True
        b.abandon(leg)
        self._leave(b, leg, sending=True, receiving=False)
        self._departed(b, leg)

    def stop_receiving(self, leg: MemberLeg) -> None:
        """The member closed its reader: stop counting it at once."""
        b = leg.bcast
        if b is None or leg not in b.receivers:
            return
        leg.out_done = True
        b.drop_receiver(leg)
        self._leave(b, leg, sending=False, receiving=True)
        self._departed(b, leg)

    @staticmethod
    def _departed(b: Broadcast, leg: MemberLeg) -> None:
        """A member that neither sends nor reads any more is no member: it
        must not hold its session alive nor take a share of the windows."""
        if not leg.sending and leg not in b.receivers and leg in b.members:
            del b.members[leg]
            b.size_windows()

    def member_gone(self, leg: MemberLeg) -> None:
        """The member's client left."""
        b = leg.bcast
        if b is None:
            return
        was_sending = leg.sending
        leg.sending = False
        b.abandon(leg)
        was_receiving = leg in b.receivers
        b.drop_receiver(leg)
        b.members.pop(leg, None)
        b.size_windows()
        if was_sending or was_receiving:
            self._leave(b, leg, sending=was_sending, receiving=was_receiving)

    def abort_member(self, leg: MemberLeg, code: int, reason: str) -> None:
        """A member broke the protocol: reset its stream, it leaves."""
        del reason  # (the code says it to the client)
        self.member_gone(leg)
        leg.end_both(code)

    def _leave(self, b: Broadcast, leg: MemberLeg, *, sending: bool, receiving: bool) -> None:
        member = b.member_info(leg)
        name, epoch = b.name, b.epoch
        self._request(name, lambda req: ipc.Leave(req, name, epoch, member, sending,
                                                  receiving),
                      lambda r: self._left(name, epoch, r))

    def _left(self, name: str, epoch: int, reply: ipc.BroadcastReply) -> None:
        b = self.broadcasts.get(name)
        if b is None or b.epoch != epoch or b.over:
            return
        ended = reply.ended
        if reply.code == wire.Code.NO_SUCH_BROADCAST:
            # The worker no longer has it (a replay after a restart): decide
            # from the facts held here.
            if not b.receivers:
                ended = "no-readers"
            elif not any(m.sending for m in b.members):
                ended = "finished"
        if ended:
            self._end(b, ended)

    def _end(self, b: Broadcast, how: str) -> None:
        b.over = True
        del self.broadcasts[b.name]
        for leg in list(b.members):
            if how == "finished":
                if leg in b.receivers:
                    leg.finish()
            else:
                # Nobody reads: members that still send are told to stop.
                leg.end_both(wire.Code.BROADCAST_ENDED)
            leg.bcast = None
        b.members.clear()
        b.receivers.clear()
        b.turns.clear()
        b.current = None
        b.cur_receivers = {}

    # -- counts ---------------------------------------------------------------------

    def count(self, name: str, cb: Callable[[ipc.BroadcastReply], None]) -> None:
        self._request(name, lambda req: ipc.Count(req, name), cb)
