"""The Coordinator's front-end: terminates QUIC, admits clients, splices
proxied streams.

Runs in the process and event loop that called `Coord.start`. Control-plane
decisions (admission, where a peer is) go to routing workers through the
`Supervisor`; payload never leaves this process. A proxied stream is two
`Leg`s, one on each client's connection: bytes read from one leg are written
to the other as they come, with frame boundaries tracked (not copied) to
enforce the message size limit, and the source leg is credited only as the
destination drains, so back-pressure reaches the writer through here.

Bounds (DESIGN 3.1): a stream's limit is the smaller of both ends' (each
already no larger than ours), and both ends are told it; one client has at
most MAX_STREAMS_PER_PAIR streams open to one target, further opens wait
here (as pending opens) and the target sees nothing of them, nor of an open
its QUIC stream limit would hold back; a client's control stream is not read
while the replies to it back up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from .. import wire
from ..control import CONTROL_STREAM, ControlReader
from ..errors import CertificateError, ConecError, InvalidId, ProtocolError
from ..framing import HEADER_SIZE, FrameScanner, FrameTooLarge, frame
from ..ids import check_id, is_valid_id, stable_hash
from ..streams import HEADER_FRAME_MAX, MAX_STREAM_NUMBER
from ..tlsconf import check_chain, der
from ..transport import Conn, Endpoint
from ..used_numbers import UsedNumbers
from . import ipc
from .fanout import Broadcast, BroadcastHub, MemberIn
from .supervisor import MakeRequest, ReplyCallback, Supervisor, WorkerReply

log = logging.getLogger(__name__)

FRONTEND_NAME = "fe0"
HELLO_TIMEOUT = 5.0
MAX_PENDING_OPENS = 64  # streams of one client waiting for their route
MAX_PENDING_CHANNELS = 16  # channel introductions of one client in progress
OFFER_TIMEOUT = 5.0  # how long a channel target has to answer
#: The control stream of a client is not read while more than this many
#: bytes of replies to it are unsent (it does not read them), and read again
#: below CONTROL_REPLY_LOW.
CONTROL_REPLY_HIGH = 64 * 1024
CONTROL_REPLY_LOW = 32 * 1024
#: Control requests of one client waiting for a worker's answer; more are
#: not read until some are answered.
MAX_PENDING_REQUESTS = 64
#: Proxied streams open at once from one client to one target; further
#: opens wait (and count as pending opens) until one of them ends.
MAX_STREAMS_PER_PAIR = 32
#: `watch_drain` key that is no stream: called after each datagram of a
#: target while opens wait for its QUIC stream limit to grow.
ROOM_WATCH = -1


class Leg:
    """One end of a proxied stream, on one client's connection."""

    __slots__ = ("base", "bcast", "consumed", "head", "in_done", "member", "n", "other",
                 "out_done", "pending", "pending_fin", "purpose", "scanner", "sending",
                 "session", "sid", "slot_of", "tag", "target", "written")

    def __init__(self, session: Session, sid: int, max_message_size: int) -> None:
        self.session = session
        self.sid = sid
        self.other: Leg | None = None
        self.head: bytearray | None = None  # header bytes while reading it
        self.pending: list[bytes] = []  # data before the route is known
        self.pending_fin = False
        self.scanner = FrameScanner(max_message_size)
        self.base = 0  # bytes of this leg consumed before splicing
        self.written = 0  # bytes forwarded from this leg to the other
        self.in_done = False  # nothing more will come from this leg
        self.out_done = False  # nothing more will be written to this leg
        self.n = -1
        self.purpose = ""
        #: opener legs waiting for a stream slot: the target session
        self.target: Session | None = None
        #: target legs: the opener whose per-pair slot this stream holds
        self.slot_of: Session | None = None
        # broadcast members only
        self.bcast: Broadcast | None = None
        self.member: MemberIn | None = None
        self.tag = b""
        self.sending = False
        self.consumed = 0

    def on_drain(self) -> None:
        """A watched send buffer drained a bit: for a proxied stream, the
        other leg's (credit this one); for a broadcast member, its own."""
        if self.bcast is not None:
            self.bcast.drained(self)
        else:
            self.session.fe.credit(self)


class Session:
    """The front-end's side of one client connection (a `ConnHandler`)."""

    def __init__(self, fe: FrontEnd, conn: Conn, key: int) -> None:
        self.fe = fe
        self.conn = conn
        self.key = key
        self.client_id: str | None = None
        self.state = "handshake"  # -> hello -> admitting -> ready -> closed
        self.control_sid: int | None = None
        #: holds control messages not acted on yet (while replies back up)
        self.control = ControlReader()
        self._control_blocked = False
        self.requests_pending = 0  # control requests waiting for a worker
        self.legs: dict[int, Leg] = {}
        self.used_numbers = UsedNumbers()
        self.pending_opens = 0
        #: proxied streams open from this client, by target session key
        self.open_to: dict[int, int] = {}
        #: opens toward this client waiting for a slot, by opener session key
        self.waiting: dict[int, deque[Leg]] = {}
        self.pending_channels = 0
        self.cert_der = b""
        self.max_message_size = fe.cfg_max_message_size
        self.registered = False
        self._datagram_size = fe.cfg_max_datagram_size
        self._idle = fe.cfg_idle_timeout
        self._hello_timer = fe.loop.call_later(HELLO_TIMEOUT, self._hello_timeout)

    # -- ConnHandler -------------------------------------------------------------

    def handshake_completed(self, conn: Conn) -> None:
        cert = conn.quic.peer_certificate()
        try:
            check_chain(cert, conn.quic.peer_chain(), self.fe.client_ca)
        except CertificateError as exc:
            self.refuse(wire.Code.CERTIFICATE, str(exc))
            return
        assert cert is not None
        self.cert_der = der(cert)
        self.state = "hello"

    def stream_data(self, conn: Conn, sid: int, data: bytes, fin: bool) -> None:
        if self.state in ("closed", "handshake"):
            return
        if self.control_sid is None:
            if sid != CONTROL_STREAM:
                self.refuse(wire.Code.PROTOCOL, "the control stream must be opened first")
                return
            self.control_sid = sid
        if sid == self.control_sid:
            self._control_data(data, fin)
            return
        leg = self.legs.get(sid)
        if leg is None:
            if self.state != "ready" or sid % 4 != 0:
                conn.stop(sid, wire.Code.PROTOCOL)
                conn.reset(sid, wire.Code.PROTOCOL)
                return
            leg = self.legs[sid] = Leg(self, sid, self.max_message_size)
            leg.head = bytearray()
        self.fe.leg_data(leg, data, fin)

    def stream_reset(self, conn: Conn, sid: int, code: int) -> None:
        if sid == self.control_sid:
            self.refuse(wire.Code.PROTOCOL, "the control stream was reset")
            return
        leg = self.legs.get(sid)
        if leg is not None:
            self.fe.leg_reset(leg, code)

    def stop_sending(self, conn: Conn, sid: int, code: int) -> None:
        leg = self.legs.get(sid)
        if leg is not None:
            self.fe.leg_stopped(leg, code)

    def terminated(self, conn: Conn, code: int, reason: str) -> None:
        self.state = "closed"
        self._hello_timer.cancel()
        self.fe.session_gone(self)

    # -- control stream ----------------------------------------------------------

    def _control_data(self, data: bytes, fin: bool) -> None:
        try:
            self.control.feed(data, fin)
        except ProtocolError as exc:
            self.refuse(wire.Code.PROTOCOL, wire.clip(str(exc)))
            return
        self.control_run()

    def control_run(self) -> None:
        """Act on parked control messages while the client reads its replies.

        The stream's window grows only by what was acted on: a client that
        sends requests and does not read the replies stops being read once
        CONTROL_REPLY_HIGH bytes of replies are unsent, so neither its
        requests nor the replies pile up here.
        """
        control = self.control
        sid = self.control_sid
        if sid is None:
            return
        try:
            while control and self.state != "closed":
                if self._replies_backed_up():
                    if not self._control_blocked:
                        self._control_blocked = True
                        self.conn.watch_drain(sid, self.control_run)
                    break
                self._control_msg(control.next())
        except ConecError as exc:
            self.refuse(wire.Code.PROTOCOL, wire.clip(str(exc)))
            return
        if self.state == "closed":
            return
        if not control and self._control_blocked:
            self._control_blocked = False
            self.conn.unwatch_drain(sid)
        # Credit what was acted on; a partial message or parked ones are not.
        self.conn.consume_to(sid, control.acted_on)
        if control.ended:
            self.refuse(wire.Code.PROTOCOL, "the control stream was closed")

    def _replies_backed_up(self) -> bool:
        if self.requests_pending >= MAX_PENDING_REQUESTS:
            return True
        assert self.control_sid is not None
        unsent = self.conn.unsent(self.control_sid)
        return unsent > (CONTROL_REPLY_LOW if self._control_blocked else CONTROL_REPLY_HIGH)

    def request_done(self) -> None:
        """A control request's answer came back from a worker."""
        self.requests_pending -= 1
        if self._control_blocked and self.state != "closed":
            self.control_run()

    def _control_msg(self, msg: wire.Control) -> None:
        if self.state == "closed":
            return
        if isinstance(msg, wire.Hello):
            if self.state != "hello":
                raise ProtocolError("unexpected hello")
            self._hello(msg)
        elif isinstance(msg, wire.ChannelRequest) and self.state == "ready":
            self.fe.channel_request(self, msg)
        elif isinstance(msg, wire.ChannelAnswer) and self.state == "ready":
            self.fe.channel_answer(self, msg)
        elif isinstance(msg, wire.ChannelDialing) and self.state == "ready":
            self.fe.channel_dialing(self, msg)
        elif isinstance(msg, wire.BroadcastCount) and self.state == "ready":
            req = msg.req
            self.requests_pending += 1

            def counted(r: ipc.BroadcastReply) -> None:
                self.send_control(wire.BroadcastCountReply(req, r.code, r.senders,
                                                            r.receivers))
                self.request_done()

            self.fe.hub.count(msg.name, counted)
        else:
            raise ProtocolError(f"unexpected control message {type(msg).__name__}")

    def send_control(self, msg: wire.Control) -> None:
        if self.state != "closed" and self.control_sid is not None:
            self.conn.send(self.control_sid, frame(wire.encode(msg)))

    def _hello(self, hello: wire.Hello) -> None:
        if hello.version != wire.PROTOCOL_VERSION:
            self.refuse(wire.Code.VERSION, f"protocol version {hello.version} is not "
                        f"supported (this Coordinator speaks {wire.PROTOCOL_VERSION})")
            return
        try:
            check_id(hello.id)
        except InvalidId as exc:
            self.refuse(wire.Code.INVALID_ID, wire.clip(str(exc)))
            return
        try:
            check_chain(self.conn.quic.peer_certificate(), self.conn.quic.peer_chain(),
                        self.fe.client_ca, hello.id)
        except CertificateError as exc:
            self.refuse(wire.Code.CERTIFICATE, wire.clip(str(exc)))
            return
        self.client_id = hello.id
        self.state = "admitting"
        self.max_message_size = max(0, min(hello.max_message_size,
                                           self.fe.cfg_max_message_size))
        self._datagram_size = min(hello.max_datagram_size, self.fe.cfg_max_datagram_size)
        self._idle = min(hello.idle_timeout, self.fe.cfg_idle_timeout)
        entry = ipc.Entry(hello.id, FRONTEND_NAME, self.key, self.conn.peer_address,
                          self.cert_der)
        self.fe.request_routing(hello.id, lambda req: ipc.Register(req, entry),
                                self._admitted)

    def _admitted(self, reply: WorkerReply) -> None:
        assert isinstance(reply, ipc.Reply)
        if reply.code == 0:
            self.registered = True
        if self.state == "closed":
            self.fe.unregister(self)  # left while being admitted
            return
        if reply.code != 0:
            self.refuse(reply.code, f"a client with id {wire.quote(self.client_id)} is already "
                        "connected" if reply.code == wire.Code.DUPLICATE_ID else "")
            return
        self._hello_timer.cancel()
        self.state = "ready"
        self.fe.admitted(self)
        self.conn.quic.set_max_datagram_size(self._datagram_size)
        assert self.control_sid is not None
        self.conn.send(self.control_sid, frame(wire.encode(wire.Welcome(
            wire.PROTOCOL_VERSION, self.max_message_size, self._idle, self._datagram_size,
            self.conn.peer_address))))

    def refuse(self, code: int, reason: str) -> None:
        """Close the connection with an application code and reason."""
        if self.state == "closed":
            return
        log.info("closing connection from %s: %s (%s)", self.conn.peer_address,
                 reason or wire.describe(code), code)
        # Closed for us from now on: nothing more it sent is acted on, and an
        # admission still in flight is undone (`_admitted`).
        self.state = "closed"
        self.conn.close(code, reason or wire.describe(code))

    def start_waiting(self) -> None:
        """Room may have appeared for opens waiting toward this client."""
        self.fe.start_waiting(self)

    def _hello_timeout(self) -> None:
        if self.state in ("handshake", "hello", "admitting"):
            self.refuse(wire.Code.HELLO_TIMEOUT,
                        f"no hello within {HELLO_TIMEOUT:.0f} s of connecting")


class FrontEnd:
    """All sessions and proxied streams of one Coordinator process."""

    def __init__(self, *, client_ca: bytes | None, max_message_size: int,
                 max_datagram_size: int, idle_timeout: float, routing_workers: int,
                 broadcast_workers: int = 1) -> None:
        self.loop = asyncio.get_running_loop()
        self.client_ca = client_ca
        self.cfg_max_message_size = max_message_size
        self.cfg_max_datagram_size = max_datagram_size
        self.cfg_idle_timeout = idle_timeout
        self.routing_workers = routing_workers
        self.endpoint: Endpoint | None = None
        self.supervisor: Supervisor | None = None
        self.sessions: dict[int, Session] = {}
        self.by_id: dict[str, Session] = {}
        self._next_key = 1
        self.hub = BroadcastHub(self, broadcast_workers)
        self._next_offer = 1
        #: channel introductions waiting for the target's answer:
        #: offer id -> (opener, its request id, the target's directory entry)
        self.offers: dict[int, tuple[Session, int, ipc.Entry, asyncio.TimerHandle]] = {}
        #: (opener session, request) -> (target session, opener id), until
        #: the opener says it is dialing
        self.dialing: dict[tuple[int, int], tuple[int, str]] = {}
        self.bytes_forwarded = 0
        self.messages_forwarded = 0
        self.streams_opened = 0

    # -- wiring ------------------------------------------------------------------

    def accept(self, conn: Conn) -> Session:
        key = self._next_key
        self._next_key += 1
        s = Session(self, conn, key)
        self.sessions[key] = s
        return s

    def rebuild(self, kind: str, index: int, req: int) -> ipc.ToWorker:
        """The message a (re)started worker rebuilds its shard from."""
        if kind == "broadcast":
            return self.hub.rebuild(index, req)
        return ipc.Rebuild(req, self.shard_entries(index))

    def shard_entries(self, index: int) -> list[ipc.Entry]:
        """The facts a restarted worker rebuilds its shard from."""
        out = []
        for s in self.by_id.values():
            if s.registered and s.client_id is not None and \
                    stable_hash(s.client_id) % self.routing_workers == index:
                out.append(ipc.Entry(s.client_id, FRONTEND_NAME, s.key,
                                     s.conn.peer_address, s.cert_der))
        return out

    def request_routing(self, client_id: str, make: MakeRequest,
                        cb: ReplyCallback | None) -> None:
        assert self.supervisor is not None
        slot = self.supervisor.slot_for("routing", stable_hash(client_id))
        self.supervisor.request(slot, make, cb)

    def admitted(self, s: Session) -> None:
        assert s.client_id is not None
        self.by_id[s.client_id] = s

    def unregister(self, s: Session) -> None:
        if not s.registered or s.client_id is None:
            return
        s.registered = False
        cid, key = s.client_id, s.key
        self.request_routing(cid, lambda req: ipc.Unregister(req, cid, FRONTEND_NAME, key),
                             None)

    def session_gone(self, s: Session) -> None:
        self.sessions.pop(s.key, None)
        if s.client_id is not None and self.by_id.get(s.client_id) is s:
            del self.by_id[s.client_id]
        self.unregister(s)
        if self.offers:
            self._drop_offers(s)
        for leg in list(s.legs.values()):
            if leg.bcast is not None:
                self.hub.member_gone(leg)
            self._release_slot(leg)
            other = leg.other
            if other is not None:
                self._end_out(other, wire.Code.PEER_GONE)
                self._end_in(other, wire.Code.PEER_GONE)
            elif leg.target is not None:
                self.start_waiting(leg.target)  # drops it, lets others go
        s.legs.clear()
        # Opens that waited for a slot toward this client fail.
        waiting, s.waiting = s.waiting, {}
        for queue in waiting.values():
            for leg in queue:
                leg.session.pending_opens -= 1
                leg.target = None
                self._abort(leg, wire.Code.NO_SUCH_PEER,
                            f"no client {wire.quote(s.client_id)} is connected")

    # -- channel introductions -------------------------------------------------------

    def channel_request(self, s: Session, msg: wire.ChannelRequest) -> None:
        def answer(code: int, reason: str = "") -> None:
            # The peer named is echoed only as far as an id can go.
            s.send_control(wire.ChannelIntro(msg.req, code, msg.peer[:wire.QUOTE_MAX],
                                             reason=reason))

        if msg.peer == s.client_id:
            answer(wire.Code.CHANNEL_TO_SELF)
            return
        if not is_valid_id(msg.peer):
            answer(wire.Code.NO_SUCH_PEER, f"no client {wire.quote(msg.peer)} is connected")
            return
        if s.pending_channels >= MAX_PENDING_CHANNELS:
            answer(wire.Code.TOO_MANY_STREAMS,
                   f"more than {MAX_PENDING_CHANNELS} channel introductions pending")
            return
        # Counted from the request until the offer is settled (answered,
        # expired or dropped), so a client cannot pile up offers at targets
        # that never answer.
        s.pending_channels += 1
        src, dst = s.client_id or "", msg.peer

        def routed(reply: WorkerReply) -> None:
            if s.state != "ready":
                s.pending_channels -= 1
                return
            entry = reply.entry if isinstance(reply, ipc.Reply) else None
            target = self.sessions.get(entry.conn) if entry is not None else None
            if entry is None or target is None or target.state != "ready" or \
                    target.client_id != dst:
                s.pending_channels -= 1
                answer(wire.Code.NO_SUCH_PEER, f"no client {wire.quote(dst)} is connected")
                return
            offer = self._next_offer
            self._next_offer += 1
            timer = self.loop.call_later(OFFER_TIMEOUT, self._offer_expired, offer)
            self.offers[offer] = (s, msg.req, entry, timer)
            target.send_control(wire.ChannelOffer(offer, src, s.cert_der,
                                                  s.conn.peer_address, msg.holepunch))

        self.request_routing(dst, lambda req: ipc.Lookup(req, src, dst), routed)

    def channel_answer(self, target: Session, msg: wire.ChannelAnswer) -> None:
        pending = self.offers.get(msg.offer)
        if pending is None or pending[2].conn != target.key:
            return  # late, or not this client's to answer
        del self.offers[msg.offer]
        opener, req, entry, timer = pending
        opener.pending_channels -= 1
        timer.cancel()
        if msg.code == 0:
            opener.send_control(wire.ChannelIntro(req, 0, entry.client_id, entry.cert,
                                                  entry.addr))
            # Remember who to tell once the opener says it is dialing.
            key = (opener.key, req)
            self.dialing[key] = (target.key, opener.client_id or "")
            self.loop.call_later(OFFER_TIMEOUT, self.dialing.pop, key, None)
        else:
            opener.send_control(wire.ChannelIntro(req, msg.code, entry.client_id))

    def channel_dialing(self, opener: Session, msg: wire.ChannelDialing) -> None:
        found = self.dialing.pop((opener.key, msg.req), None)
        if found is not None:
            target = self.sessions.get(found[0])
            if target is not None:
                target.send_control(wire.PeerDialing(found[1]))

    def _offer_expired(self, offer: int) -> None:
        pending = self.offers.pop(offer, None)
        if pending is not None:
            opener, req, entry, _ = pending
            opener.pending_channels -= 1
            opener.send_control(wire.ChannelIntro(
                req, wire.Code.PEER_GONE, entry.client_id,
                reason=f"{wire.quote(entry.client_id)} did not answer the introduction"))

    def _drop_offers(self, s: Session) -> None:
        for offer, (opener, req, entry, timer) in list(self.offers.items()):
            if opener is s:
                timer.cancel()
                del self.offers[offer]
            elif entry.conn == s.key:
                timer.cancel()
                del self.offers[offer]
                opener.pending_channels -= 1
                opener.send_control(wire.ChannelIntro(
                    req, wire.Code.NO_SUCH_PEER, entry.client_id,
                    reason=f"{wire.quote(entry.client_id)} left"))

    # -- proxied streams -----------------------------------------------------------

    def leg_data(self, leg: Leg, data: bytes, fin: bool) -> None:
        if leg.in_done:
            return
        if leg.head is not None:
            head = leg.head
            head += data
            if len(head) >= HEADER_SIZE:
                size = int.from_bytes(head[:HEADER_SIZE], "big")
                if size > HEADER_FRAME_MAX:
                    self._abort(leg, wire.Code.PROTOCOL, "stream header too large")
                    return
                if len(head) >= HEADER_SIZE + size:
                    raw = bytes(head[HEADER_SIZE:HEADER_SIZE + size])
                    rest = bytes(head[HEADER_SIZE + size:])
                    leg.head = None
                    leg.base = HEADER_SIZE + size
                    leg.session.conn.consume_to(leg.sid, leg.base)
                    self._open(leg, raw)
                    if leg.in_done:
                        return
                    data = rest
                else:
                    if fin:
                        self._abort(leg, wire.Code.PROTOCOL, "stream ended in its header")
                    return
            elif fin:
                self._abort(leg, wire.Code.PROTOCOL, "stream ended in its header")
                return
            else:
                return
        if leg.bcast is not None:
            leg.bcast.data(leg, data, fin)
            return
        if leg.other is None:
            if data:
                leg.pending.append(data)
            leg.pending_fin = leg.pending_fin or fin
            return
        self._forward(leg, data, fin)

    def _forward(self, leg: Leg, data: bytes, fin: bool) -> None:
        other = leg.other
        assert other is not None
        if data:
            try:
                frames = leg.scanner.feed(data)
            except FrameTooLarge as exc:
                self._abort(leg, wire.Code.MESSAGE_TOO_LARGE, str(exc))
                return
            if not other.out_done:
                other.session.conn.send(other.sid, data)
            leg.written += len(data)
            self.bytes_forwarded += len(data)
            self.messages_forwarded += frames
            self.credit(leg)
        if fin:
            if not leg.scanner.at_boundary:
                self._abort(leg, wire.Code.PROTOCOL, "stream ended inside a message")
                return
            leg.in_done = True
            if not other.out_done:
                other.out_done = True
                other.session.conn.send(other.sid, b"", end=True)
            self._maybe_forget(leg)
            self._maybe_forget(other)

    def credit(self, leg: Leg) -> None:
        """Credit `leg`'s window by what its destination has sent on."""
        other = leg.other
        if other is None:
            return
        oconn = other.session.conn
        unsent = 0 if oconn.closed else oconn.unsent(other.sid)
        leg.session.conn.consume_to(leg.sid, leg.base + leg.written - unsent)
        if unsent > 0 and not oconn.closed:
            oconn.watch_drain(other.sid, leg.on_drain)
        else:
            oconn.unwatch_drain(other.sid)

    def _open(self, leg: Leg, raw: bytes) -> None:
        s = leg.session
        try:
            hdr = wire.decode(raw)
        except ProtocolError as exc:
            self._abort(leg, wire.Code.PROTOCOL, str(exc))
            return
        if not isinstance(hdr, wire.StreamHeader) or hdr.kind == "direct":
            self._abort(leg, wire.Code.PROTOCOL,
                        "expected a proxied or broadcast stream header")
            return
        if not 0 <= hdr.n < MAX_STREAM_NUMBER:
            self._abort(leg, wire.Code.PROTOCOL, "stream number out of range")
            return
        if not s.used_numbers.add(hdr.n):
            self._abort(leg, wire.Code.STREAM_ID_IN_USE,
                        f"proxied stream number {hdr.n} was already used by this client")
            return
        leg.n = hdr.n
        leg.purpose = hdr.purpose
        if hdr.kind == "broadcast":
            if s.pending_opens >= MAX_PENDING_OPENS:
                self._abort(leg, wire.Code.TOO_MANY_STREAMS,
                            f"more than {MAX_PENDING_OPENS} streams waiting to open")
                return
            self.hub.join(leg, hdr.peer)
            return
        try:
            check_id(hdr.peer)
        except InvalidId:
            self._abort(leg, wire.Code.NO_SUCH_PEER,
                        f"no client {wire.quote(hdr.peer)} is connected")
            return
        if s.pending_opens >= MAX_PENDING_OPENS:
            self._abort(leg, wire.Code.TOO_MANY_STREAMS,
                        f"more than {MAX_PENDING_OPENS} streams waiting to open")
            return
        s.pending_opens += 1
        src, dst = s.client_id or "", hdr.peer
        self.request_routing(dst, lambda req: ipc.Lookup(req, src, dst),
                             lambda reply: self._routed(leg, dst, reply))

    def _routed(self, leg: Leg, dst: str, reply: WorkerReply) -> None:
        s = leg.session
        if leg.in_done or s.state == "closed":
            s.pending_opens -= 1
            return
        assert isinstance(reply, ipc.Reply)
        target = None
        if reply.code == 0 and reply.entry is not None:
            target = self.sessions.get(reply.entry.conn)
        if target is None or target.state != "ready" or target.client_id != dst:
            s.pending_opens -= 1
            code = reply.code or wire.Code.NO_SUCH_PEER
            self._abort(leg, code, f"no client {wire.quote(dst)} is connected"
                        if code == wire.Code.NO_SUCH_PEER else "")
            return
        queue = target.waiting.get(s.key)
        if queue or not self._has_slot(s, target):
            # Wait (still a pending open) until a stream of this pair ends or
            # the target's QUIC stream limit grows; the target sees nothing.
            leg.target = target
            if queue is None:
                queue = target.waiting[s.key] = deque()
            queue.append(leg)
            if not target.conn.quic.can_open_stream():
                target.conn.watch_drain(ROOM_WATCH, target.start_waiting)
            return
        s.pending_opens -= 1
        self._splice(leg, target)

    @staticmethod
    def _has_slot(s: Session, target: Session) -> bool:
        return s.open_to.get(target.key, 0) < MAX_STREAMS_PER_PAIR and \
            target.conn.quic.can_open_stream()

    def start_waiting(self, target: Session) -> None:
        """Open what waits toward `target` while slots and its QUIC stream
        limit allow, each opener's in order."""
        blocked_on_quic = False
        for key, queue in list(target.waiting.items()):
            while queue:
                leg = queue[0]
                s = leg.session
                if leg.in_done or leg.out_done or s.state == "closed":
                    queue.popleft()
                    s.pending_opens -= 1
                    continue
                if not target.conn.quic.can_open_stream():
                    blocked_on_quic = True
                    break
                if s.open_to.get(target.key, 0) >= MAX_STREAMS_PER_PAIR:
                    break
                queue.popleft()
                s.pending_opens -= 1
                leg.target = None
                self._splice(leg, target)
            if not queue:
                del target.waiting[key]
            if blocked_on_quic:
                break
        if blocked_on_quic:
            target.conn.watch_drain(ROOM_WATCH, target.start_waiting)
        else:
            target.conn.unwatch_drain(ROOM_WATCH)

    def _release_slot(self, leg: Leg) -> None:
        """A target leg is over: its opener may open another stream to it."""
        opener = leg.slot_of
        if opener is None:
            return
        leg.slot_of = None
        target = leg.session
        n = opener.open_to.get(target.key, 0) - 1
        if n > 0:
            opener.open_to[target.key] = n
        else:
            opener.open_to.pop(target.key, None)
        if target.waiting and target.state != "closed":
            self.start_waiting(target)

    def _splice(self, leg: Leg, target: Session) -> None:
        """Open the target's leg of a proxied stream and start relaying."""
        s = leg.session
        tconn = target.conn
        sid = tconn.new_stream_id()
        # The stream's limit is the smaller of both ends' (each already the
        # smaller of its own and ours): both ends learn it, so a sender
        # refuses what the receiver could not take, and both legs enforce it.
        limit = min(s.max_message_size, target.max_message_size)
        other = Leg(target, sid, limit)
        leg.scanner.max_size = limit
        target.legs[sid] = other
        other.other, leg.other = leg, other
        other.n = leg.n
        other.slot_of = s
        s.open_to[target.key] = s.open_to.get(target.key, 0) + 1
        tconn.send(sid, frame(wire.encode(wire.StreamHeader(
            "proxied", s.client_id or "", leg.n, purpose=leg.purpose,
            max_message_size=limit))))
        s.conn.send(leg.sid, frame(wire.encode(wire.StreamAccepted(limit))))
        self.streams_opened += 1
        # The header written to `other` does not count as forwarded data.
        pending, leg.pending = leg.pending, []
        data = b"".join(pending)
        if data or leg.pending_fin:
            self._forward(leg, data, leg.pending_fin)

    def leg_reset(self, leg: Leg, code: int) -> None:
        """The client at `leg` aborted its sending side."""
        if leg.bcast is not None:
            self.hub.stop_sending(leg)
            self._maybe_forget(leg)
            return
        leg.in_done = True
        other = leg.other
        if other is not None:
            self._end_out(other, code)
        elif leg.target is not None:
            self.start_waiting(leg.target)  # no longer waits for a slot
        self._maybe_forget(leg)

    def leg_stopped(self, leg: Leg, code: int) -> None:
        """The client at `leg` stopped reading (aioquic reset our sending side)."""
        if leg.bcast is not None:
            self.hub.stop_receiving(leg)
            self._maybe_forget(leg)
            return
        leg.out_done = True
        leg.session.conn.unwatch_drain(leg.sid)
        other = leg.other
        if other is not None:
            self._end_in(other, code)
        elif leg.target is not None:
            self.start_waiting(leg.target)  # no longer waits for a slot
        self._maybe_forget(leg)

    def _end_out(self, leg: Leg, code: int) -> None:
        if not leg.out_done:
            leg.out_done = True
            leg.session.conn.reset(leg.sid, code)
            leg.session.conn.unwatch_drain(leg.sid)
        self._maybe_forget(leg)

    def _end_in(self, leg: Leg, code: int) -> None:
        if not leg.in_done:
            leg.in_done = True
            leg.session.conn.stop(leg.sid, code)
        self._maybe_forget(leg)

    def _abort(self, leg: Leg, code: int, reason: str) -> None:
        """Reset both directions of a proxied stream (both legs)."""
        log.debug("resetting stream %d of %s: %s", leg.sid, leg.session.client_id, reason)
        self._end_in(leg, code)
        self._end_out(leg, code)
        other = leg.other
        if other is not None:
            self._end_in(other, code)
            self._end_out(other, code)

    def abort(self, leg: Leg, code: int, reason: str) -> None:
        self._abort(leg, code, reason)

    def reset_leg(self, leg: Leg, code: int) -> None:
        """End both directions of one leg with `code`."""
        self._end_in(leg, code)
        self._end_out(leg, code)

    def finish_leg(self, leg: Leg) -> None:
        """Cleanly end what this leg's client reads."""
        if not leg.out_done:
            leg.out_done = True
            leg.session.conn.send(leg.sid, b"", end=True)
        self._maybe_forget(leg)

    def _maybe_forget(self, leg: Leg) -> None:
        if leg.in_done and leg.out_done:
            s = leg.session
            if s.legs.pop(leg.sid, None) is not None:
                s.conn.forget_stream(leg.sid)
            self._release_slot(leg)

    # -- figures -------------------------------------------------------------------

    def num_clients(self) -> int:
        return len(self.by_id)

    def num_broadcasts(self) -> int:
        return len(self.hub.broadcasts)

    def num_streams(self) -> int:
        return sum(len(s.legs) for s in self.sessions.values()) // 2
