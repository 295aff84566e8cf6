"""The client's control session with its Coordinator, without I/O.

`CoordSession` is the state machine of the control stream at the client's
end: it says `Hello` once the QUIC handshake is done, takes the
Coordinator's control messages in (`receive`) and tells its driver what
each one is, and numbers the requests the client makes (channel
introductions, broadcast counts, group requests) so that each reply is matched to its
request, once, and which watches are active (a `PeerTerminated` for one
that was cancelled is dropped). `link.CoordLink` drives it over a QUIC connection.

    CONNECTING --hello--> HELLO_SENT --Welcome--> READY --close--> CLOSED
    (close is allowed from every state)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum, auto

from .. import wire
from ..closing import connection_error
from ..errors import ConecError, ProtocolError
from ..transitions import move


class SessionState(Enum):
    """Where the control session stands."""

    #: The QUIC handshake is under way; nothing was said yet.
    CONNECTING = auto()
    #: `Hello` is sent; only `Welcome` may come.
    HELLO_SENT = auto()
    #: Welcomed: requests, replies, offers and notices flow.
    READY = auto()
    #: The connection ended (or was refused); nothing more happens.
    CLOSED = auto()


class SessionEvent(Enum):
    """What moves the session: said by us (SEND_*) or by the Coordinator."""

    SEND_HELLO = auto()
    SEND = auto()  # a request, an answer to an offer, a notice
    WELCOME = auto()
    REPLY = auto()
    OFFER = auto()
    PEER_DIALING = auto()
    TERMINATED = auto()  # a watched peer ended
    VIEW = auto()  # the members of a followed group changed
    #: Any other control message: never legal from the Coordinator.
    OTHER = auto()
    CLOSE = auto()


_S, _E = SessionState, SessionEvent
TRANSITIONS: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (_S.CONNECTING, _E.SEND_HELLO): _S.HELLO_SENT,
    (_S.HELLO_SENT, _E.WELCOME): _S.READY,
    (_S.READY, _E.SEND): _S.READY,
    (_S.READY, _E.REPLY): _S.READY,
    (_S.READY, _E.OFFER): _S.READY,
    (_S.READY, _E.PEER_DIALING): _S.READY,
    (_S.READY, _E.TERMINATED): _S.READY,
    (_S.READY, _E.VIEW): _S.READY,
    **{(s, _E.CLOSE): _S.CLOSED for s in SessionState},
}

#: The Coordinator's messages, by the event each one is.
_RECEIVED: dict[type, SessionEvent] = {
    wire.Welcome: _E.WELCOME,
    wire.ChannelIntro: _E.REPLY,
    wire.BroadcastCountReply: _E.REPLY,
    wire.ChannelOffer: _E.OFFER,
    wire.PeerDialing: _E.PEER_DIALING,
    wire.WatchReply: _E.REPLY,
    wire.PeerTerminated: _E.TERMINATED,
    wire.GroupReply: _E.REPLY,
    wire.GroupView: _E.VIEW,
}


@dataclass(frozen=True, slots=True)
class Ended:
    """What the end of the connection means to the client."""

    #: The error for whoever waited (`ClientClosed`, or the refusal's own).
    error: ConecError
    #: Requests that were waiting for a reply: they fail.
    waiting: list[int]


Reply = wire.ChannelIntro | wire.BroadcastCountReply | wire.WatchReply | wire.GroupReply
#: What `receive` hands the driver: the message to act on, or None (a reply
#: to a request nobody waits for any more, the verdict of a cancelled watch).
Received = wire.Welcome | Reply | wire.ChannelOffer | wire.PeerDialing | wire.PeerTerminated \
    | wire.GroupView | None


class CoordSession:
    """The client's end of the control stream to the Coordinator."""

    __slots__ = ("_pending", "_req", "_watching", "client_id", "state", "welcome")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.state = SessionState.CONNECTING
        self.welcome: wire.Welcome | None = None
        #: Requests sent and not answered: request id -> the reply's type.
        self._pending: dict[int, type[Reply]] = {}
        self._req = itertools.count(1)
        #: Watches the Coordinator accepted whose verdict has not come.
        self._watching: set[int] = set()

    def _move(self, event: SessionEvent) -> None:
        self.state = move("control session", TRANSITIONS, self.state, event)

    # -- said by us ------------------------------------------------------------

    def hello(self, max_message_size: int, idle_timeout: float,
              max_datagram_size: int) -> wire.Hello:
        """The `Hello` to send once the handshake is done."""
        self._move(_E.SEND_HELLO)
        return wire.Hello(self.client_id, wire.PROTOCOL_VERSION, max_message_size,
                          idle_timeout, max_datagram_size)

    def request_channel(self, peer: str, holepunch: bool) -> wire.ChannelRequest:
        """A request to be introduced to `peer` (its `req` awaits a `ChannelIntro`)."""
        self._move(_E.SEND)
        req = next(self._req)
        self._pending[req] = wire.ChannelIntro
        return wire.ChannelRequest(req, peer, holepunch)

    def request_count(self, name: str) -> wire.BroadcastCount:
        """A request for broadcast `name`'s counts (awaits a `BroadcastCountReply`)."""
        self._move(_E.SEND)
        req = next(self._req)
        self._pending[req] = wire.BroadcastCountReply
        return wire.BroadcastCount(req, name)

    def request_watch(self, peer: str) -> wire.WatchRequest:
        """A request to watch `peer` (awaits a `WatchReply`; its `req` then
        names the watch, whose `PeerTerminated` follows when code is 0)."""
        self._move(_E.SEND)
        req = next(self._req)
        self._pending[req] = wire.WatchReply
        return wire.WatchRequest(req, peer)

    def request_group(self, op: str, name: str) -> wire.GroupRequest:
        """A group request (`op` one of `wire.GROUP_OPS`; awaits a
        `GroupReply`). After a "follow" is answered, `GroupView`s for `name`
        may come. `ValueError` for an unknown op."""
        if op not in wire.GROUP_OPS:
            raise ValueError(f"unknown group operation {op!r}")
        self._move(_E.SEND)
        req = next(self._req)
        self._pending[req] = wire.GroupReply
        return wire.GroupRequest(req, op, name)

    def report_load(self, asks: int, tells: int) -> wire.LoadReport | None:
        """A group member's load report; None unless the session is ready
        (before the welcome there is no group, after the end nobody to tell)."""
        if self.state is not SessionState.READY:
            return None
        self._move(_E.SEND)
        return wire.LoadReport(asks, tells)

    def cancel_watch(self, req: int) -> wire.WatchCancel | None:
        """Stop watch `req` (accepted or still waiting for its reply): the
        message to send, or None once the session is closed. A verdict that
        crosses it is dropped."""
        if self.state is not SessionState.READY:
            return None
        self._move(_E.SEND)
        self._pending.pop(req, None)
        self._watching.discard(req)
        return wire.WatchCancel(req)

    @property
    def watching(self) -> int:
        """How many accepted watches await their verdict."""
        return len(self._watching)

    def abandon(self, req: int) -> None:
        """Nobody waits for `req`'s reply any more: it will be dropped."""
        self._pending.pop(req, None)

    def answer(self, offer: int, code: int) -> wire.ChannelAnswer | None:
        """Our answer to `ChannelOffer` `offer`: 0 (dial me) or a refusal
        `Code`; None once the session is closed (nobody left to tell)."""
        if self.state is SessionState.CLOSED:
            return None
        self._move(_E.SEND)
        return wire.ChannelAnswer(offer, code)

    def dialing(self, req: int) -> wire.ChannelDialing | None:
        """The notice that we dial the peer of introduction `req`; None once
        the session is closed (nobody left to tell)."""
        if self.state is SessionState.CLOSED:
            return None
        self._move(_E.SEND)
        return wire.ChannelDialing(req)

    @property
    def waiting(self) -> int:
        """How many requests await their reply."""
        return len(self._pending)

    # -- said by the Coordinator ----------------------------------------------

    def receive(self, msg: wire.Control) -> Received:
        """Take one control message from the Coordinator; return what to act
        on. `RemoteProtocolError` (a `ProtocolError`) for a message the state
        does not allow; `ProtocolError` for a reply of the wrong kind."""
        self.state = move("control session", TRANSITIONS, self.state,
                          _RECEIVED.get(type(msg), _E.OTHER), by_peer=True,
                          detail=f"unexpected {type(msg).__name__} from the Coordinator")
        if isinstance(msg, wire.Welcome):
            self.welcome = msg
            return msg
        if isinstance(msg, wire.PeerTerminated):
            if msg.req not in self._watching:  # cancelled (or never accepted)
                return None
            self._watching.discard(msg.req)
            return msg
        if isinstance(msg, wire.ChannelIntro | wire.BroadcastCountReply | wire.WatchReply
                      | wire.GroupReply):
            expected = self._pending.get(msg.req)
            if expected is None:  # answered already, or abandoned
                return None
            if not isinstance(msg, expected):
                raise ProtocolError(f"a {type(msg).__name__} answered request {msg.req}, "
                                    f"a {expected.__name__}")
            del self._pending[msg.req]
            if isinstance(msg, wire.WatchReply) and msg.code == 0:
                self._watching.add(msg.req)
            return msg
        assert isinstance(msg, wire.ChannelOffer | wire.PeerDialing | wire.GroupView)
        return msg

    def close(self, code: int, reason: str) -> Ended:
        """The connection ended with `code` and `reason` (a refusal of the
        hello, the Coordinator going away, our own close): what that means,
        and the requests still waiting, which fail with it."""
        self._move(_E.CLOSE)
        waiting = list(self._pending)
        self._pending.clear()
        self._watching.clear()
        return Ended(connection_error(code, reason), waiting)
