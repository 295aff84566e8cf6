"""Direct channels: a QUIC connection between two clients, introduced by the
Coordinator, on the same UDP socket each uses toward the Coordinator.

`ChannelLink` is the handler of one channel's connection, at either end. The
side that dialled (the opener) checks that the peer presents exactly the
certificate the Coordinator vouched for and says `ChannelHello`; the side
that accepted (the target) matches the presented certificate against the
introductions it expects, checks it the same way, and answers
`ChannelWelcome`. Only then are direct streams accepted, in both directions.
Those decisions are `hello.ChannelHandshake`'s (sans-I/O); this module does
the I/O: it reads the certificate, checks its chain, sends and closes.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .. import wire
from ..errors import CertificateError
from ..framing import frame
from ..streams import StreamCore
from ..tlsconf import check_chain, der
from ..transport import Conn
from ..used_numbers import UsedNumbers
from .hello import ChannelHandshake, Refuse
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
    """One direct channel's connection, at either end: drives a
    `ChannelHandshake` (certificates and hello), then carries direct streams."""

    kind: wire.StreamKind = "direct"

    def __init__(self, owner: ChannelOwner, on_incoming: IncomingCallback,
                 max_message_size: int, *,
                 peer: str | None, expected_cert: bytes | None, opener: bool) -> None:
        super().__init__(on_incoming, max_message_size)
        self.owner = owner
        self.hello = ChannelHandshake(owner.id, max_message_size, opener=opener,
                                      peer=peer, expected_cert=expected_cert)
        #: Stream numbers the peer used on this channel (it may not reuse one).
        self.peer_numbers = UsedNumbers()
        self.welcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def peer(self) -> str | None:
        """The peer's id (at the target, once its certificate is matched)."""
        return self.hello.peer

    # -- handshake and hello --------------------------------------------------------

    def handshake_completed(self, conn: Conn) -> None:
        self.conn = conn
        hello = self.hello
        cert = conn.quic.peer_certificate()
        presented = None if cert is None else der(cert)
        introduced = None
        if presented is not None and not hello.opener:
            introduced = self.owner._claim_introduction(presented)
        peer = hello.certificate(presented, introduced)
        if isinstance(peer, Refuse):
            conn.close(peer.code, peer.reason)
            return
        assert cert is not None
        error: str | None = None
        try:
            check_chain(cert, conn.quic.peer_chain(), self.owner._client_ca(), peer)
        except CertificateError as exc:
            error = str(exc)
        out = hello.chain_checked(error)
        if isinstance(out, Refuse):
            conn.close(out.code, out.reason)
        elif out is not None:
            self.send_control(out)

    def control_msg(self, conn: Conn, msg: wire.Control) -> None:
        out = self.hello.receive(msg)
        if isinstance(out, Refuse):
            conn.close(out.code, out.reason)
            return
        self.max_message_size = self.hello.max_message_size
        self.ready = True
        if out.reply is not None:  # the target: register, then welcome
            self.owner._channel_ready(self)
            self.send_control(out.reply)
        if not self.welcome.done():
            self.welcome.set_result(None)

    def accept_header(self, core: StreamCore, hdr: wire.StreamHeader) -> str | None:
        if hdr.peer != self.peer:
            core.fail_local(wire.Code.PROTOCOL, "direct stream header names another client")
            return None
        refused = self.peer_numbers.admit(hdr.n)
        if refused is not None:
            why = ("was already used on this channel" if refused == wire.Code.STREAM_ID_IN_USE
                   else "is out of range")
            core.fail_local(refused, f"direct stream number {hdr.n} {why}")
            return None
        core.write_raw(frame(wire.encode(wire.StreamAccepted())))
        return hdr.peer

    # -- the end ------------------------------------------------------------------------

    def terminated(self, conn: Conn, code: int, reason: str) -> None:
        err = self.hello.close(code, reason)
        if not self.welcome.done():
            self.welcome.set_exception(err)
            self.welcome.exception()
        self.end_streams(err, code)
        self.owner._channel_ended(self)
