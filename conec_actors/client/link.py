"""A client's connections: the one to its Coordinator and its direct channels.

`StreamLink` is the `ConnHandler` shared by both: it routes QUIC events to
the `StreamCore` of each data stream, turns the first frame of a stream into
an `IncomingStream` (or the answer to an open), and fails everything with
the right error when the connection ends. Stream 0 is the control stream,
opened by whichever side dialled. `CoordLink` drives the sans-I/O
`session.CoordSession` (the Coordinator's control messages and the client's
requests); `ChannelLink` (in `channel.py`) drives `hello.ChannelHandshake`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .. import wire
from .._util import EndableQueue
from ..closing import connection_error
from ..control import CONTROL_STREAM, ControlReader
from ..errors import ClientClosed, ConecError, ProtocolError
from ..framing import frame
from ..streams import IncomingStream, InStream, OutStream, StreamCore, StreamId
from ..transport import Conn
from .coord_session import CoordSession, SessionState

#: Streams opened to us that the application has not taken from `incoming`.
MAX_UNCLAIMED_STREAMS = 1024


class IncomingRouter:
    """Where streams opened to a client go: application streams to the
    `incoming` queue, internal ones (by header `purpose`) to their handler."""

    def __init__(self) -> None:
        self.user = UnclaimedQueue()
        self.handlers: dict[str, Callable[[IncomingStream], bool]] = {}

    def __call__(self, item: IncomingStream, purpose: str) -> bool:
        if not purpose:
            return self.user.offer(item)
        handler = self.handlers.get(purpose)
        return handler(item) if handler is not None else False


IncomingCallback = Callable[[IncomingStream, str], bool]


class StreamLink:
    """Framed data streams and a control stream on one connection."""

    kind: wire.StreamKind = "proxied"

    def __init__(self, on_incoming: IncomingCallback,
                 max_message_size: int) -> None:
        loop = asyncio.get_running_loop()
        self.conn: Conn | None = None
        self.control = ControlReader()
        self.streams: dict[int, StreamCore] = {}
        self.opening: dict[int, asyncio.Future[None]] = {}
        self.awaiting_header: set[int] = set()
        self.max_message_size = max_message_size
        self.on_incoming = on_incoming
        #: Set (with the reason) when the connection is over.
        self.closed: asyncio.Future[ConecError] = loop.create_future()
        #: Peer-opened data streams are accepted only once this is True.
        self.ready = False

    # -- hooks for subclasses ---------------------------------------------------

    def control_msg(self, conn: Conn, msg: wire.Control) -> None:
        raise ProtocolError(f"unexpected {type(msg).__name__} on the control stream")

    def accept_header(self, core: StreamCore, hdr: wire.StreamHeader) -> str | None:
        """Check an incoming stream's header; return the peer id to report,
        or None after resetting the stream."""
        return hdr.peer

    # -- ConnHandler ------------------------------------------------------------

    def handshake_completed(self, conn: Conn) -> None:
        pass

    def stream_data(self, conn: Conn, quic_id: int, data: bytes, fin: bool) -> None:
        if quic_id == CONTROL_STREAM:
            self._control_data(conn, data, fin)
            return
        core = self.streams.get(quic_id)
        if core is None:
            peer_opened = (quic_id & 1) == (1 if conn.quic.configuration.is_client else 0)
            if not peer_opened or not self.ready:
                conn.stop(quic_id, wire.Code.PROTOCOL)
                conn.reset(quic_id, wire.Code.PROTOCOL)
                return
            core = StreamCore(conn, quic_id, StreamId(self.kind, -1), self.max_message_size)
            self.streams[quic_id] = core
            self.awaiting_header.add(quic_id)
        if core.data_received(data, fin) is None:
            self._opening_failed(quic_id, wire.Code.PROTOCOL)
            return
        if quic_id in self.awaiting_header:
            self._first_frame_incoming(core)
        elif quic_id in self.opening:
            self._first_frame_opened(core)
        self._maybe_forget(core)

    def _first_frame_incoming(self, core: StreamCore) -> None:
        raw = core.take_first()
        if raw is None:
            return
        self.awaiting_header.discard(core.quic_id)
        try:
            hdr = wire.decode(raw)
            if not isinstance(hdr, wire.StreamHeader) or hdr.kind != self.kind:
                raise ProtocolError(f"expected a {self.kind} stream header")
        except ProtocolError as exc:
            core.fail_local(wire.Code.PROTOCOL, str(exc))
            return
        core.stream_id = StreamId(hdr.kind, hdr.n)
        core.limit_to(hdr.max_message_size)
        peer = self.accept_header(core, hdr)
        if peer is None:
            return
        if not self.on_incoming(IncomingStream(peer, core.stream_id, OutStream(core),
                                               InStream(core)), hdr.purpose):
            core.fail_local(wire.Code.TOO_MANY_STREAMS,
                            "the receiver refused the stream (too many unclaimed)")

    def _first_frame_opened(self, core: StreamCore) -> None:
        raw = core.take_first()
        if raw is None:
            return
        fut = self.opening.pop(core.quic_id)
        try:
            msg = wire.decode(raw)
            if not isinstance(msg, wire.StreamAccepted):
                raise ProtocolError("expected the stream to be accepted")
        except ProtocolError as exc:
            core.fail_local(wire.Code.PROTOCOL, str(exc))
            if not fut.done():
                fut.set_exception(exc)
            return
        # The stream's limit (both ends' and the Coordinator's), known before
        # the opener's call returns.
        core.limit_to(msg.max_message_size)
        if not fut.done():
            fut.set_result(None)

    def _opening_failed(self, quic_id: int, code: int, reason: str = "") -> None:
        fut = self.opening.pop(quic_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(wire.error_for(code, reason))

    def stream_reset(self, conn: Conn, quic_id: int, code: int) -> None:
        core = self.streams.get(quic_id)
        if core is None:
            return
        self._opening_failed(quic_id, code)
        core.reset_received(code)
        self._maybe_forget(core)

    def stop_sending(self, conn: Conn, quic_id: int, code: int) -> None:
        core = self.streams.get(quic_id)
        if core is None:
            return
        self._opening_failed(quic_id, code)
        core.stop_received(code)
        self._maybe_forget(core)

    def terminated(self, conn: Conn, code: int, reason: str) -> None:
        self.end_streams(connection_error(code, reason), code)

    def end_streams(self, err: ConecError, code: int) -> None:
        """The connection ended (`err`, `code`): fail every stream and opening."""
        for quic_id in list(self.opening):
            self._opening_failed(quic_id, wire.Code.PEER_GONE, f"connection lost: {err}")
        scode = code if code in wire.CODES else wire.Code.PATH_FAILED
        for core in self.streams.values():
            core.path_failed(scode, f"{err}")
        self.streams.clear()
        self.ready = False
        if not self.closed.done():
            self.closed.set_result(err)

    # -- control stream -----------------------------------------------------------

    def _control_data(self, conn: Conn, data: bytes, fin: bool) -> None:
        control = self.control
        try:
            control.feed(data, fin)
            while control:
                self.control_msg(conn, control.next())
        except ProtocolError as exc:
            conn.close(wire.Code.PROTOCOL, wire.clip(str(exc)))
            return
        # Credit what was acted on, not a partial message.
        conn.consume_to(CONTROL_STREAM, control.acted_on)
        if control.ended and not conn.closed:
            conn.close(wire.Code.PROTOCOL, "the control stream was closed")

    def send_control(self, msg: wire.Control) -> None:
        assert self.conn is not None
        self.conn.send(CONTROL_STREAM, frame(wire.encode(msg)))

    # -- streams ------------------------------------------------------------------

    def open_stream(self, peer: str, n: int, purpose: str = "",
                    kind: wire.StreamKind | None = None,
                    recv_extra: int = 0) -> tuple[StreamCore, asyncio.Future[None]]:
        """Open a data stream; the future resolves when it is accepted."""
        conn = self.conn
        assert conn is not None
        quic_id = conn.new_stream_id()
        kind = kind or self.kind
        core = StreamCore(conn, quic_id, StreamId(kind, n), self.max_message_size, recv_extra)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.streams[quic_id] = core
        self.opening[quic_id] = fut
        core.write_raw(frame(wire.encode(wire.StreamHeader(
            kind, peer, n, purpose=purpose))))
        return core, fut

    def _maybe_forget(self, core: StreamCore) -> None:
        recv_over = core.recv_error is not None or core.recv_fin
        send_over = core.send_error is not None or core.send_finished
        if recv_over and send_over and self.streams.get(core.quic_id) is core:
            del self.streams[core.quic_id]
            self.awaiting_header.discard(core.quic_id)
            core.conn.forget_stream(core.quic_id)


class CoordLink(StreamLink):
    """Handler of the connection to the Coordinator: drives a `CoordSession`
    and resolves each request's future with its reply."""

    def __init__(self, client_id: str, max_message_size: int,
                 on_incoming: IncomingCallback) -> None:
        super().__init__(on_incoming, max_message_size)
        self.session = CoordSession(client_id)
        self.welcome: asyncio.Future[wire.Welcome] = \
            asyncio.get_running_loop().create_future()
        self.requests: dict[int, asyncio.Future[Any]] = {}
        #: Set by the Client once it exists; offers that come earlier wait here.
        self.on_offer: Callable[[wire.ChannelOffer], None] | None = None
        self.on_dialing: Callable[[str], None] | None = None
        self.on_terminated: Callable[[wire.PeerTerminated], None] | None = None
        self.on_group_view: Callable[[wire.GroupView], None] | None = None
        self.early_offers: list[wire.ChannelOffer] = []

    def control_msg(self, conn: Conn, msg: wire.Control) -> None:
        got = self.session.receive(msg)
        if isinstance(got, wire.ChannelIntro | wire.BroadcastCountReply | wire.WatchReply
                      | wire.GroupReply):
            fut = self.requests.pop(got.req, None)
            if fut is not None and not fut.done():
                fut.set_result(got)
        elif isinstance(got, wire.ChannelOffer):
            if self.on_offer is None:
                self.early_offers.append(got)
            else:
                self.on_offer(got)
        elif isinstance(got, wire.GroupView):
            if self.on_group_view is not None:
                self.on_group_view(got)
        elif isinstance(got, wire.PeerTerminated):
            if self.on_terminated is not None:
                self.on_terminated(got)
        elif isinstance(got, wire.PeerDialing):
            if self.on_dialing is not None:
                self.on_dialing(got.peer)
        elif isinstance(got, wire.Welcome):
            self.ready = True
            self.welcome.set_result(got)

    def terminated(self, conn: Conn, code: int, reason: str) -> None:
        ended = self.session.close(code, reason)
        if not self.welcome.done():
            self.welcome.set_exception(ended.error)
            self.welcome.exception()
        for req in ended.waiting:
            fut = self.requests.pop(req, None)
            if fut is not None and not fut.done():
                fut.set_exception(ClientClosed(f"lost the Coordinator: {ended.error}"))
        self.end_streams(ended.error, code)

    def send_hello(self, conn: Conn, max_message_size: int, idle_timeout: float,
                   max_datagram_size: int) -> None:
        """The handshake is done: say `Hello`."""
        self.conn = conn
        if self.closed.done():  # refused right after the handshake: `welcome` says why
            return
        self.send_control(self.session.hello(max_message_size, idle_timeout,
                                             max_datagram_size))

    def answer(self, offer: int, code: int) -> None:
        """Answer `ChannelOffer` `offer` (dropped if the Coordinator is gone)."""
        msg = self.session.answer(offer, code)
        if msg is not None:
            self.send_control(msg)

    def dialing(self, req: int) -> None:
        """Tell the Coordinator we dial the peer of introduction `req`."""
        msg = self.session.dialing(req)
        if msg is not None:
            self.send_control(msg)

    async def request_channel(self, peer: str, holepunch: bool
                              ) -> tuple[int, wire.ChannelIntro]:
        """Ask the Coordinator to introduce us to `peer`; returns the request id
        (for `ChannelDialing`) and the introduction."""
        if self.session.state is not SessionState.READY:
            raise self._gone()
        msg = self.session.request_channel(peer, holepunch)
        reply: wire.ChannelIntro = await self._request(msg.req, msg)
        return msg.req, reply

    async def request_count(self, name: str) -> wire.BroadcastCountReply:
        """Ask the Coordinator for a broadcast's counts."""
        if self.session.state is not SessionState.READY:
            raise self._gone()
        msg = self.session.request_count(name)
        reply: wire.BroadcastCountReply = await self._request(msg.req, msg)
        return reply

    async def request_group(self, op: str, name: str) -> wire.GroupReply:
        """Send a group request (`op`: join, leave, members, follow) and
        return the Coordinator's reply."""
        if self.session.state is not SessionState.READY:
            raise self._gone()
        msg = self.session.request_group(op, name)
        reply: wire.GroupReply = await self._request(msg.req, msg)
        return reply

    def report_load(self, asks: int, tells: int) -> None:
        """Report this member's load (dropped if the Coordinator is gone)."""
        msg = self.session.report_load(asks, tells)
        if msg is not None:
            self.send_control(msg)

    def request_watch(self, peer: str) -> tuple[int, asyncio.Future[wire.WatchReply]]:
        """Ask the Coordinator to watch `peer`: the watch's number (for
        `cancel_watch`, also while the reply is awaited) and the reply."""
        if self.session.state is not SessionState.READY:
            raise self._gone()
        msg = self.session.request_watch(peer)
        fut: asyncio.Future[wire.WatchReply] = asyncio.get_running_loop().create_future()
        self.requests[msg.req] = fut
        self.send_control(msg)
        return msg.req, fut

    def cancel_watch(self, req: int) -> None:
        """Stop watch `req` (dropped if the Coordinator is gone)."""
        self.requests.pop(req, None)
        msg = self.session.cancel_watch(req)
        if msg is not None:
            self.send_control(msg)

    def _gone(self) -> ClientClosed:
        if self.closed.done():
            return ClientClosed(f"lost the Coordinator: {self.closed.result()}")
        return ClientClosed("the connection to the Coordinator is not open")

    async def _request(self, req: int, msg: wire.Control) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.requests[req] = fut
        self.send_control(msg)
        try:
            return await fut
        finally:
            if self.requests.pop(req, None) is not None:
                self.session.abandon(req)


class UnclaimedQueue:
    """Bounded queue of incoming streams with an end (any number of readers).

    An `EndableQueue` whose items expire: a stream that no task takes within
    `timeout` seconds (the idle timeout) is reset with `Code.UNCLAIMED`: it
    would otherwise hold one of the opener's stream slots, and its window,
    for as long as the client runs.
    """

    def __init__(self, limit: int = MAX_UNCLAIMED_STREAMS, timeout: float = 10.0) -> None:
        #: (deadline, stream), oldest first
        self._queue: EndableQueue[tuple[float, IncomingStream]] = EndableQueue(limit)
        self.timeout = timeout
        self._timer: asyncio.TimerHandle | None = None

    @property
    def ended(self) -> bool:
        return self._queue.ended

    def offer(self, item: IncomingStream) -> bool:
        loop = asyncio.get_running_loop()
        if not self._queue.offer((loop.time() + self.timeout, item)):
            return False
        if self._timer is None:
            self._timer = loop.call_at(self._queue.items[0][0], self._expire)
        return True

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = self._queue.items
        while items and items[0][0] <= now:
            _, item = items.popleft()
            item.recv._core.fail_local(wire.Code.UNCLAIMED, wire.describe(wire.Code.UNCLAIMED))
        if items:
            self._timer = loop.call_at(items[0][0], self._expire)

    def end(self) -> None:
        self._queue.end()
        if self._timer is not None:  # no path left: nothing holds a slot
            self._timer.cancel()
            self._timer = None

    async def get(self) -> IncomingStream | None:
        got = await self._queue.get()
        if got is None:
            return None
        if not self._queue.items and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return got[1]
