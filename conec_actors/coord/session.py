"""The front-end's side of one client connection, without I/O.

`SessionCore` holds what the front-end knows of a client connection (its
state, id, limits, the control stream's reader and the counts its bounds are
kept by) and decides what happens next: every method takes one event (the
handshake completed, bytes of the control stream, a worker's answer, the
hello deadline passing at `now`) and returns `Action`s for the driver
(`frontend.Session`) to carry out. It never sends, reads a clock or arms a
timer itself.

States run handshake -> hello -> admitting -> ready, and any of them -> closed;
`TRANSITIONS` is the whole table, and a move not in it raises
`transitions.LocalProtocolError` (a bug in the driver, not something a peer can cause: a
peer's protocol violations close the connection).

Bounds kept here (DESIGN 3.1): the control stream is not read while more than
MAX_PENDING_REQUESTS of its requests wait for a worker or more than
CONTROL_REPLY_HIGH bytes of replies are unsent (read again below
CONTROL_REPLY_LOW); at most MAX_PENDING_OPENS streams and
MAX_PENDING_CHANNELS channel introductions of one client wait at once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from .. import wire
from ..control import CONTROL_STREAM, ControlReader
from ..errors import CertificateError, ConecError, InvalidId, ProtocolError
from ..ids import check_id, is_valid_id
from ..limits import effective_limit
from ..transitions import move
from ..used_numbers import UsedNumbers
from . import ipc
from .groups import check_name as check_group_name

#: The name this front-end registers its clients under at the workers.
FRONTEND_NAME = "fe0"
HELLO_TIMEOUT = 5.0
MAX_PENDING_OPENS = 64  # streams of one client waiting for their route
MAX_PENDING_CHANNELS = 16  # channel introductions of one client in progress
#: The control stream of a client is not read while more than this many
#: bytes of replies to it are unsent (it does not read them), and read again
#: below CONTROL_REPLY_LOW.
CONTROL_REPLY_HIGH = 64 * 1024
CONTROL_REPLY_LOW = 32 * 1024
#: Control requests of one client waiting for a worker's answer; more are
#: not read until some are answered.
MAX_PENDING_REQUESTS = 64

#: The reason a refused connection is counted and logged under (a metric
#: label: one short word per code, never an id).
REFUSALS: dict[int, str] = {
    wire.Code.CERTIFICATE: "bad_certificate",
    wire.Code.DUPLICATE_ID: "duplicate_id",
    wire.Code.INVALID_ID: "invalid_id",
    wire.Code.PROTOCOL: "protocol_error",
    wire.Code.HELLO_TIMEOUT: "hello_timeout",
    wire.Code.VERSION: "bad_version",
}


def refusal_reason(code: int) -> str:
    """The reason word for refusing a connection with `code`."""
    reason = REFUSALS.get(code)
    if reason is not None:
        return reason
    try:
        return wire.Code(code).name.lower()
    except ValueError:
        return "other"


class State(enum.Enum):
    HANDSHAKE = "handshake"  # QUIC handshake under way
    HELLO = "hello"  # certificate accepted, waiting for the hello
    ADMITTING = "admitting"  # hello accepted, the routing worker registers the id
    READY = "ready"  # welcomed: streams and requests are served
    CLOSED = "closed"  # refused or gone: nothing more is acted on


class Event(enum.Enum):
    CERTIFIED = "certified"  # the handshake completed with an acceptable certificate
    HELLO = "hello"  # an acceptable hello arrived
    ADMITTED = "admitted"  # the routing worker registered the id
    CLOSE = "close"  # refused, timed out, or the connection ended


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.HANDSHAKE, Event.CERTIFIED): State.HELLO,
    (State.HELLO, Event.HELLO): State.ADMITTING,
    (State.ADMITTING, Event.ADMITTED): State.READY,
    **{(s, Event.CLOSE): State.CLOSED
       for s in (State.HANDSHAKE, State.HELLO, State.ADMITTING, State.READY)},
}


# -- actions (what the driver carries out) ---------------------------------------


@dataclass(frozen=True, slots=True)
class SendControl:
    """Send a control message on the control stream."""

    msg: wire.Control


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the connection with an application code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call `timer_fired` at `deadline` (replaces an armed timer)."""

    deadline: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """The armed timer is no longer needed."""


@dataclass(frozen=True, slots=True)
class Register:
    """Ask the routing worker to register `entry`; answer with `admitted`."""

    entry: ipc.Entry


@dataclass(frozen=True, slots=True)
class Unregister:
    """Tell the routing worker this connection no longer holds `client_id`."""

    client_id: str
    conn_key: int


@dataclass(frozen=True, slots=True)
class ReplaceStale:
    """The client reconnected with the certificate its connection `conn_key`
    holds the id with: that connection is stale; close it."""

    conn_key: int


@dataclass(frozen=True, slots=True)
class Admit:
    """The client is admitted: list it, and use this datagram size."""

    datagram_size: int


#: The requests of an admitted client that the front-end acts on.
Request = (wire.ChannelRequest | wire.ChannelAnswer | wire.ChannelDialing | wire.BroadcastCount
           | wire.WatchRequest | wire.WatchCancel | wire.GroupRequest | wire.LoadReport)


@dataclass(frozen=True, slots=True)
class Handle:
    """A request of an admitted client for the front-end to act on."""

    msg: Request


@dataclass(frozen=True, slots=True)
class RejectStream:
    """Stop and reset a stream the client may not open."""

    quic_id: int
    code: int


@dataclass(frozen=True, slots=True)
class NewLeg:
    """The client opened a proxied or broadcast stream: read its header."""

    quic_id: int


@dataclass(frozen=True, slots=True)
class WatchControl:
    """Call back after every datagram (`on`) while replies drain, or stop."""

    on: bool


@dataclass(frozen=True, slots=True)
class CreditControl:
    """Grant the control stream credit up to `offset`."""

    offset: int


Action = (SendControl | CloseConnection | ArmTimer | CancelTimer | Register | Unregister
          | Admit | Handle | RejectStream | NewLeg | WatchControl | CreditControl
          | ReplaceStale)


@dataclass(frozen=True, slots=True)
class Limits:
    """The Coordinator's own limits; a client's hello may only lower them."""

    max_message_size: int
    max_datagram_size: int
    idle_timeout: float
    #: the name directory entries give this front-end (shard k: "fe{k}")
    frontend: str = FRONTEND_NAME


class SessionCore:
    """The state of one client connection at the front-end; events in,
    actions out."""

    def __init__(self, conn_key: int, peer_address: tuple[str, int], limits: Limits,
                 verify_name: Callable[[str], None]) -> None:
        """`verify_name(id)` raises `CertificateError` unless the certificate
        the handshake presented is valid for `id`."""
        self.conn_key = conn_key
        self.peer_address = peer_address
        self._limits = limits
        self._verify_name = verify_name
        self.state = State.HANDSHAKE
        self.client_id: str | None = None
        self.cert_der = b""
        self.max_message_size = limits.max_message_size
        self.datagram_size = limits.max_datagram_size
        self.idle_timeout = limits.idle_timeout
        self.deadline = 0.0  # for the hello
        self.registered = False  # the routing worker holds our entry
        #: closed because a newer connection with the same certificate took
        #: the id: its client did not leave
        self.replaced = False
        self.control_quic_id: int | None = None
        #: holds control messages not acted on yet (while replies back up)
        self.control = ControlReader()
        self.control_blocked = False
        self._watching = False
        self.requests_pending = 0  # control requests waiting for a worker
        self.pending_opens = 0  # streams waiting for their route or a slot
        self.pending_channels = 0  # channel introductions not settled
        self.used_numbers = UsedNumbers()  # proxied stream numbers
        #: Why the connection was refused (closed before it was admitted),
        #: a `REFUSALS` word; None while it was not.
        self.refusal: str | None = None
        #: Figures of this client's streams that are over: bytes and
        #: messages in (from the client), out (to it).
        self.bytes_in = self.messages_in = self.bytes_out = self.messages_out = 0

    def _move(self, event: Event) -> None:
        self.state = move("front-end session", TRANSITIONS, self.state, event)

    # -- lifetime ------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """The connection arrived at `now`: the hello is due by the deadline."""
        self.deadline = now + HELLO_TIMEOUT
        return [ArmTimer(self.deadline)]

    def handshake_done(self, cert_der: bytes | None, error: str = "") -> list[Action]:
        """The handshake completed; `cert_der` is the client's certificate if
        it passed the chain check, else `error` says why not."""
        if self.state is State.CLOSED:
            return []
        if cert_der is None:
            return self.close(wire.Code.CERTIFICATE, error)
        self._move(Event.CERTIFIED)
        self.cert_der = cert_der
        return []

    def timer_fired(self, now: float) -> list[Action]:
        """The timer armed for `deadline` fired (maybe early)."""
        if self.state in (State.READY, State.CLOSED):
            return []
        if now < self.deadline:
            return [ArmTimer(self.deadline)]
        return self.close(wire.Code.HELLO_TIMEOUT,
                          f"no hello within {HELLO_TIMEOUT:.0f} s of connecting")

    def close(self, code: int, reason: str = "") -> list[Action]:
        """Refuse the client: close with `code`. Nothing it sent after this
        is acted on, and an admission in flight is undone when it returns."""
        if self.state is State.CLOSED:
            return []
        if self.state is not State.READY:
            self.refusal = refusal_reason(code)
        self._move(Event.CLOSE)
        return [CancelTimer(), CloseConnection(code, reason or wire.describe(code))]

    def terminated(self) -> list[Action]:
        """The connection is gone (closed by either side, or timed out)."""
        acts: list[Action] = [CancelTimer()]
        if self.state is not State.CLOSED:
            self._move(Event.CLOSE)
        return acts + self._unregister()

    def stream_over(self, bytes_in: int, messages_in: int, bytes_out: int,
                    messages_out: int) -> None:
        """A stream of this client is over: keep its figures in the totals."""
        self.bytes_in += bytes_in
        self.messages_in += messages_in
        self.bytes_out += bytes_out
        self.messages_out += messages_out

    def _unregister(self) -> list[Action]:
        if not self.registered or self.client_id is None:
            return []
        self.registered = False
        return [Unregister(self.client_id, self.conn_key)]

    # -- streams -------------------------------------------------------------------

    def new_stream(self, quic_id: int) -> list[Action]:
        """The client sent on a stream `quic_id` not known yet. The control stream
        must come first; streams may be opened once ready."""
        if self.state in (State.HANDSHAKE, State.CLOSED):
            return []
        if self.control_quic_id is None:
            if quic_id != CONTROL_STREAM:
                return self.close(wire.Code.PROTOCOL,
                                  "the control stream must be opened first")
            self.control_quic_id = quic_id
            return []
        if self.state is not State.READY or quic_id % 4 != 0:
            return [RejectStream(quic_id, wire.Code.PROTOCOL)]
        return [NewLeg(quic_id)]

    def stream_reset(self, quic_id: int) -> list[Action]:
        if quic_id == self.control_quic_id:
            return self.close(wire.Code.PROTOCOL, "the control stream was reset")
        return []

    def begin_open(self) -> bool:
        """A stream waits for its route: False if too many already do."""
        if self.pending_opens >= MAX_PENDING_OPENS:
            return False
        self.pending_opens += 1
        return True

    def open_settled(self) -> None:
        """A stream that waited was opened, refused or dropped."""
        self.pending_opens -= 1

    def channel_settled(self) -> None:
        """A channel introduction was answered, expired or dropped."""
        self.pending_channels -= 1

    # -- the control stream ------------------------------------------------------------

    def control_data(self, data: bytes, fin: bool) -> list[Action]:
        """Bytes of the control stream arrived (act on them with `step_control`)."""
        try:
            self.control.feed(data, fin)
        except ProtocolError as exc:
            return self.close(wire.Code.PROTOCOL, wire.clip(str(exc)))
        return []

    def step_control(self, unsent: int) -> list[Action] | None:
        """Act on the next parked control message, given the replies still
        `unsent` on the control stream: its actions, or None when nothing
        (more) is to be acted on now. Call `control_settled` after."""
        if self.state is State.CLOSED or not self.control:
            return None
        if self.requests_pending >= MAX_PENDING_REQUESTS or unsent > (
                CONTROL_REPLY_LOW if self.control_blocked else CONTROL_REPLY_HIGH):
            self.control_blocked = True
            return None
        try:
            return self._on_control(self.control.next())
        except ConecError as exc:
            return self.close(wire.Code.PROTOCOL, wire.clip(str(exc)))

    def control_settled(self) -> list[Action]:
        """After `step_control`: watch the replies drain while blocked, and
        credit what was acted on (not a partial message, not parked ones)."""
        if self.state is State.CLOSED:
            return []
        acts: list[Action] = []
        if self.control_blocked and self.control:
            if not self._watching:
                self._watching = True
                acts.append(WatchControl(True))
        elif self.control_blocked:
            self.control_blocked = self._watching = False
            acts.append(WatchControl(False))
        acts.append(CreditControl(self.control.acted_on))
        if self.control.ended:
            acts += self.close(wire.Code.PROTOCOL, "the control stream was closed")
        return acts

    def replace(self) -> list[Action]:
        """A newer connection with this client's certificate took its id
        (on this front-end or another): close this one, as no departure."""
        self.replaced = True
        return self.close(wire.Code.DUPLICATE_ID,
                          "replaced by a newer connection with the same certificate")

    def request_started(self) -> None:
        """A request passed on (`Handle`) is answered later, after another
        process: it counts against MAX_PENDING_REQUESTS until `request_done`."""
        self.requests_pending += 1

    def request_done(self) -> bool:
        """A control request's answer came back: True if the control stream
        should be read again (it was held back for it)."""
        self.requests_pending -= 1
        return self.control_blocked and self.state is not State.CLOSED

    def _on_control(self, msg: wire.Control) -> list[Action]:
        if isinstance(msg, wire.Hello):
            if self.state is not State.HELLO:
                raise ProtocolError("unexpected hello")
            return self._hello(msg)
        if self.state is State.READY:
            if isinstance(msg, wire.ChannelRequest):
                return self._channel_request(msg)
            if isinstance(msg, wire.ChannelAnswer | wire.ChannelDialing | wire.WatchCancel):
                return [Handle(msg)]
            if isinstance(msg, wire.WatchRequest):
                if not is_valid_id(msg.peer):  # never connected: answered here
                    return [SendControl(wire.WatchReply(msg.req, wire.Code.NO_SUCH_PEER))]
                return [Handle(msg)]
            if isinstance(msg, wire.BroadcastCount):
                self.requests_pending += 1
                return [Handle(msg)]
            if isinstance(msg, wire.GroupRequest):
                if msg.op not in wire.GROUP_OPS:
                    raise ProtocolError(f"unknown group operation {wire.quote(msg.op)}")
                check_group_name(msg.name)
                return [Handle(msg)]
            if isinstance(msg, wire.LoadReport):
                if msg.asks < 0 or msg.tells < 0:
                    raise ProtocolError("a load report counts from 0")
                return [Handle(msg)]
        raise ProtocolError(f"unexpected control message {type(msg).__name__}")

    def _hello(self, hello: wire.Hello) -> list[Action]:
        if hello.version != wire.PROTOCOL_VERSION:
            return self.close(wire.Code.VERSION, f"protocol version {hello.version} is not "
                              f"supported (this Coordinator speaks {wire.PROTOCOL_VERSION})")
        try:
            check_id(hello.id)
        except InvalidId as exc:
            return self.close(wire.Code.INVALID_ID, wire.clip(str(exc)))
        try:
            self._verify_name(hello.id)
        except CertificateError as exc:
            return self.close(wire.Code.CERTIFICATE, wire.clip(str(exc)))
        self._move(Event.HELLO)
        self.client_id = hello.id
        lim = self._limits
        self.max_message_size = effective_limit(hello.max_message_size, lim.max_message_size)
        self.datagram_size = min(hello.max_datagram_size, lim.max_datagram_size)
        self.idle_timeout = min(hello.idle_timeout, lim.idle_timeout)
        return [Register(self.entry())]

    def entry(self) -> ipc.Entry:
        """This client's directory entry."""
        assert self.client_id is not None
        return ipc.Entry(self.client_id, self._limits.frontend, self.conn_key, self.peer_address,
                         self.cert_der)

    def admitted(self, code: int, stale: int | None = None) -> list[Action]:
        """The routing worker's answer to `Register`: 0 or a `wire.Code`;
        `stale`, the connection this one took the id from (same certificate)."""
        replace: list[Action] = [ReplaceStale(stale)] if code == 0 and stale is not None \
            and stale != self.conn_key else []
        if code == 0:
            self.registered = True
        if self.state is State.CLOSED:
            return self._unregister() + replace  # left while being admitted
        if code != 0:
            return self.close(code, f"a client with id {wire.quote(self.client_id)} is "
                              "already connected" if code == wire.Code.DUPLICATE_ID else "")
        self._move(Event.ADMITTED)
        return [CancelTimer(), Admit(self.datagram_size), SendControl(wire.Welcome(
            wire.PROTOCOL_VERSION, self.max_message_size, self.idle_timeout,
            self.datagram_size, self.peer_address)), *replace]

    def _channel_request(self, msg: wire.ChannelRequest) -> list[Action]:
        def answer(code: int, reason: str = "") -> list[Action]:
            # The peer named is echoed only as far as an id can go.
            return [SendControl(wire.ChannelIntro(msg.req, code, msg.peer[:wire.QUOTE_MAX],
                                                  reason=reason))]

        if msg.peer == self.client_id:
            return answer(wire.Code.CHANNEL_TO_SELF)
        if not is_valid_id(msg.peer):
            return answer(wire.Code.NO_SUCH_PEER,
                          f"no client {wire.quote(msg.peer)} is connected")
        if self.pending_channels >= MAX_PENDING_CHANNELS:
            return answer(wire.Code.TOO_MANY_STREAMS,
                          f"more than {MAX_PENDING_CHANNELS} channel introductions pending")
        # Counted from the request until the offer is settled (answered,
        # expired or dropped), so a client cannot pile up offers at targets
        # that never answer.
        self.pending_channels += 1
        return [Handle(msg)]
