"""Broadcast fan-out in the front-end.

Each member of a broadcast is one stream (a `Leg`) from its client to the
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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .. import wire
from ..framing import FrameDecoder, FrameTooLarge, frame
from ..ids import stable_hash
from ..streams import BROADCAST_HIGH_WATER, BROADCAST_LOW_WATER, BROADCAST_WINDOW
from . import ipc
from .supervisor import MakeRequest, WorkerReply

if TYPE_CHECKING:
    from .frontend import FrontEnd, Leg

MAX_NAME = wire.MAX_BROADCAST_NAME
#: What the front-end lets its members' windows hold in all, split among the
#: members (each between MEMBER_WINDOW_MIN and BROADCAST_WINDOW): a message
#: held here waits for the slowest reader, behind what every member sent.
HOLD_BUDGET = 128 * 1024
MEMBER_WINDOW_MIN = 16 * 1024


class Broadcast:
    """One broadcast's members and the messages waiting to go out."""

    def __init__(self, hub: BroadcastHub, name: str, epoch: int) -> None:
        self.hub = hub
        self.name = name
        self.epoch = epoch
        self.members: dict[Leg, None] = {}  # insertion-ordered set
        self.receivers: dict[Leg, None] = {}
        self.blocked_on: set[Leg] = set()
        # (leg, data, fin) not yet fanned out, in arrival order
        self.held: deque[tuple[Leg, bytes, bool]] = deque()
        self.over = False
        self.window = BROADCAST_WINDOW

    # -- data --------------------------------------------------------------------

    def data(self, leg: Leg, data: bytes, fin: bool) -> None:
        if self.held or self.blocked_on:
            self.held.append((leg, data, fin))
            return
        self._process(leg, data, fin)

    def _process(self, leg: Leg, data: bytes, fin: bool) -> None:
        if not leg.sending:
            return
        fe = self.hub.fe
        if data:
            assert leg.decoder is not None
            try:
                msgs = leg.decoder.feed(data)
            except FrameTooLarge as exc:
                self.hub.abort_member(leg, wire.Code.MESSAGE_TOO_LARGE, str(exc))
                return
            leg.consumed += len(data)
            leg.session.conn.consume_to(leg.sid, leg.base + leg.consumed)
            if msgs:
                # One write per receiver per chunk: each stream write costs
                # aioquic far more than joining the frames does.
                tag = leg.tag
                out = b"".join([frame(tag + m) for m in msgs])
                receivers = self.receivers
                for r in receivers:
                    r.session.conn.send(r.sid, out)
                fe.messages_forwarded += len(msgs)
                fe.bytes_forwarded += sum(map(len, msgs))
                self.hub.deliveries += len(msgs) * len(receivers)
                self._check_blocked()
        if fin:
            assert leg.decoder is not None
            if not leg.decoder.at_boundary:
                self.hub.abort_member(leg, wire.Code.PROTOCOL, "stream ended inside a message")
                return
            self.hub.stop_sending(leg)

    def _check_blocked(self) -> None:
        for r in self.receivers:
            conn = r.session.conn
            if r not in self.blocked_on and conn.unsent(r.sid) > BROADCAST_HIGH_WATER:
                self.blocked_on.add(r)
                conn.watch_drain(r.sid, r.on_drain)

    def drained(self, r: Leg) -> None:
        conn = r.session.conn
        if r in self.blocked_on and (conn.closed or conn.unsent(r.sid) <= BROADCAST_LOW_WATER):
            self.blocked_on.discard(r)
            conn.unwatch_drain(r.sid)
            self.flush()

    def flush(self) -> None:
        while self.held and not self.blocked_on and not self.over:
            leg, data, fin = self.held.popleft()
            self._process(leg, data, fin)

    # -- membership ------------------------------------------------------------

    def add(self, leg: Leg) -> None:
        self.members[leg] = None
        self.receivers[leg] = None
        self.size_windows(leg)

    def size_windows(self, joined: Leg | None = None) -> None:
        """Give each member its share of HOLD_BUDGET as its stream window
        (all of them when the share changed, else just the one that joined)."""
        window = min(BROADCAST_WINDOW,
                     max(MEMBER_WINDOW_MIN, HOLD_BUDGET // max(len(self.members), 1)))
        if window != self.window:
            self.window = window
            legs: Iterable[Leg] = self.members
        else:
            legs = () if joined is None else (joined,)
        for m in legs:
            m.session.conn.set_stream_window(m.sid, window)

    def drop_receiver(self, leg: Leg) -> None:
        self.receivers.pop(leg, None)
        if leg in self.blocked_on:
            self.blocked_on.discard(leg)
            leg.session.conn.unwatch_drain(leg.sid)
        self.flush()

    def member_info(self, leg: Leg) -> ipc.Member:
        return ipc.Member(leg.session.client_id or "", leg.session.key, leg.sid)

    def state(self) -> ipc.BroadcastState:
        return ipc.BroadcastState(
            self.name, self.epoch,
            [self.member_info(m) for m in self.members if m.sending],
            [self.member_info(m) for m in self.receivers])


class BroadcastHub:
    """The front-end's broadcasts, by name."""

    def __init__(self, fe: FrontEnd, workers: int) -> None:
        self.fe = fe
        self.workers = workers
        self.broadcasts: dict[str, Broadcast] = {}
        self.deliveries = 0

    def _request(self, name: str, make: MakeRequest,
                 cb: Callable[[ipc.BroadcastReply], None]) -> None:
        sup = self.fe.supervisor
        assert sup is not None

        def on_reply(reply: WorkerReply) -> None:
            if isinstance(reply, ipc.BroadcastReply):
                cb(reply)

        sup.request(sup.slot_for("broadcast", stable_hash(name)), make, on_reply)

    def rebuild(self, index: int, req: int) -> ipc.RebuildBroadcasts:
        return ipc.RebuildBroadcasts(req, [
            b.state() for name, b in self.broadcasts.items()
            if stable_hash(name) % self.workers == index])

    # -- joining --------------------------------------------------------------

    def join(self, leg: Leg, name: str) -> None:
        s = leg.session
        if not name or len(name) > MAX_NAME:
            self.fe.abort(leg, wire.Code.PROTOCOL,
                          f"a broadcast name is 1-{MAX_NAME} characters")
            return
        s.pending_opens += 1
        leg.decoder = FrameDecoder(s.max_message_size)
        leg.tag = wire.sender_tag(s.client_id or "")
        member = ipc.Member(s.client_id or "", s.key, leg.sid)
        self._request(name, lambda req: ipc.Join(req, name, member),
                      lambda reply: self._joined(leg, name, member, reply))

    def _joined(self, leg: Leg, name: str, member: ipc.Member,
                reply: ipc.BroadcastReply) -> None:
        s = leg.session
        s.pending_opens -= 1
        if reply.code:
            self.fe.abort(leg, reply.code, f"cannot join broadcast {name!r}: "
                          f"{wire.describe(reply.code)}")
            return
        if leg.in_done or s.state == "closed":
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
        s.conn.send(leg.sid, frame(wire.encode(wire.StreamAccepted())))
        pending, leg.pending = leg.pending, []
        data = b"".join(pending)
        if data or leg.pending_fin:
            b.data(leg, data, leg.pending_fin)

    # -- leaving ----------------------------------------------------------------

    def stop_sending(self, leg: Leg) -> None:
        """The member finished (or aborted) its sending side."""
        b = leg.bcast
        if b is None or not leg.sending:
            return
        leg.sending = False
        leg.in_done = True
        self._leave(b, leg, sending=True, receiving=False)
        self._departed(b, leg)

    def stop_receiving(self, leg: Leg) -> None:
        """The member closed its reader: stop counting it at once."""
        b = leg.bcast
        if b is None or leg not in b.receivers:
            return
        leg.out_done = True
        b.drop_receiver(leg)
        self._leave(b, leg, sending=False, receiving=True)
        self._departed(b, leg)

    @staticmethod
    def _departed(b: Broadcast, leg: Leg) -> None:
        """A member that neither sends nor reads any more is no member: it
        must not hold its session alive nor take a share of the windows."""
        if not leg.sending and leg not in b.receivers and leg in b.members:
            del b.members[leg]
            b.size_windows()

    def member_gone(self, leg: Leg) -> None:
        """The member's client left."""
        b = leg.bcast
        if b is None:
            return
        was_sending = leg.sending
        leg.sending = False
        was_receiving = leg in b.receivers
        b.drop_receiver(leg)
        b.members.pop(leg, None)
        b.size_windows()
        if was_sending or was_receiving:
            self._leave(b, leg, sending=was_sending, receiving=was_receiving)

    def abort_member(self, leg: Leg, code: int, reason: str) -> None:
        """A member broke the protocol: reset its stream, it leaves."""
        self.member_gone(leg)
        self.fe.reset_leg(leg, code)

    def _leave(self, b: Broadcast, leg: Leg, *, sending: bool, receiving: bool) -> None:
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
                    self.fe.finish_leg(leg)
            else:
                # Nobody reads: members that still send are told to stop.
                self.fe.reset_leg(leg, wire.Code.BROADCAST_ENDED)
            leg.bcast = None
        b.members.clear()
        b.receivers.clear()
        b.held.clear()

    # -- counts ---------------------------------------------------------------------

    def count(self, name: str, cb: Callable[[ipc.BroadcastReply], None]) -> None:
        self._request(name, lambda req: ipc.Count(req, name), cb)
