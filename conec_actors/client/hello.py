"""A direct channel's hello exchange, without I/O.

`ChannelHandshake` is the state machine of one channel's control stream, at
either end. Once TLS is done the driver gives it the certificate the peer
presented (`certificate`), then the result of the chain check
(`chain_checked`); the opener then says `ChannelHello`, the target answers
it with `ChannelWelcome`, and the channel is ready. Every refusal comes out
as a `Refuse` (the code and reason to close the connection with).
`channel.ChannelLink` drives it.

    opener: HANDSHAKE -certificate-> IDENTIFIED -chain ok-> HELLO_SENT
            -ChannelWelcome-> READY
    target: HANDSHAKE -certificate-> IDENTIFIED -chain ok-> AWAITING_HELLO
            -ChannelHello-> READY
    a refusal, or the connection ending, leads to CLOSED from every state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from .. import wire
from ..closing import connection_error
from ..errors import ConecError, ProtocolError
from ..limits import effective_limit
from ..transitions import move


def peer_wins_tie(me: str, peer: str) -> bool:
    """Two clients opened channels to each other at once: exactly one attempt
    must survive, the one of the lower id. True if `peer`'s wins over `me`'s."""
    return peer < me


class HelloState(Enum):
    """Where a channel's hello exchange stands."""

    #: TLS is under way.
    HANDSHAKE = auto()
    #: The certificate names the expected peer; its chain is being checked.
    IDENTIFIED = auto()
    #: Opener: `ChannelHello` sent, waiting for `ChannelWelcome`.
    HELLO_SENT = auto()
    #: Target: verified, waiting for `ChannelHello`.
    AWAITING_HELLO = auto()
    #: Both ends registered the channel: direct streams flow.
    READY = auto()
    #: Refused, or the connection ended.
    CLOSED = auto()


class HelloEvent(Enum):
    """What moves the exchange: the checks' results, the peer's messages, the end."""

    CERTIFICATE = auto()
    CHAIN_OK_OPENER = auto()
    CHAIN_OK_TARGET = auto()
    HELLO = auto()
    WELCOME = auto()
    #: Any other control message: never legal on a channel.
    OTHER = auto()
    REFUSE = auto()
    CLOSE = auto()


_S, _E = HelloState, HelloEvent
TRANSITIONS: dict[tuple[HelloState, HelloEvent], HelloState] = {
    (_S.HANDSHAKE, _E.CERTIFICATE): _S.IDENTIFIED,
    (_S.IDENTIFIED, _E.CHAIN_OK_OPENER): _S.HELLO_SENT,
    (_S.IDENTIFIED, _E.CHAIN_OK_TARGET): _S.AWAITING_HELLO,
    (_S.AWAITING_HELLO, _E.HELLO): _S.READY,
    (_S.HELLO_SENT, _E.WELCOME): _S.READY,
    **{(s, _E.REFUSE): _S.CLOSED for s in HelloState if s is not _S.CLOSED},
    **{(s, _E.CLOSE): _S.CLOSED for s in HelloState},
}


@dataclass(frozen=True, slots=True)
class Refuse:
    """Close the channel's connection with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ready:
    """The channel is ready; the target sends `reply` (`ChannelWelcome`)
    once its client has registered the channel."""

    reply: wire.ChannelWelcome | None = None


class ChannelHandshake:
    """One channel's hello exchange, at the opener (`opener=True`, knowing
    `peer` and the certificate the Coordinator vouched for) or at the target
    (which learns the peer from the introduction the certificate matches)."""

    __slots__ = ("expected_cert", "max_message_size", "my_id", "opener", "peer", "state")

    def __init__(self, my_id: str, max_message_size: int, *, opener: bool,
                 peer: str | None = None, expected_cert: bytes | None = None) -> None:
        self.my_id = my_id
        self.opener = opener
        self.peer = peer
        self.expected_cert = expected_cert
        #: Ours until the peer's hello or welcome; then the smaller of both.
        self.max_message_size = max_message_size
        self.state = HelloState.HANDSHAKE

    def _move(self, event: HelloEvent) -> None:
        self.state = move("channel hello", TRANSITIONS, self.state, event)

    def _peer_move(self, event: HelloEvent, detail: str) -> None:
        self.state = move("channel hello", TRANSITIONS, self.state, event,
                          by_peer=True, detail=detail)

    def _refuse(self, code: int, reason: str) -> Refuse:
        self._move(_E.REFUSE)
        return Refuse(code, reason)

    @property
    def verified(self) -> bool:
        """The peer's certificate passed every check."""
        return self.state in (_S.HELLO_SENT, _S.AWAITING_HELLO, _S.READY)

    @property
    def ready(self) -> bool:
        """Both ends registered the channel."""
        return self.state is _S.READY

    def certificate(self, presented: bytes | None, introduced: str | None = None
                    ) -> Refuse | str:
        """TLS is done and the peer presented `presented` (DER; None: no
        certificate). At the target, `introduced` is the peer whose
        introduction that certificate matches (None: none). Returns the peer
        whose name the certificate's chain must be checked for, or `Refuse`."""
        if presented is None:
            return self._refuse(wire.Code.CERTIFICATE, "no certificate presented")
        if self.opener:
            if presented != self.expected_cert:
                return self._refuse(
                    wire.Code.CERTIFICATE, f"{self.peer!r} presented a certificate other "
                    "than the one the Coordinator vouched for")
        elif introduced is None:
            return self._refuse(wire.Code.CERTIFICATE,
                                "certificate not introduced by the Coordinator")
        else:
            self.peer = introduced
        self._move(_E.CERTIFICATE)
        assert self.peer is not None
        return self.peer

    def chain_checked(self, error: str | None) -> Refuse | wire.ChannelHello | None:
        """The result of checking the certificate's chain (`error`: why it
        was refused, or None). The opener then sends the returned hello."""
        if error is not None:
            return self._refuse(wire.Code.CERTIFICATE, error)
        if not self.opener:
            self._move(_E.CHAIN_OK_TARGET)
            return None
        self._move(_E.CHAIN_OK_OPENER)
        return wire.ChannelHello(self.my_id, wire.PROTOCOL_VERSION, self.max_message_size)

    def receive(self, msg: wire.Control) -> Ready | Refuse:
        """Take one control message from the peer. `ProtocolError` before the
        certificate is verified; `RemoteProtocolError` (a `ProtocolError`) for
        a message the state does not allow."""
        if not self.verified:
            raise ProtocolError("control message before the certificate check")
        detail = f"unexpected {type(msg).__name__} on a channel"
        if isinstance(msg, wire.ChannelHello):
            # Legal here at all? (raises if not), before judging its content.
            move("channel hello", TRANSITIONS, self.state, _E.HELLO, by_peer=True,
                 detail=detail)
            if msg.id != self.peer:
                return self._refuse(wire.Code.CERTIFICATE, f"the hello says {msg.id!r} "
                                    f"but the certificate is {self.peer!r}'s")
            if msg.version != wire.PROTOCOL_VERSION:
                return self._refuse(wire.Code.VERSION, f"protocol version {msg.version} "
                                    f"is not {wire.PROTOCOL_VERSION}")
            self._move(_E.HELLO)
            self.max_message_size = effective_limit(self.max_message_size, msg.max_message_size)
            return Ready(wire.ChannelWelcome(self.my_id, self.max_message_size))
        if isinstance(msg, wire.ChannelWelcome):
            self._peer_move(_E.WELCOME, detail)
            self.max_message_size = effective_limit(self.max_message_size, msg.max_message_size)
            return Ready()
        self._peer_move(_E.OTHER, detail)
        raise AssertionError("unreachable: OTHER has no transition")

    def close(self, code: int, reason: str) -> ConecError:
        """The connection ended with `code` and `reason`: what that means."""
        self._move(_E.CLOSE)
        return connection_error(code, reason,
                                channel=repr(self.peer) if self.peer else "the peer")
