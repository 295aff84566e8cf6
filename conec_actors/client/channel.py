"""Direct channels: a QUIC connection between two clients, introduced by the
Coordinator, on the same UDP socket each uses toward the Coordinator.

`ChannelLink` is the handler of one channel's connection, at either end. The
side that dialled (the opener) checks that the peer presents exactly the
certificate the Coordinator vouched for and says `ChannelHello`; the side
that accepted (the target) matches the presented certificate against the
introductions it expects, checks it the same way, and answers
`ChannelWelcome`. Only then are direct streams accepted, in both directions.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .. import wire
from ..errors import CertificateError, ConecError, ConnectFailed, ProtocolError, StreamReset
from ..framing import frame
from ..streams import StreamCore
from ..tlsconf import check_chain, der
from ..transport import Conn
from ..used_numbers import UsedNumbers
from .link import IncomingCallback, StreamLink


class ChannelOwner(Protocol):
    """What a channel needs from its client."""

    @property
    def id(self) -> str: ...
    def _client_ca(self) -> bytes | None: ...
    def _claim_introduction(self, cert_der: bytes) -> str | None: ...
    def _channel_ready(self, link: ChannelLink) -> None: ...
    def _channel_ended(self, link: ChannelLink) -> None: ...


class ChannelLink(StreamLink):
    """One direct channel's connection, at either end."""

    kind: wire.StreamKind = "direct"

    def __init__(self, owner: ChannelOwner, on_incoming: IncomingCallback,
                 max_message_size: int, *,
                 peer: str | None, expected_cert: bytes | None, opener: bool) -> None:
        super().__init__(on_incoming, max_message_size)
        self.owner = owner
        self.peer = peer
        self.expected_cert = expected_cert
        self.opener = opener
        self.verified = False
        #: Stream numbers the peer used on this channel (it may not reuse one).
        self.peer_numbers = UsedNumbers()
        self.welcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- handshake and hello --------------------------------------------------------

    def handshake_completed(self, conn: Conn) -> None:
        self.conn = conn
        cert = conn.quic.peer_certificate()
        if cert is None:
            conn.close(wire.Code.CERTIFICATE, "no certificate presented")
            return
        presented = der(cert)
        if self.opener:
            peer = self.peer
            if presented != self.expected_cert:
                conn.close(wire.Code.CERTIFICATE,
                           f"{peer!r} presented a certificate other than the one the "
                           "Coordinator vouched for")
                return
        else:
            peer = self.owner._claim_introduction(presented)
            if peer is None:
                conn.close(wire.Code.CERTIFICATE,
                           "certificate not introduced by the Coordinator")
                return
            self.peer = peer
        try:
            check_chain(cert, conn.quic.peer_chain(), self.owner._client_ca(), peer)
        except CertificateError as exc:
            conn.close(wire.Code.CERTIFICATE, str(exc))
            return
        self.verified = True
        if self.opener:
            self.send_control(wire.ChannelHello(self.owner.id, wire.PROTOCOL_VERSION,
                                                self.max_message_size))

    def control_msg(self, conn: Conn, msg: wire.Control) -> None:
        if not self.verified:
            raise ProtocolError("control message before the certificate check")
        if isinstance(msg, wire.ChannelHello) and not self.opener and not self.ready:
            if msg.id != self.peer:
                conn.close(wire.Code.CERTIFICATE,
                           f"the hello says {msg.id!r} but the certificate is {self.peer!r}'s")
                return
            if msg.version != wire.PROTOCOL_VERSION:
                conn.close(wire.Code.VERSION, f"protocol version {msg.version} is not "
                           f"{wire.PROTOCOL_VERSION}")
                return
            self.max_message_size = min(self.max_message_size, msg.max_message_size)
            self.ready = True
            self.owner._channel_ready(self)
            self.send_control(wire.ChannelWelcome(self.owner.id, self.max_message_size))
            if not self.welcome.done():
                self.welcome.set_result(None)
        elif isinstance(msg, wire.ChannelWelcome) and self.opener and not self.ready:
            self.max_message_size = min(self.max_message_size, msg.max_message_size)
            self.ready = True
            if not self.welcome.done():
                self.welcome.set_result(None)
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} on a channel")

    def accept_header(self, core: StreamCore, hdr: wire.StreamHeader) -> str | None:
        if hdr.peer != self.peer:
            core.fail_local(wire.Code.PROTOCOL, "direct stream header names another client")
            return None
        if not self.peer_numbers.add(hdr.n):
            core.fail_local(wire.Code.STREAM_ID_IN_USE,
                            f"direct stream number {hdr.n} was already used on this channel")
            return None
        core.write_raw(frame(wire.encode(wire.StreamAccepted())))
        return hdr.peer

    # -- the end ------------------------------------------------------------------------

    def describe_end(self, code: int, reason: str) -> ConecError:
        who = repr(self.peer) if self.peer else "the peer"
        if 0x100 <= code <= 0x1FF:
            return CertificateError(f"TLS handshake with {who} failed: "
                                    f"{reason or 'alert ' + str(code)}")
        if code in wire.CODES and code != wire.Code.NO_ERROR:
            err = wire.error_for(code, reason)
            if not isinstance(err, StreamReset):
                return err
        return ConnectFailed(f"the channel to {who} ended: {reason or wire.describe(code)}")

    def terminated(self, conn: Conn, code: int, reason: str) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(self.describe_end(code, reason))
            self.welcome.exception()
        super().terminated(conn, code, reason)
        self.owner._channel_ended(self)


