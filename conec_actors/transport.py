"""Datagram endpoint and connection driver, shared by clients and the
Coordinator's front-end.

One `Endpoint` owns one UDP socket and demultiplexes datagrams by connection
id onto `Conn`s: client connections it dialled and server connections it
accepted alike (so a client's NAT mapping toward the Coordinator also serves
its direct channels). `Conn` is a thin driver around `ConecQuicConnection`:
it feeds datagrams, re-arms one timer, coalesces transmits to once per loop
turn, and hands events to a `ConnHandler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from ._quic import CONNECTION_ID_LENGTH, ConecQuicConnection, PacketInfo, RetryGate, parse_packet
from .endpoint_rules import (
    RETRY_OFF,
    RETRY_ON,
    Accept,
    Addr,
    Admission,
    RetryMode,
    StatelessResets,
    normalize_address,
    unmap_address,
)
from .udp import DEFAULT_TTL, make_socket

__all__ = [  # the names other modules import from here
    "DRAIN_EVERY", "HANDSHAKE_TIMEOUT", "READ_BATCH", "RETRY_OFF", "RETRY_ON",
    "Addr", "Conn", "ConnHandler", "Endpoint", "RetryMode", "ServerSettings", "unmap_address",
]

log = logging.getLogger(__name__)

#: Seconds an accepted connection has to complete its handshake before it is
#: dropped: a peer that sends Initials and never finishes holds no state
#: longer than this.
HANDSHAKE_TIMEOUT = 5.0
#: Datagrams read per wake-up of the socket, under load.
READ_BATCH = 32
#: While traffic is light, one wake-up in this many still drains the socket.
DRAIN_EVERY = 8


class ConnHandler(Protocol):
    """What a `Conn` tells its owner. Every method runs in the event loop."""

    def handshake_completed(self, conn: Conn) -> None: ...
    def stream_data(self, conn: Conn, quic_id: int, data: bytes, fin: bool) -> None: ...
    def stream_reset(self, conn: Conn, quic_id: int, code: int) -> None: ...
    def stop_sending(self, conn: Conn, quic_id: int, code: int) -> None: ...
    def terminated(self, conn: Conn, code: int, reason: str) -> None: ...


class Conn:
    """One QUIC connection on an endpoint. A `quic_id` is a stream's id on
    this connection (aioquic's `stream_id`), not the `StreamId` both ends
    give a stream."""

    def __init__(self, endpoint: Endpoint, quic: ConecQuicConnection, addr: Addr,
                 handler: ConnHandler | None) -> None:
        self.endpoint = endpoint
        self.quic = quic
        self.addr = addr
        self.handler = handler
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._loop = endpoint.loop
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None  # when `_timer` fires (None: no timer)
        self._transmit_handle: asyncio.Handle | None = None
        self._sent_this_turn = False
        self._drain: dict[int, Callable[[], None]] = {}
        self._on_room: Callable[[], None] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._keepalive_interval = 0.0
        self._handshake_deadline: asyncio.TimerHandle | None = None
        self._gone = False  # terminated: nothing more is sent or scheduled
        #: The connection ids the endpoint routes to this connection.
        self.cids: set[bytes] = set()
        self._handshake_waiter: asyncio.Future[None] = self._loop.create_future()

    # -- driving -----------------------------------------------------------

    def receive(self, data: bytes, addr: Addr) -> None:
        self.quic.receive_datagram(data, addr, now=self._loop.time())
        self._process()

    def _on_timer(self) -> None:
        self._timer = None
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer_at = None
        self.quic.handle_timer(now=now)
        self._process()

    def _process(self) -> None:
        quic = self.quic
        ev = quic.next_event()
        while ev is not None:
            self._dispatch(ev)
            ev = quic.next_event()
        if self._drain:
            for cb in list(self._drain.values()):
                cb()
        if self._on_room is not None and quic.can_open_stream():
            room, self._on_room = self._on_room, None
            room()
        closed = quic.peer_closed()
        if closed is not None:
            # Nothing more can be sent or received: forget it now rather
            # than after the draining period, so the peer's id is free at once.
            self._terminated(*closed)
            return
        self.transmit_soon()

    def _dispatch(self, ev: events.QuicEvent) -> None:
        h = self.handler
        if isinstance(ev, events.StreamDataReceived):
            if h is not None and not self.closed:
                h.stream_data(self, ev.stream_id, ev.data, ev.end_stream)
        elif isinstance(ev, events.StreamReset):
            if h is not None and not self.closed:
                h.stream_reset(self, ev.stream_id, ev.error_code)
        elif isinstance(ev, events.StopSendingReceived):
            if h is not None and not self.closed:
                h.stop_sending(self, ev.stream_id, ev.error_code)
        elif isinstance(ev, events.HandshakeCompleted):
            self.quic.release_handshake_memory()
            self.endpoint._half_open.discard(self)
            if self._handshake_deadline is not None:
                self._handshake_deadline.cancel()
                self._handshake_deadline = None
            if not self._handshake_waiter.done():
                self._handshake_waiter.set_result(None)
            if h is not None and not self.closed:
                h.handshake_completed(self)
        elif isinstance(ev, events.ConnectionIdIssued):
            self.endpoint._route(ev.connection_id, self)
        elif isinstance(ev, events.ConnectionIdRetired):
            self.endpoint._unroute(ev.connection_id, self)
        elif isinstance(ev, events.ConnectionTerminated):
            self._terminated(ev.error_code, ev.reason_phrase)

    def _terminated(self, code: int, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self.closed = True
        self.endpoint._forget(self)
        for handle in (self._timer, self._keepalive, self._transmit_handle,
                       self._handshake_deadline):
            if handle is not None:
                handle.cancel()
        self._timer = self._timer_at = self._transmit_handle = None
        self._handshake_deadline = None
        self._drain.clear()
        self._on_room = None
        if not self._handshake_waiter.done():
            self._handshake_waiter.set_exception(ConnectionError(reason or f"code {code}"))
            self._handshake_waiter.exception()  # mark retrieved
        h = self.handler
        if h is not None:
            h.terminated(self, self.close_code, self.close_reason)

    def transmit(self) -> None:
        self._transmit_handle = None
        if self._gone:
            # A terminated connection must not re-arm its timer: that would
            # keep an aborted (junk) connection alive until its idle timeout.
            return
        sendto = self.endpoint.sendto
        for data, addr in self.quic.datagrams_to_send(now=self._loop.time()):
            sendto(data, addr)
        timer_at = self.quic.get_timer()
        if timer_at is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
        elif self._timer_at is None or timer_at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(timer_at, self._on_timer)
            self._timer_at = timer_at
        # A later deadline keeps the armed timer: firing early is harmless
        # (aioquic checks each deadline against `now`, `_on_timer` re-arms),
        # and every packet sent moves the loss timer later; re-arming on each
        # would cost a cancelled handle per packet.

    def transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    # -- API for owners ----------------------------------------------------

    async def wait_handshake(self) -> None:
        await asyncio.shield(self._handshake_waiter)

    def send(self, quic_id: int, data: bytes, end: bool = False) -> None:
        try:
            self.quic.send_stream_data(quic_id, data, end_stream=end)
        except (RuntimeError, ValueError) as exc:
            # The sending side is over: the peer stopped the stream (aioquic
            # resets it while parsing STOP_SENDING, before we hear of it), or
            # it was reset or finished (RuntimeError), or it is not ours to
            # write (ValueError: a peer's unidirectional stream, which
            # aioquic refuses anyway since none are granted). Nothing can
            # carry these bytes.
            log.debug("write to stream %d dropped: %s", quic_id, exc)
            return
        if self._transmit_handle is None and not self._sent_this_turn:
            # An idle connection sends at once (no loop turn of delay for a
            # lone message); further writes in this turn are batched.
            self._sent_this_turn = True
            self._loop.call_soon(self._new_turn)
            self.transmit()
        else:
            self.transmit_soon()

    def _new_turn(self) -> None:
        self._sent_this_turn = False

    def reset(self, quic_id: int, code: int) -> None:
        """Abort the sending side of a stream (no-op if it is over)."""
        with contextlib.suppress(ValueError, AssertionError, KeyError):
            if self.quic.can_send(quic_id):
                self.quic.reset_stream(quic_id, code)
                self.transmit_soon()

    def stop(self, quic_id: int, code: int) -> None:
        """Ask the peer to stop sending on a stream (no-op if it is over)."""
        with contextlib.suppress(ValueError, AssertionError, KeyError):
            self.quic.stop_stream(quic_id, code)
            self.transmit_soon()

    def consume(self, quic_id: int, nbytes: int) -> None:
        if self.quic.consume(quic_id, nbytes):
            self.transmit_soon()

    def consume_to(self, quic_id: int, offset: int) -> None:
        # Transmit only when a window update is due: reading a message must
        # not schedule a send ahead of the reader's own reply.
        if self.quic.consume_to(quic_id, offset):
            self.transmit_soon()

    def unsent(self, quic_id: int) -> int:
        return self.quic.unsent(quic_id)

    def set_stream_window(self, quic_id: int, window: int) -> None:
        self.quic.set_stream_window(quic_id, window)

    def new_stream_id(self) -> int:
        return self.quic.next_stream_id()

    def forget_stream(self, quic_id: int) -> None:
        self._drain.pop(quic_id, None)
        if self.quic.forget_stream(quic_id):
            self.transmit_soon()

    def watch_drain(self, quic_id: int, cb: Callable[[], None]) -> None:
        """Call `cb` after every datagram or timer while watched (ACKs drain
        unsent data)."""
        self._drain[quic_id] = cb

    def unwatch_drain(self, quic_id: int) -> None:
        self._drain.pop(quic_id, None)

    def on_stream_room(self, cb: Callable[[], None] | None) -> None:
        """Call `cb` once, after the datagram that lets us open another
        stream (the peer raised its stream limit); None forgets it. One
        callback at a time: a new one replaces the last."""
        self._on_room = cb

    def close(self, code: int = 0, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self.quic.close(error_code=code, reason_phrase=reason)
        self.transmit()

    def abort(self) -> None:
        """Forget the connection at once, without telling the peer."""
        self.closed = True
        self._terminated(self.close_code or 0, self.close_reason or "aborted")

    def start_keepalive(self, interval: float) -> None:
        """Send a PING every `interval` seconds (a third of the idle timeout)."""
        self._keepalive_interval = interval
        self._schedule_keepalive()

    def _schedule_keepalive(self) -> None:
        if self.closed or self._keepalive_interval <= 0:
            return
        self._keepalive = self._loop.call_later(self._keepalive_interval, self._ping)

    def _ping(self) -> None:
        if self.closed:
            return
        self.quic.send_ping(0)
        self.transmit()
        self._schedule_keepalive()

    @property
    def peer_address(self) -> tuple[str, int]:
        return unmap_address(self.addr)


@dataclass
class ServerSettings:
    """How an endpoint accepts connections."""

    configuration: QuicConfiguration
    stream_window: int
    accept: Callable[[Conn], ConnHandler]
    retry: RetryMode = "auto"
    request_client_certificate: bool = True
    #: (k, n): this endpoint is front-end shard k of n; every connection id
    #: it issues names k (`shard_ids`)
    shard: tuple[int, int] | None = None
    #: the Retry token key, shared by all shards (`RetryGate.new_key`)
    retry_key: bytes | None = None
    #: the stateless reset key (tokens of our ids), shared by all shards (`StatelessResets.new_key`)
    reset_key: bytes | None = None


class Endpoint:
    """One UDP socket holding client and server QUIC connections.

    The socket is read directly (not through an asyncio transport). Under
    load each wake-up drains up to READ_BATCH datagrams, so the connections
    it touched transmit once per batch instead of once per datagram. While
    traffic is light (a drain finds at most one datagram) it reads one
    datagram per wake-up and does not look for more: asking an empty UDP
    socket for another datagram was measured to add ~30 us to a loopback
    round trip, though the failed read itself costs ~1 us here. epoll is
    level-triggered, so whatever is left wakes the loop again; every
    DRAIN_EVERY-th wake-up drains, which is how load is noticed.
    """

    def __init__(self, sock: socket.socket, server: ServerSettings | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = server
        self.sock = sock
        self.family = sock.family
        self._cids: dict[bytes, Conn] = {}
        self._conns: set[Conn] = set()
        self._half_open: set[Conn] = set()
        self._dialled: set[Conn] = set()  # client connections: those a reset may end
        self._resets: StatelessResets | None = None  # made with `server.reset_key`
        self._admission = Admission(
            RetryGate(server.retry_key, server.shard) if server is not None else None)
        self._light = True
        self._light_wakeups = 0
        self._closed = False
        self.retries_sent = 0
        self.junk_dropped = 0
        self.handshakes_expired = 0
        #: handshakes expired that nothing else had refused (counted and
        #: logged as refusals)
        self.handshakes_refused = 0
        self.send_dropped = 0
        self.resets_sent = self.resets_limited = 0  # stateless resets: sent, over the rate
        self.loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def bind(cls, host: str | None, port: int,
                   server: ServerSettings | None = None) -> Endpoint:
        """Bind a UDP socket. `host=None` binds dual-stack (or IPv4 only where
        IPv6 is unavailable)."""
        return cls(make_socket(host, port), server)

    @property
    def local_address(self) -> tuple[str, int]:
        return unmap_address(self.sock.getsockname())

    @property
    def connections(self) -> set[Conn]:
        return self._conns

    def normalize(self, addr: Addr) -> Addr:
        """Address as this socket reports peers (mapped IPv4 on dual stack)."""
        return normalize_address(addr, self.family == socket.AF_INET6)

    def sendto(self, data: bytes, addr: Addr) -> None:
        if self._closed:
            return
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            # A full socket buffer is loss to QUIC: it retransmits.
            self.send_dropped += 1
        except OSError as exc:
            log.debug("UDP send to %s failed: %s", addr, exc)

    def sendto_ttl(self, data: bytes, addr: Addr, ttl: int | None) -> None:
        """Send one datagram with a given IP TTL / hop limit (None: the
        system's), then restore the socket's default."""
        if ttl is None:
            self.sendto(data, addr)
            return
        levels = [(socket.IPPROTO_IP, socket.IP_TTL)]
        if self.family == socket.AF_INET6:
            levels.append((socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS))
        for level, opt in levels:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(level, opt, ttl)
        try:
            self.sendto(data, addr)
        finally:
            for level, opt in levels:
                with contextlib.suppress(OSError):
                    # -1 restores the default hop limit; IP_TTL needs a value
                    self.sock.setsockopt(level, opt, -1 if opt != socket.IP_TTL
                                         else DEFAULT_TTL)

    def _on_readable(self) -> None:
        limit = READ_BATCH
        if self._light:
            self._light_wakeups += 1
            if self._light_wakeups < DRAIN_EVERY:
                limit = 1
        recvfrom = self.sock.recvfrom
        n = 0
        for _ in range(limit):
            if self._closed:
                return
            try:
                data, addr = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP errors (port unreachable...) are expected on UDP; QUIC's
                # own timers decide whether a peer is gone.
                log.debug("UDP receive error: %s", exc)
                continue
            n += 1
            self.datagram_received(data, addr)
        if limit > 1:
            self._light = n <= 1
            self._light_wakeups = 0

    # -- dialling ------------------------------------------------------------

    def connect(self, addr: Addr, configuration: QuicConfiguration, handler: ConnHandler,
                stream_window: int, **quic_options: Any) -> Conn:
        """Start a client connection toward `addr` on this socket
        (`quic_options` go to the `QuicConnection`, e.g. a session ticket
        handler in tests)."""
        assert configuration.is_client
        assert configuration.connection_id_length == CONNECTION_ID_LENGTH
        quic = ConecQuicConnection(configuration=configuration, stream_window=stream_window,
                                   **quic_options)
        addr = self.normalize(addr)
        conn = Conn(self, quic, addr, handler)
        self._conns.add(conn)
        self._dialled.add(conn)
        self._route(quic.host_cid, conn)
        quic.connect(addr, now=self.loop.time())
        conn.transmit()
        return conn

    # -- receiving -------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if len(data) > CONNECTION_ID_LENGTH and not data[0] & 0x80:
            # Short header: the connection id follows the first byte.
            known = self._cids.get(data[1:1 + CONNECTION_ID_LENGTH])
            if known is not None:
                known.receive(data, addr)
            else:
                self._unknown_id(data, addr)
            return
        pkt = parse_packet(data)
        if pkt is None:
            return
        conn = self._cids.get(pkt.dcid)
        if conn is not None:
            conn.receive(data, addr)
            return
        server = self.server
        if server is None:
            return
        verdict = self._admission.consider(
            pkt, len(data), addr, self.loop.time(),
            versions=server.configuration.supported_versions, retry=server.retry,
            half_open=len(self._half_open))
        if isinstance(verdict, Accept):
            self._accept(pkt, data, addr, server, verdict)
        elif verdict is not None:
            if verdict.is_retry:
                self.retries_sent += 1
            self.sendto(verdict.data, addr)

    def _accept(self, pkt: PacketInfo, data: bytes, addr: Addr, server: ServerSettings,
                verdict: Accept) -> None:
        quic = ConecQuicConnection(
            configuration=server.configuration, stream_window=server.stream_window,
            request_client_certificate=server.request_client_certificate,
            original_destination_connection_id=verdict.original_dcid,
            retry_source_connection_id=verdict.retry_scid, shard=server.shard,
            reset_key=server.reset_key)
        conn = Conn(self, quic, addr, None)
        self._conns.add(conn)
        self._half_open.add(conn)
        self._route(pkt.dcid, conn)
        self._route(quic.host_cid, conn)
        # The first datagram cannot complete a handshake or carry streams, so
        # the owner only hears of the connection once it proved to be real.
        conn.receive(data, addr)
        if not quic.received_valid_packet():
            # A well-formed header around junk: keep no state for it.
            self.junk_dropped += 1
            conn.abort()
            return
        conn.handler = server.accept(conn)
        conn._handshake_deadline = self.loop.call_later(
            HANDSHAKE_TIMEOUT, self._handshake_expired, conn)

    def _handshake_expired(self, conn: Conn) -> None:
        conn._handshake_deadline = None
        if conn in self._half_open:
            self.handshakes_expired += 1
            if not conn.closed:  # else its owner refused it already, and said so
                self.handshakes_refused += 1
                host, port = conn.peer_address
                address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                log.info("refused connection from %s: handshake_timeout: no handshake "
                         "within %.0f s", address, HANDSHAKE_TIMEOUT,
                         extra={"reason": "handshake_timeout", "address": address,
                                "client_id": None})
            conn.abort()

    def _unknown_id(self, data: bytes, addr: Addr) -> None:
        """A short header for no connection here: a stateless reset (RFC 9000
        10.3.1: a random id, a token at the end) for one we dialled, or late
        packets of one we lost (a server with a reset key answers), or junk."""
        now = self.loop.time()
        for conn in self._dialled:
            if conn.addr == addr and conn.quic.receive_stateless_reset(data, now):
                conn._process()  # it terminates
                return
        key = self.server.reset_key if self.server is not None else None
        if key is not None:
            if self._resets is None or self._resets.key is not key:
                self._resets = StatelessResets(key)  # a client's `server` comes late
            reply = self._resets.consider(data, now)
            self.resets_sent, self.resets_limited = self._resets.sent, self._resets.limited
            if reply is not None:
                self.sendto(reply, addr)

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def _forget(self, conn: Conn) -> None:
        self._conns.discard(conn)
        self._half_open.discard(conn)
        self._dialled.discard(conn)
        for cid in conn.cids:
            if self._cids.get(cid) is conn:
                del self._cids[cid]
        conn.cids.clear()

    def _route(self, cid: bytes, conn: Conn) -> None:
        self._cids[cid] = conn
        conn.cids.add(cid)

    def _unroute(self, cid: bytes, conn: Conn) -> None:
        if self._cids.get(cid) is conn:
            del self._cids[cid]
        conn.cids.discard(cid)

    def close(self) -> None:
        if self._closed:
            return
        for conn in list(self._conns):
            conn.abort()
        self._closed = True
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
