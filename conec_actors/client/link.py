"""A client's connection to its Coordinator: control stream and data streams.

`CoordLink` is the `ConnHandler` for that connection. It routes QUIC events
to the `StreamCore` of each data stream, turns the first frame of a stream
into an `IncomingStream` (or the answer to an open), and fails everything
with the right error when the connection ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .. import wire
from ..errors import CertificateError, ClientClosed, ConecError, ProtocolError, StreamReset
from ..framing import FrameDecoder, FrameTooLarge, frame
from ..streams import IncomingStream, InStream, OutStream, StreamCore, StreamId
from ..transport import Conn

CONTROL_MAX = 64 * 1024
#: Streams opened to us that the application has not taken from `incoming`.
MAX_UNCLAIMED_STREAMS = 1024


class CoordLink:
    """Handler of the connection to the Coordinator."""

    def __init__(self, client_id: str, on_incoming: Callable[[IncomingStream], bool],
                 max_message_size: int) -> None:
        self.client_id = client_id
        self.conn: Conn | None = None
        self.control_sid = 0
        self.control = FrameDecoder(CONTROL_MAX)
        self.welcome: asyncio.Future[wire.Welcome] = \
            asyncio.get_running_loop().create_future()
        self.streams: dict[int, StreamCore] = {}
        self.opening: dict[int, asyncio.Future[None]] = {}
        self.awaiting_header: set[int] = set()
        self.max_message_size = max_message_size
        self.on_incoming = on_incoming
        self.closed: asyncio.Future[ConecError] = asyncio.get_running_loop().create_future()

    # -- ConnHandler ----------------------------------------------------------

    def handshake_completed(self, conn: Conn) -> None:
        pass

    def stream_data(self, conn: Conn, sid: int, data: bytes, fin: bool) -> None:
        if sid == self.control_sid:
            self._control_data(conn, data, fin)
            return
        core = self.streams.get(sid)
        if core is None:
            if sid % 4 != 1 or not self.welcome.done():  # must be Coordinator-opened
                conn.stop(sid, wire.Code.PROTOCOL)
                return
            core = StreamCore(conn, sid, StreamId("proxied", -1), self.max_message_size)
            self.streams[sid] = core
            self.awaiting_header.add(sid)
        if core.data_received(data, fin) is None:
            self._opening_failed(sid, wire.Code.PROTOCOL)
            return
        if sid in self.awaiting_header:
            self._first_frame_incoming(conn, core)
        elif sid in self.opening:
            self._first_frame_opened(core)
        self._maybe_forget(core)

    def _first_frame_incoming(self, conn: Conn, core: StreamCore) -> None:
        raw = core.take_first()
        if raw is None:
            return
        self.awaiting_header.discard(core.sid)
        try:
            hdr = wire.decode(raw)
            if not isinstance(hdr, wire.StreamHeader):
                raise ProtocolError("expected a stream header")
        except ProtocolError as exc:
            core.fail_local(wire.Code.PROTOCOL, str(exc))
            return
        core.stream_id = StreamId(hdr.kind, hdr.n)
        if not self.on_incoming(IncomingStream(hdr.peer, core.stream_id, OutStream(core),
                                               InStream(core))):
            core.fail_local(wire.Code.TOO_MANY_STREAMS,
                            "the receiver has too many unclaimed incoming streams")

    def _first_frame_opened(self, core: StreamCore) -> None:
        raw = core.take_first()
        if raw is None:
            return
        fut = self.opening.pop(core.sid)
        try:
            msg = wire.decode(raw)
            if not isinstance(msg, wire.StreamAccepted):
                raise ProtocolError("expected the stream to be accepted")
        except ProtocolError as exc:
            core.fail_local(wire.Code.PROTOCOL, str(exc))
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(None)

    def _opening_failed(self, sid: int, code: int, reason: str = "") -> None:
        fut = self.opening.pop(sid, None)
        if fut is not None and not fut.done():
            fut.set_exception(wire.error_for(code, reason))

    def stream_reset(self, conn: Conn, sid: int, code: int) -> None:
        core = self.streams.get(sid)
        if core is None:
            return
        self._opening_failed(sid, code)
        core.reset_received(code)
        self._maybe_forget(core)

    def stop_sending(self, conn: Conn, sid: int, code: int) -> None:
        core = self.streams.get(sid)
        if core is None:
            return
        self._opening_failed(sid, code)
        core.stop_received(code)
        self._maybe_forget(core)

    def terminated(self, conn: Conn, code: int, reason: str) -> None:
        err = connection_error(code, reason)
        if not self.welcome.done():
            self.welcome.set_exception(err)
            self.welcome.exception()
        for sid in list(self.opening):
            self._opening_failed(sid, wire.Code.PEER_GONE, f"connection lost: {err}")
        scode = code if code in wire.CODES else wire.Code.PATH_FAILED
        for core in self.streams.values():
            core.path_failed(scode, f"connection to the Coordinator ended: {err}")
        self.streams.clear()
        if not self.closed.done():
            self.closed.set_result(err)

    # -- control ------------------------------------------------------------

    def _control_data(self, conn: Conn, data: bytes, fin: bool) -> None:
        try:
            for raw in self.control.feed(data):
                msg = wire.decode(raw)
                if isinstance(msg, wire.Welcome) and not self.welcome.done():
                    self.welcome.set_result(msg)
                else:
                    raise ProtocolError(f"unexpected {type(msg).__name__} from the "
                                        "Coordinator")
        except (FrameTooLarge, ProtocolError) as exc:
            conn.close(wire.Code.PROTOCOL, str(exc))
            return
        conn.consume(self.control_sid, len(data))

    def send_hello(self, conn: Conn, hello: wire.Hello) -> None:
        self.conn = conn
        self.control_sid = conn.new_stream_id()
        conn.send(self.control_sid, frame(wire.encode(hello)))

    # -- streams ---------------------------------------------------------------

    def open_stream(self, peer: str, n: int) -> tuple[StreamCore, asyncio.Future[None]]:
        conn = self.conn
        assert conn is not None
        sid = conn.new_stream_id()
        core = StreamCore(conn, sid, StreamId("proxied", n), self.max_message_size)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.streams[sid] = core
        self.opening[sid] = fut
        core.write_raw(frame(wire.encode(wire.StreamHeader("proxied", peer, n))))
        return core, fut

    def _maybe_forget(self, core: StreamCore) -> None:
        recv_over = core.recv_error is not None or core.recv_fin
        send_over = core.send_error is not None or core.send_finished
        if recv_over and send_over and self.streams.get(core.sid) is core:
            del self.streams[core.sid]
            self.awaiting_header.discard(core.sid)
            core.conn.forget_stream(core.sid)


def connection_error(code: int, reason: str) -> ConecError:
    """The error a closed connection means to the client."""
    if 0x100 <= code <= 0x1FF:  # TLS alert carried as a QUIC CRYPTO_ERROR
        return CertificateError(f"TLS handshake failed: {reason or 'alert ' + str(code)}")
    if code in wire.CODES and code != wire.Code.NO_ERROR:
        err = wire.error_for(code, reason)
        if not isinstance(err, StreamReset):
            return err
    return ClientClosed(f"the connection to the Coordinator ended: "
                        f"{reason or wire.describe(code)}")


class UnclaimedQueue:
    """Bounded queue of incoming streams with an end."""

    def __init__(self, limit: int = MAX_UNCLAIMED_STREAMS) -> None:
        self.items: deque[IncomingStream] = deque()
        self.limit = limit
        self.ended = False
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: IncomingStream) -> bool:
        if self.ended or len(self.items) >= self.limit:
            return False
        self.items.append(item)
        self._wake()
        return True

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> IncomingStream | None:
        while not self.items:
            if self.ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.items.popleft()
