"""Proxied streams: opening them through the front-end and splicing them.

A stream a client opens starts as a `HeaderLeg` until its header says what it
is: a broadcast membership (handed to `fanout`) or a proxied stream to
another client, two `ProxiedLeg`s, one on each client's connection. Bytes
read from one leg are written to the other as they come, with frame
boundaries tracked (not copied) to enforce the message size limit, and the
source leg is credited only as the destination drains, so back-pressure
reaches the writer through here.

Bounds (DESIGN 3.1): a stream's limit is the smaller of both ends' (each
already no larger than ours), and both ends are told it; one client has at
most MAX_STREAMS_PER_PAIR streams open to one target (`pairing`), further
opens wait here (as pending opens) and the target sees nothing of them, nor
of an open its QUIC stream limit would hold back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import wire
from ..errors import InvalidId, ProtocolError
from ..framing import HEADER_SIZE, FrameScanner, FrameTooLarge, frame
from ..ids import check_id
from ..limits import effective_limit
from ..stream_state import HEADER_FRAME_MAX, STREAM_WINDOW
from . import ipc
from . import shard_wire as sw
from .fanout import BroadcastHub, MemberLeg
from .legs import Leg, Peer
from .pairing import Pairing
from .session import MAX_PENDING_OPENS, State

if TYPE_CHECKING:
    from .tunnel import Tunnels

log = logging.getLogger(__name__)

#: A writer counts as paused by back-pressure once this much of what it sent
#: waits unsent toward its reader (its credit is held back by as much, so
#: it has at most half its window left), and as resumed once all of it left.
PAUSE_MARK = STREAM_WINDOW // 2

RequestRouting = Callable[[str, ipc.MakeRequest, ipc.ReplyCallback | None], None]


class HeaderLeg(Leg):
    """A stream whose header has not fully arrived yet."""

    __slots__ = ("head", "relay")

    def __init__(self, session: Peer, quic_id: int, relay: Relay) -> None:
        super().__init__(session, quic_id)
        self.relay = relay
        self.head = bytearray()

    def data(self, data: bytes, fin: bool) -> None:
        if self.in_done:
            return
        head = self.head
        head += data
        if len(head) >= HEADER_SIZE:
            size = int.from_bytes(head[:HEADER_SIZE], "big")
            if size > HEADER_FRAME_MAX:
                self.abort(wire.Code.PROTOCOL, "stream header too large")
            elif len(head) >= HEADER_SIZE + size:
                base = HEADER_SIZE + size
                self.session.conn.consume_to(self.quic_id, base)
                leg = self.relay.open(self, bytes(head[HEADER_SIZE:base]), base)
                if leg is not None and not leg.in_done:
                    leg.data(bytes(head[base:]), fin)
            elif fin:
                self.abort(wire.Code.PROTOCOL, "stream ended in its header")
        elif fin:
            self.abort(wire.Code.PROTOCOL, "stream ended in its header")

    def abort(self, code: int, reason: str) -> None:
        log.debug("resetting stream %d of %s: %s", self.quic_id, self.session.client_id, reason)
        self.end_both(code)


class ProxiedLeg(Leg):
    """One end of a proxied stream, on one client's connection."""

    __slots__ = ("frames", "held", "n", "other", "pending", "pending_fin", "purpose", "relay",
                 "scanner", "slot_of", "target", "written")

    def __init__(self, session: Peer, quic_id: int, base: int, n: int, purpose: str,
                 max_message_size: int, relay: Relay) -> None:
        super().__init__(session, quic_id, base)
        self.relay = relay
        self.n = n
        self.purpose = purpose
        self.other: ProxiedLeg | None = None
        self.pending: list[bytes] = []  # data before the route is known
        self.pending_fin = False
        self.scanner = FrameScanner(max_message_size)
        self.written = 0  # bytes forwarded from this leg to the other
        self.frames = 0  # messages forwarded from this leg to the other
        #: counted as paused: over PAUSE_MARK of credit held back since the
        #: other leg's client did not read what this one sent
        self.held = False
        #: opener legs waiting for a stream slot: the target session
        self.target: Peer | None = None
        #: target legs: the opener whose per-pair slot this stream holds
        self.slot_of: Peer | None = None

    # -- the per-packet path -----------------------------------------------------------

    def data(self, data: bytes, fin: bool) -> None:
        if self.in_done:
            return
        if self.other is None:
            if data:
                self.pending.append(data)
            self.pending_fin = self.pending_fin or fin
            return
        self.forward(data, fin)

    def forward(self, data: bytes, fin: bool) -> None:
        other = self.other
        assert other is not None
        if data:
            try:
                frames = self.scanner.feed(data)
            except FrameTooLarge as exc:
                self.abort(wire.Code.MESSAGE_TOO_LARGE, str(exc))
                return
            if not other.out_done:
                other.session.conn.send(other.quic_id, data)
            self.written += len(data)
            relay = self.relay
            relay.bytes_forwarded += len(data)
            relay.messages_forwarded += frames
            self.frames += frames
            self.credit()
        if fin:
            if not self.scanner.at_boundary:
                self.abort(wire.Code.PROTOCOL, "stream ended inside a message")
                return
            self.in_done = True
            if not other.out_done:
                other.out_done = True
                other.session.conn.send(other.quic_id, b"", end=True)
            self.forget_if_done()
            other.forget_if_done()

    def credit(self) -> None:
        """Credit this leg's window by what its destination has sent on
        (also called as the destination's send buffer drains)."""
        other = self.other
        if other is None:
            return
        oconn = other.session.conn
        unsent = 0 if oconn.closed else oconn.unsent(other.quic_id)
        self.session.conn.consume_to(self.quic_id, self.base + self.written - unsent)
        if unsent > 0 and not oconn.closed:
            oconn.watch_drain(other.quic_id, self.credit)
            if unsent > PAUSE_MARK and not self.held:
                self.held = True
                self.relay.writers_paused += 1
        else:
            oconn.unwatch_drain(other.quic_id)
            if self.held:
                self.held = False
                self.relay.writers_resumed += 1

    def figures(self) -> tuple[int, int, int, int]:
        other = self.other
        if other is None:
            return (self.written, self.frames, 0, 0)
        return (self.written, self.frames, other.written, other.frames)

    # -- ending ------------------------------------------------------------------------

    def abort(self, code: int, reason: str) -> None:
        """Reset both directions of the proxied stream (both legs)."""
        log.debug("resetting stream %d of %s: %s", self.quic_id, self.session.client_id, reason)
        self.end_both(code)
        other = self.other
        if other is not None:
            other.end_both(code)

    def reset(self, code: int) -> None:
        self.in_done = True
        other = self.other
        if other is not None:
            other.end_out(code)
        elif self.target is not None:
            self.relay.start_waiting(self.target)  # no longer waits for a slot
        self.forget_if_done()

    def stopped(self, code: int) -> None:
        self.out_done = True
        self.session.conn.unwatch_drain(self.quic_id)
        other = self.other
        if other is not None:
            other.end_in(code)
        elif self.target is not None:
            self.relay.start_waiting(self.target)  # no longer waits for a slot
        self.forget_if_done()

    def forgotten(self) -> None:
        self.relay.release_slot(self)

    def session_gone(self) -> None:
        self.relay.release_slot(self)
        other = self.other
        if other is not None:
            other.end_out(wire.Code.PEER_GONE)
            other.end_in(wire.Code.PEER_GONE)
        elif self.target is not None:
            self.relay.start_waiting(self.target)  # drops it, lets others go


class Relay:
    """Opens and splices the proxied streams of one front-end."""

    def __init__(self, find: Callable[[int], Peer | None], hub: BroadcastHub,
                 request_routing: RequestRouting) -> None:
        self._find = find  # a session by its conn_key
        self.hub = hub
        self.request_routing = request_routing
        #: with front-end shards: this shard's streams to and from the others
        self.tunnels: Tunnels | None = None
        #: in a federation: finds the peer a broadcast's members are fanned
        #: out at (`federation.Federation.broadcast_home`)
        self.broadcast_home: Callable[[str, Callable[[int | None], None]], None] | None = None
        self.pairing: Pairing[ProxiedLeg] = Pairing()
        self.bytes_forwarded = 0
        self.messages_forwarded = 0
        self.streams_opened = 0
        self.writers_paused = 0  # times a leg's credit was held back
        self.writers_resumed = 0  # ... and given again in full

    def open(self, leg: HeaderLeg, raw: bytes, base: int) -> Leg | None:
        """`leg`'s header arrived: the leg that carries the stream from now
        on, or None if it was refused."""
        s = leg.session
        try:
            hdr = wire.decode(raw)
        except ProtocolError as exc:
            leg.abort(wire.Code.PROTOCOL, str(exc))
            return None
        if not isinstance(hdr, wire.StreamHeader) or hdr.kind == "direct":
            leg.abort(wire.Code.PROTOCOL, "expected a proxied or broadcast stream header")
            return None
        refused = s.core.used_numbers.admit(hdr.n)
        if refused is not None:
            leg.abort(refused, "stream number out of range" if refused == wire.Code.PROTOCOL
                      else f"proxied stream number {hdr.n} was already used by this client")
            return None
        if hdr.kind == "proxied":
            try:
                check_id(hdr.peer)
            except InvalidId:
                leg.abort(wire.Code.NO_SUCH_PEER,
                          f"no client {wire.quote(hdr.peer)} is connected")
                return None
        if not s.core.begin_open():
            leg.abort(wire.Code.TOO_MANY_STREAMS,
                      f"more than {MAX_PENDING_OPENS} streams waiting to open")
            return None
        if hdr.kind == "broadcast":
            tunnels = self.tunnels
            if self.broadcast_home is not None:
                # In a federation the broadcast's home is found first; the
                # member holds what its client sends meanwhile.
                name = hdr.broadcast
                member = s.legs[leg.quic_id] = MemberLeg(s, leg.quic_id, base)
                self.broadcast_home(name, lambda far: self._homed(member, name, far))
                return member
            if tunnels is not None and \
                    (far := tunnels.home_of(hdr.broadcast)) != tunnels.index:
                return tunnels.carry(s, leg.quic_id, base, far, sw.Open(
                    s.conn_key, leg.quic_id, s.client_id or "", s.max_message_size, base,
                    "broadcast", broadcast=hdr.broadcast), [], False)
            return self.open_member(s, leg.quic_id, base, hdr.broadcast)
        new = s.legs[leg.quic_id] = ProxiedLeg(s, leg.quic_id, base, hdr.n, hdr.purpose,
                                           s.max_message_size, self)
        src, dst = s.client_id or "", hdr.peer
        self.request_routing(dst, lambda req: ipc.Lookup(req, src, dst),
                             lambda reply: self._routed(new, dst, reply))
        return new

    def _homed(self, member: MemberLeg, name: str, far: int | None) -> None:
        """The home of broadcast `name` is peer `far` (None: unknown)."""
        s = member.session
        if member.in_done or s.core.state is State.CLOSED:
            s.core.open_settled()
            if s.legs.get(member.quic_id) is member:
                del s.legs[member.quic_id]
            return
        tunnels = self.tunnels
        if far is None or tunnels is None:
            s.core.open_settled()
            member.end_both(wire.Code.FEDERATION_UNAVAILABLE)
            return
        if far == tunnels.index:
            self.hub.join(member, name)
            return
        del s.legs[member.quic_id]
        tunnels.carry(s, member.quic_id, member.base, far, sw.Open(
            s.conn_key, member.quic_id, s.client_id or "", s.max_message_size, member.base,
            "broadcast", broadcast=name), member.pending, member.pending_fin)

    def open_member(self, s: Peer, quic_id: int, base: int, name: str) -> MemberLeg:
        """Stream `quic_id` of `s` joins broadcast `name` here."""
        member = s.legs[quic_id] = MemberLeg(s, quic_id, base)
        self.hub.join(member, name)
        return member

    def open_from_remote(self, s: Peer, msg: sw.Open) -> None:
        """A client of another shard opens a proxied stream to a client here."""
        leg = s.legs[msg.stream] = ProxiedLeg(s, msg.stream, msg.base, msg.n, msg.purpose,
                                              msg.max_message_size, self)
        self._to_target(leg, msg.target_id, self._find(msg.target_conn), 0)

    def _routed(self, leg: ProxiedLeg, dst: str, reply: ipc.WorkerReply) -> None:
        s = leg.session
        if leg.in_done or s.core.state is State.CLOSED:
            s.core.open_settled()
            return
        assert isinstance(reply, ipc.Reply)
        target = None
        entry = reply.entry
        if reply.code == 0 and entry is not None:
            tunnels = self.tunnels
            if tunnels is not None and \
                    (far := tunnels.shard_of_key(entry.conn_key)) != tunnels.index:
                # Spliced at the target's shard; this one carries the bytes.
                tunnels.carry(s, leg.quic_id, leg.base, far, sw.Open(
                    s.conn_key, leg.quic_id, s.client_id or "", s.max_message_size,
                    leg.base, "proxied", leg.n, leg.purpose, entry.conn_key, dst),
                    leg.pending, leg.pending_fin)
                return
            target = self._find(entry.conn_key)
        self._to_target(leg, dst, target, reply.code)

    def _to_target(self, leg: ProxiedLeg, dst: str, target: Peer | None, code: int) -> None:
        s = leg.session
        if target is None or target.core.state is not State.READY or \
                target.client_id != dst:
            s.core.open_settled()
            code = code or wire.Code.NO_SUCH_PEER
            leg.abort(code, f"no client {wire.quote(dst)} is connected"
                      if code == wire.Code.NO_SUCH_PEER else "")
            return
        room = target.conn.quic.can_open_stream()
        if self.pairing.must_wait(s.conn_key, target.conn_key, room):
            # Wait (still a pending open) until a stream of this pair ends or
            # the target's QUIC stream limit grows; the target sees nothing.
            leg.target = target
            self.pairing.wait(s.conn_key, target.conn_key, leg)
            if not room:
                target.conn.on_stream_room(lambda: self.start_waiting(target))
            return
        s.core.open_settled()
        self._splice(leg, target)

    def start_waiting(self, target: Peer) -> None:
        """Open what waits toward `target` while slots and its QUIC stream
        limit allow, each opener's in order."""
        can_open = target.conn.quic.can_open_stream
        for leg, go in self.pairing.admit(target.conn_key, _waits, can_open):
            leg.session.core.open_settled()
            if go:
                leg.target = None
                self._splice(leg, target)
        if self.pairing.has_waiting(target.conn_key) and not can_open():
            target.conn.on_stream_room(lambda: self.start_waiting(target))
        else:
            target.conn.on_stream_room(None)

    def release_slot(self, leg: ProxiedLeg) -> None:
        """A target leg is over: its opener may open another stream to it."""
        opener = leg.slot_of
        if opener is None:
            return
        leg.slot_of = None
        target = leg.session
        if self.pairing.closed(opener.conn_key, target.conn_key) and \
                target.core.state is not State.CLOSED:
            self.start_waiting(target)

    def _splice(self, leg: ProxiedLeg, target: Peer) -> None:
        """Open the target's leg of a proxied stream and start relaying."""
        s = leg.session
        tconn = target.conn
        quic_id = tconn.new_stream_id()
        # The stream's limit is the smaller of both ends' (each already the
        # smaller of its own and ours): both ends learn it, so a sender
        # refuses what the receiver could not take, and both legs enforce it.
        limit = effective_limit(s.max_message_size, target.max_message_size)
        other = ProxiedLeg(target, quic_id, 0, leg.n, leg.purpose, limit, self)
        leg.scanner.max_size = limit
        target.legs[quic_id] = other
        other.other, leg.other = leg, other
        other.slot_of = s
        self.pairing.opened(s.conn_key, target.conn_key)
        tconn.send(quic_id, frame(wire.encode(wire.StreamHeader(
            "proxied", s.client_id or "", leg.n, purpose=leg.purpose,
            max_message_size=limit))))
        s.conn.send(leg.quic_id, frame(wire.encode(wire.StreamAccepted(limit))))
        self.streams_opened += 1
        # The header written to `other` does not count as forwarded data.
        pending, leg.pending = leg.pending, []
        data = b"".join(pending)
        if data or leg.pending_fin:
            leg.forward(data, leg.pending_fin)

    def target_gone(self, target: Peer) -> None:
        """`target` left: opens that waited for a slot toward it fail."""
        for leg in self.pairing.drop_target(target.conn_key):
            leg.session.core.open_settled()
            leg.target = None
            leg.abort(wire.Code.NO_SUCH_PEER,
                      f"no client {wire.quote(target.client_id)} is connected")


def _waits(leg: ProxiedLeg) -> bool:
    """Whether a queued open still wants to be opened."""
    return not (leg.in_done or leg.out_done or leg.session.core.state is State.CLOSED)
