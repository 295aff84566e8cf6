"""The Coordinator's front-end: terminates QUIC, admits clients, introduces
channels; proxied streams (`proxy`) and broadcasts (`fanout`) are carried here.

Runs in the process and event loop that called `Coord.start`. Control-plane
decisions (admission, where a peer is) go to routing workers through the
`Supervisor`; payload never leaves this process. Each connection's decisions
are made by its `SessionCore`; `Session` only carries out its actions on the
connection, the timer and the workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from .. import heap, wire
from ..errors import CertificateError
from ..framing import frame
from ..tlsconf import check_chain, der
from ..transport import Conn, Endpoint
from . import ipc, session, watches
from .control_plane import ControlPlane
from .fanout import BroadcastHub, MemberLeg
from .lag import LagMeter
from .legs import Leg
from .metrics import ClientFigures, format_address
from .proxy import HeaderLeg, ProxiedLeg, Relay
from .session import Limits, SessionCore, State
from .tunnel import TunnelLeg, Tunnels

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)


class Session:
    """The front-end's side of one client connection (a `ConnHandler`):
    drives its `SessionCore`."""

    def __init__(self, fe: FrontEnd, conn: Conn, conn_key: int) -> None:
        self.fe = fe
        self.conn = conn
        self.legs: dict[int, Leg] = {}
        self.core = SessionCore(conn_key, conn.peer_address, fe.limits, self._verify_name)
        self._timer: asyncio.TimerHandle | None = None
        self.since = time.time()  # connected since (unix seconds)
        self.execute(self.core.start(fe.loop.time()))

    @property
    def conn_key(self) -> int:
        return self.core.conn_key

    @property
    def client_id(self) -> str | None:
        return self.core.client_id

    @property
    def max_message_size(self) -> int:
        return self.core.max_message_size

    def _verify_name(self, client_id: str) -> None:
        quic = self.conn.quic
        check_chain(quic.peer_certificate(), quic.peer_chain(), self.fe.client_ca, client_id)

    # -- ConnHandler -------------------------------------------------------------

    def handshake_completed(self, conn: Conn) -> None:
        cert = conn.quic.peer_certificate()
        try:
            check_chain(cert, conn.quic.peer_chain(), self.fe.client_ca)
        except CertificateError as exc:
            self.execute(self.core.handshake_done(None, str(exc)))
            return
        assert cert is not None
        self.execute(self.core.handshake_done(der(cert)))

    def stream_data(self, conn: Conn, quic_id: int, data: bytes, fin: bool) -> None:
        leg = self.legs.get(quic_id)
        if leg is not None:  # the per-packet path
            leg.data(data, fin)
            return
        core = self.core
        if quic_id != core.control_quic_id:
            self.execute(core.new_stream(quic_id))
            if quic_id != core.control_quic_id:
                leg = self.legs.get(quic_id)
                if leg is not None:
                    leg.data(data, fin)
                return
        self.execute(core.control_data(data, fin))
        self.control_run()

    def stream_reset(self, conn: Conn, quic_id: int, code: int) -> None:
        leg = self.legs.get(quic_id)
        if leg is not None:
            leg.reset(code)
        else:
            self.execute(self.core.stream_reset(quic_id))

    def stop_sending(self, conn: Conn, quic_id: int, code: int) -> None:
        leg = self.legs.get(quic_id)
        if leg is not None:
            leg.stopped(code)

    def terminated(self, conn: Conn, code: int, reason: str) -> None:
        self.execute(self.core.terminated())
        self.fe.session_gone(self, watches.verdict(code))

    # -- driving the core ------------------------------------------------------------

    def control_run(self) -> None:
        """Act on parked control messages while the client reads its replies."""
        core = self.core
        quic_id = core.control_quic_id
        if quic_id is None:
            return
        conn = self.conn
        while (acts := core.step_control(conn.unsent(quic_id))) is not None:
            self.execute(acts)
        self.execute(core.control_settled())

    def request_done(self) -> None:
        """A control request's answer came back from a worker."""
        if self.core.request_done():
            self.control_run()

    def send_control(self, msg: wire.Control) -> None:
        core = self.core
        if core.state is not State.CLOSED and core.control_quic_id is not None:
            self.conn.send(core.control_quic_id, frame(wire.encode(msg)))

    def _timer_fired(self) -> None:
        self._timer = None
        self.execute(self.core.timer_fired(self.fe.loop.time()))

    def execute(self, actions: list[session.Action]) -> None:
        """Carry out what the core decided, in order."""
        for act in actions:
            if isinstance(act, session.SendControl):
                self.send_control(act.msg)
            elif isinstance(act, session.Handle):
                self.fe.handle(self, act.msg)
            elif isinstance(act, session.CreditControl):
                assert self.core.control_quic_id is not None
                self.conn.consume_to(self.core.control_quic_id, act.offset)
            elif isinstance(act, session.WatchControl):
                assert self.core.control_quic_id is not None
                if act.on:
                    self.conn.watch_drain(self.core.control_quic_id, self.control_run)
                else:
                    self.conn.unwatch_drain(self.core.control_quic_id)
            elif isinstance(act, session.NewLeg):
                self.legs[act.quic_id] = HeaderLeg(self, act.quic_id, self.fe.relay)
            elif isinstance(act, session.RejectStream):
                self.conn.stop(act.quic_id, act.code)
                self.conn.reset(act.quic_id, act.code)
            elif isinstance(act, session.CloseConnection):
                self._record_close(act)
                self.conn.close(act.code, act.reason)
            elif isinstance(act, session.ArmTimer):
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self.fe.loop.call_at(act.deadline, self._timer_fired)
            elif isinstance(act, session.CancelTimer):
                self.cancel_timer()
            elif isinstance(act, session.Register):
                self._register(act.entry)
            elif isinstance(act, session.Unregister):
                self._unregister(act.client_id, act.conn_key)
            elif isinstance(act, session.Admit):
                self.fe.by_id[self.core.client_id or ""] = self
                self.conn.quic.set_max_datagram_size(act.datagram_size)
            elif isinstance(act, session.ReplaceStale):
                self.fe.replace_stale(act.conn_key)

    def _record_close(self, act: session.CloseConnection) -> None:
        """Log a close the core decided; count it if it refuses the client."""
        address = format_address(*self.conn.peer_address)
        cid = self.core.client_id
        refusal = self.core.refusal
        if refusal is None:
            log.info("closing connection of %s from %s: %s (%#x)", wire.quote(cid), address,
                     act.reason, act.code,
                     extra={"reason": wire.describe(act.code), "address": address,
                            "client_id": cid})
            return
        # The one line for a refused connection (the core refuses only once).
        self.fe.refused[refusal] = self.fe.refused.get(refusal, 0) + 1
        log.info("refused connection from %s%s: %s: %s", address,
                 f" (id {wire.quote(cid)})" if cid is not None else "", refusal, act.reason,
                 extra={"reason": refusal, "address": address, "client_id": cid})

    def figures(self) -> ClientFigures:
        """This client's figures for /clients."""
        core = self.core
        b_in, m_in, b_out, m_out = (core.bytes_in, core.messages_in, core.bytes_out,
                                    core.messages_out)
        for leg in self.legs.values():
            bi, mi, bo, mo = leg.figures()
            b_in, m_in, b_out, m_out = b_in + bi, m_in + mi, b_out + bo, m_out + mo
        return ClientFigures(
            id=core.client_id or "", address=format_address(*self.conn.peer_address),
            shard=self.fe.shard[0], connected_since=self.since, streams=len(self.legs),
            bytes_in=b_in, bytes_out=b_out, messages_in=m_in, messages_out=m_out,
            rtt_seconds=self.conn.quic.smoothed_rtt)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _register(self, entry: ipc.Entry) -> None:
        self.fe.request_routing(entry.client_id, lambda req: ipc.Register(req, entry),
                                self._admitted)

    def _unregister(self, cid: str, key: int) -> None:
        name = self.fe.limits.frontend
        self.fe.request_routing(cid, lambda req: ipc.Unregister(req, cid, name, key),
                                None)

    def _admitted(self, reply: ipc.WorkerReply) -> None:
        assert isinstance(reply, ipc.Reply)
        held = reply.entry  # another connection's: the stale one this replaced
        # On this shard or another (conn_key % n): the core decides, the
        # control plane closes it where it is.
        stale = held.conn_key if held is not None else None
        self.execute(self.core.admitted(reply.code, stale))


class Requests(Protocol):
    """Where the front-end's control requests go: the supervisor of its
    workers, or a shard's link to the Coordinator that holds them."""

    def request_for(self, kind: str, key: str, make: ipc.MakeRequest,
                    cb: ipc.ReplyCallback | None) -> int: ...


class FrontEnd:
    """All sessions and proxied streams of one front-end (the Coordinator's
    process, or shard k of n)."""

    def __init__(self, *, client_ca: bytes | None, max_message_size: int,
                 max_datagram_size: int, idle_timeout: float, routing_workers: int,
                 broadcast_workers: int = 1, shard: tuple[int, int] = (0, 1),
                 start: int = 0, base: int = 0) -> None:
        self.loop = asyncio.get_running_loop()
        self.client_ca = client_ca
        self.shard = shard
        self.limits = Limits(max_message_size, max_datagram_size, idle_timeout,
                             f"fe{shard[0]}")
        self.routing_workers = routing_workers
        self.endpoint: Endpoint | None = None
        self.requests: Requests | None = None
        self.sessions: dict[int, Session] = {}
        self.by_id: dict[str, Session] = {}
        # Connection keys are unique among the shards: key % n is its shard;
        # a restarted shard starts further on (`start`), so no key of its
        # predecessor's comes back; in a federation, `base` (`peers.Peers`)
        # sets them apart from other Coordinators'.
        self._next_key = base + start * shard[1] + shard[1] + shard[0]
        self.tunnels: Tunnels | None = None
        self.hub = BroadcastHub(self._request_broadcast, broadcast_workers)
        self.relay = Relay(self.sessions.get, self.hub, self.request_routing)
        self.plane = ControlPlane(self.loop, self.sessions, self.by_id, self.request_routing,
                                  self.hub.count, shard, start, base)
        self.connections_accepted = 0
        self.refused: dict[str, int] = {}  # connections refused, by `session.REFUSALS`
        self.lag = LagMeter()
        self._lag_timer = self.loop.call_at(self.lag.start(self.loop.time()), self._lag_tick)
        self._trim_timer = self.loop.call_later(heap.TRIM_INTERVAL, self._trim)

    # -- wiring ------------------------------------------------------------------

    def accept(self, conn: Conn) -> Session:
        key = self._next_key
        self._next_key += self.shard[1]
        self.connections_accepted += 1
        s = Session(self, conn, key)
        self.sessions[key] = s
        return s

    def close(self) -> None:
        """Cancel every timer the front-end armed (the Coordinator stops)."""
        for s in self.sessions.values():
            s.cancel_timer()
        self._lag_timer.cancel()
        self._trim_timer.cancel()
        self.plane.close()

    def _trim(self) -> None:
        heap.trim()
        self._trim_timer = self.loop.call_later(heap.TRIM_INTERVAL, self._trim)

    def _lag_tick(self) -> None:
        self._lag_timer = self.loop.call_at(self.lag.fired(self.loop.time()), self._lag_tick)

    def rebuild(self, kind: str, index: int, req: int) -> ipc.ToWorker:
        """The message a (re)started worker rebuilds its shard from."""
        if kind == "broadcast":
            return self.hub.rebuild(index, req)
        return ipc.Rebuild(req, [
            s.core.entry() for s in self.by_id.values()
            if s.core.registered and s.client_id is not None
            and ipc.shard_of(s.client_id, self.routing_workers) == index])

    def request_routing(self, client_id: str, make: ipc.MakeRequest,
                        cb: ipc.ReplyCallback | None) -> None:
        assert self.requests is not None
        self.requests.request_for("routing", client_id, make, cb)

    def _request_broadcast(self, name: str, make: ipc.MakeRequest,
                           cb: ipc.ReplyCallback) -> None:
        assert self.requests is not None
        self.requests.request_for("broadcast", name, make, cb)

    def replace_stale(self, key: int) -> None:
        """A client reconnected with the certificate connection `key` holds
        its id with: close that stale connection (its id stays connected)."""
        self.plane.replace_stale(key)

    def session_gone(self, s: Session, reason: watches.Reason) -> None:
        self.sessions.pop(s.conn_key, None)
        admitted = s.client_id is not None and self.by_id.get(s.client_id) is s
        if admitted:
            del self.by_id[s.client_id or ""]
        self.plane.leaving(s)
        for leg in list(s.legs.values()):
            leg.session_gone()
        s.legs.clear()
        self.relay.target_gone(s)
        if self.tunnels is not None:
            self.tunnels.session_gone(s)
        self.plane.left(s, admitted, reason)

    def handle(self, s: Session, msg: session.Request) -> None:
        """A request of an admitted client that its core passed on."""
        self.plane.handle(s, msg)

    @property
    def watches(self) -> watches.Watches:
        return self.plane.watches

    # -- figures -------------------------------------------------------------------

    @property
    def bytes_forwarded(self) -> int:
        return self.relay.bytes_forwarded + self.hub.bytes_forwarded

    @property
    def messages_forwarded(self) -> int:
        return self.relay.messages_forwarded + self.hub.messages_forwarded

    @property
    def streams_opened(self) -> int:
        return self.relay.streams_opened

    def num_clients(self) -> int:
        return len(self.by_id)

    def num_broadcasts(self) -> int:
        return len(self.hub.broadcasts)

    def _legs(self) -> Iterator[Leg]:
        """Every leg carried here: of this shard's clients (but those only
        moved to another shard) and of other shards' clients."""
        for s in self.sessions.values():
            yield from s.legs.values()
        if self.tunnels is not None:
            for r in self.tunnels.remote.values():
                yield from r.legs.values()

    def num_streams(self) -> int:
        """Streams carried here (a proxied one counts where it is spliced)."""
        return sum(1 for leg in self._legs() if not isinstance(leg, TunnelLeg)) // 2

    def streams_by_kind(self) -> dict[str, int]:
        """Streams carried now: proxied (two legs each) and broadcast members."""
        legs = members = 0
        for leg in self._legs():
            if isinstance(leg, MemberLeg):
                members += 1
            elif isinstance(leg, ProxiedLeg) and leg.other is not None:
                legs += 1
        return {"proxied": legs // 2, "broadcast": members}

    @property
    def writers_paused(self) -> int:
        return self.relay.writers_paused + self.hub.writers_paused

    @property
    def writers_resumed(self) -> int:
        return self.relay.writers_resumed + self.hub.writers_resumed
