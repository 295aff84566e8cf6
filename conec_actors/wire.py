"""The conec-actors wire protocol between QUIC peers (client <-> Coordinator,
client <-> client): ALPN, version, control messages and the one table of
application error codes.

Every stream carries frames (`conec_actors.framing`). Each connection has one
control stream, opened first by the connecting side; it carries `Control`
messages. A data stream starts with one `StreamHeader` frame from its opener;
the Coordinator answers an opener with `StreamAccepted` (or resets the stream
with a code from `CODES`) before relaying anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import msgspec

from . import errors

ALPN = "conec-actors/1"
PROTOCOL_VERSION = 1

#: Stream reset codes below this value belong to the application
#: (`OutStream.reset(code)`); the library's own codes sit above it.
USER_CODE_LIMIT = 0x10000


class Code(IntEnum):
    """Application error codes, for stream resets and connection closes."""

    NO_ERROR = 0
    CERTIFICATE = 0x10001
    DUPLICATE_ID = 0x10002
    INVALID_ID = 0x10003
    MESSAGE_TOO_LARGE = 0x10004
    PROTOCOL = 0x10005
    HELLO_TIMEOUT = 0x10006
    NO_SUCH_PEER = 0x10007
    STREAM_ID_IN_USE = 0x10008
    PEER_GONE = 0x10009
    COORD_SHUTDOWN = 0x1000A
    CLIENT_CLOSED = 0x1000B
    VERSION = 0x1000C
    READER_CLOSED = 0x1000D
    TOO_MANY_STREAMS = 0x1000E
    COORD_FAILED = 0x1000F
    PATH_FAILED = 0x10010
    PEER_NOT_LISTENING = 0x10011
    CHANNEL_EXISTS = 0x10012
    CHANNEL_TO_SELF = 0x10013
    CHANNEL_CLOSED = 0x10014
    NO_SUCH_BROADCAST = 0x10015
    BROADCAST_ENDED = 0x10016
    BROADCAST_FULL = 0x10017
    UNCLAIMED = 0x10018
    TOO_MANY_WATCHES = 0x10019
    TOO_MANY_GROUPS = 0x1001A
    GROUP_FULL = 0x1001B
    FEDERATION_UNAVAILABLE = 0x1001C


@dataclass(frozen=True, slots=True)
class CodeInfo:
    code: Code
    error: type[errors.ConecError]
    message: str


#: The one table: every library code, the exception it maps to, and what a
#: person should be told.
CODES: dict[int, CodeInfo] = {
    info.code: info
    for info in (
        CodeInfo(Code.NO_ERROR, errors.StreamReset, "closed normally"),
        CodeInfo(Code.CERTIFICATE, errors.CertificateError,
                 "the certificate was refused"),
        CodeInfo(Code.DUPLICATE_ID, errors.DuplicateId,
                 "a client with this id is already connected"),
        CodeInfo(Code.INVALID_ID, errors.InvalidId, "the client id is not valid"),
        CodeInfo(Code.MESSAGE_TOO_LARGE, errors.MessageTooLarge,
                 "a message exceeded the effective max_message_size"),
        CodeInfo(Code.PROTOCOL, errors.ProtocolError, "the peer broke the wire protocol"),
        CodeInfo(Code.HELLO_TIMEOUT, errors.ProtocolError,
                 "no hello within the handshake deadline"),
        CodeInfo(Code.NO_SUCH_PEER, errors.NoSuchPeer, "the peer is not connected"),
        CodeInfo(Code.STREAM_ID_IN_USE, errors.StreamIdInUse,
                 "that stream number was already used"),
        CodeInfo(Code.PEER_GONE, errors.StreamReset, "the other end went away"),
        CodeInfo(Code.COORD_SHUTDOWN, errors.ClientClosed,
                 "the Coordinator is shutting down"),
        CodeInfo(Code.CLIENT_CLOSED, errors.ClientClosed, "the client closed"),
        CodeInfo(Code.VERSION, errors.ProtocolError,
                 "incompatible conec-actors protocol versions"),
        CodeInfo(Code.READER_CLOSED, errors.StreamReset, "the reader closed the stream"),
        CodeInfo(Code.TOO_MANY_STREAMS, errors.ProtocolError,
                 "too many streams opening at once"),
        CodeInfo(Code.COORD_FAILED, errors.ClientClosed,
                 "the Coordinator failed and shut down"),
        CodeInfo(Code.PATH_FAILED, errors.StreamReset,
                 "the path between the two ends failed"),
        CodeInfo(Code.PEER_NOT_LISTENING, errors.PeerNotListening,
                 "the peer does not accept direct channels (listen=False)"),
        CodeInfo(Code.CHANNEL_EXISTS, errors.ChannelExists,
                 "a channel between these two clients is already open or opening"),
        CodeInfo(Code.CHANNEL_TO_SELF, errors.ChannelToSelf,
                 "a client cannot open a channel to itself"),
        CodeInfo(Code.CHANNEL_CLOSED, errors.StreamReset, "the direct channel was closed"),
        CodeInfo(Code.NO_SUCH_BROADCAST, errors.NoSuchBroadcast,
                 "no broadcast with that name exists"),
        CodeInfo(Code.BROADCAST_ENDED, errors.StreamReset,
                 "the broadcast ended: no member reads it any more"),
        CodeInfo(Code.BROADCAST_FULL, errors.ProtocolError,
                 "the broadcast has reached its member limit"),
        CodeInfo(Code.UNCLAIMED, errors.StreamReset,
                 "no task at the receiver took the stream within its idle timeout"),
        CodeInfo(Code.TOO_MANY_WATCHES, errors.ProtocolError,
                 "this client already holds the most watches a client may hold"),
        CodeInfo(Code.TOO_MANY_GROUPS, errors.ProtocolError,
                 "this client already belongs to (or follows) the most groups it may"),
        CodeInfo(Code.GROUP_FULL, errors.ProtocolError,
                 "the group has reached its member limit"),
        CodeInfo(Code.FEDERATION_UNAVAILABLE, errors.ConnectFailed,
                 "federation unavailable: the federation's id directory (NATS) did not "
                 "answer in time"),
    )
}


def describe(code: int) -> str:
    """A human description of an application code (user codes included)."""
    info = CODES.get(code)
    if info is not None:
        return info.message
    if code < USER_CODE_LIMIT:
        return f"reset by the application with code {code}"
    return f"unknown error code {code:#x}"


def error_for(code: int, reason: str = "") -> errors.ConecError:
    """The exception a code maps to, with a message a person can act on."""
    info = CODES.get(code)
    text = reason or describe(code)
    if info is None or info.error is errors.StreamReset:
        return errors.StreamReset(code, text)
    return info.error(text)


def stream_reset(code: int, reason: str = "") -> errors.StreamReset:
    """A `StreamReset` for a reset code, described from the table."""
    if not reason and code < USER_CODE_LIMIT:
        reason = f"the other end reset the stream with code {code}"
    return errors.StreamReset(code, reason or describe(code))


#: Characters of peer input a reason quotes at most.
QUOTE_MAX = 256


def quote(value: object) -> str:
    """`repr` of a value a peer sent, for error reasons: at most QUOTE_MAX
    characters of it, so a reason never grows with what the peer sent."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= QUOTE_MAX:
        return repr(text)
    return f"{text[:QUOTE_MAX]!r}... ({len(text)} characters)"


def clip(reason: str) -> str:
    """An error reason that may carry peer input (an exception's text), cut
    to a bounded length the same way `quote` cuts a value."""
    limit = 2 * QUOTE_MAX
    return reason if len(reason) <= limit else f"{reason[:limit]}... (cut)"


#: Longest broadcast name.
MAX_BROADCAST_NAME = 255
#: Longest group name (validated like a broadcast name).
MAX_GROUP_NAME = MAX_BROADCAST_NAME
#: The operations of a `GroupRequest`.
GROUP_OPS = frozenset({"join", "leave", "members", "follow"})
#: Room for the sender tag the Coordinator puts in front of every message it
#: delivers on a broadcast: one byte of length, then the sender's id.
BROADCAST_TAG_MAX = 1 + 253


def sender_tag(client_id: str) -> bytes:
    """The prefix of every delivered broadcast message."""
    raw = client_id.encode()
    return bytes([len(raw)]) + raw


# A delivery whose first byte is 0 (no sender id is empty) is a notice, by
# its second byte: a piece of a large message whose last piece comes as an
# ordinary tagged delivery; the message in pieces was dropped (its sender
# went away); a message skipped because it exceeds the reader's limit
# (8-byte size, then the sender tag).
BROADCAST_PART = b"\x00\x00"
BROADCAST_DROPPED = b"\x00\x01"
BROADCAST_TOO_LARGE = b"\x00\x02"
#: What a broadcast delivery adds to a message at most (tag or notice).
BROADCAST_OVERHEAD = len(BROADCAST_TOO_LARGE) + 8 + BROADCAST_TAG_MAX


def too_large_notice(size: int, tag: bytes) -> bytes:
    """The notice a reader gets instead of a message above its limit."""
    return BROADCAST_TOO_LARGE + size.to_bytes(8, "big") + tag


# --- control messages --------------------------------------------------------

StreamKind = Literal["proxied", "direct", "broadcast"]


class Hello(msgspec.Struct, tag="hello", frozen=True):
    """First message of a connection, from the connecting side."""

    id: str
    version: int
    max_message_size: int
    idle_timeout: float
    max_datagram_size: int


class Welcome(msgspec.Struct, tag="welcome", frozen=True):
    """Answer to `Hello`: the effective values and the observed address."""

    version: int
    max_message_size: int
    idle_timeout: float
    max_datagram_size: int
    observed_addr: tuple[str, int]


class StreamHeader(msgspec.Struct, tag="stream", frozen=True):
    """First frame of a data stream.

    `name` says whom or what the stream is with: on a proxied stream, from an
    opener to the Coordinator the destination's id, from the Coordinator to
    the destination the opener's; on a direct stream the opener's id; on a
    broadcast stream the broadcast's name. Read it as `peer` or `broadcast`
    to say which is meant. (Encoded under the key "peer", as it always was.)
    """

    kind: StreamKind
    name: str = msgspec.field(name="peer")
    n: int
    #: "" for application streams (delivered on `client.incoming`); other
    #: values name an internal use, such as "mailbox" for tell/ask.
    purpose: str = ""
    #: From the Coordinator to the destination: the stream's effective
    #: message size limit (the smallest of both ends' and the
    #: Coordinator's); 0 means unknown (use your own).
    max_message_size: int = 0

    @property
    def peer(self) -> str:
        """The client id in the header of a proxied or direct stream."""
        return self.name

    @property
    def broadcast(self) -> str:
        """The broadcast's name in the header of a broadcast stream."""
        return self.name


class StreamAccepted(msgspec.Struct, tag="accepted", frozen=True):
    """First frame back to an opener: the stream reached its destination."""

    #: The stream's effective message size limit (the smallest of both
    #: ends' and the Coordinator's); 0 means unknown (use your own).
    max_message_size: int = 0


class ChannelRequest(msgspec.Struct, tag="chreq", frozen=True):
    """Client -> Coordinator: introduce me to `peer` for a direct channel."""

    req: int
    peer: str
    holepunch: bool = True


class ChannelOffer(msgspec.Struct, tag="choffer", frozen=True):
    """Coordinator -> target: `peer` wants a channel; this is its certificate
    (DER) and the address the Coordinator sees it from."""

    offer: int
    peer: str
    cert: bytes
    addr: tuple[str, int]
    holepunch: bool = True


class ChannelAnswer(msgspec.Struct, tag="chanswer", frozen=True):
    """Target -> Coordinator: 0 (expecting the dial) or a `Code`."""

    offer: int
    code: int


class ChannelIntro(msgspec.Struct, tag="chintro", frozen=True):
    """Coordinator -> opener: the target's certificate and address, or why not."""

    req: int
    code: int
    peer: str
    cert: bytes = b""
    addr: tuple[str, int] = ("", 0)
    reason: str = ""


class ChannelDialing(msgspec.Struct, tag="chdialing", frozen=True):
    """Opener -> Coordinator: I have sent my first packets toward the peer of
    introduction `req` (so its knocks may now travel all the way)."""

    req: int


class PeerDialing(msgspec.Struct, tag="chpeerdialing", frozen=True):
    """Coordinator -> target: `peer` has started dialing you."""

    peer: str


class ChannelHello(msgspec.Struct, tag="chhello", frozen=True):
    """First message on a direct channel, from the side that dialled."""

    id: str
    version: int
    max_message_size: int


class ChannelWelcome(msgspec.Struct, tag="chwelcome", frozen=True):
    """Answer to `ChannelHello`: both ends have registered the channel."""

    id: str
    max_message_size: int


class BroadcastCount(msgspec.Struct, tag="bcount", frozen=True):
    """Client -> Coordinator: how many senders and receivers has `name`?"""

    req: int
    name: str


class BroadcastCountReply(msgspec.Struct, tag="bcountr", frozen=True):
    req: int
    code: int
    senders: int = 0
    receivers: int = 0


class WatchRequest(msgspec.Struct, tag="watch", frozen=True):
    """Client -> Coordinator: tell me when `peer` ends (watch number `req`)."""

    req: int
    peer: str


class WatchReply(msgspec.Struct, tag="watchr", frozen=True):
    """Coordinator -> client: 0 (watching: a `PeerTerminated` will follow),
    `Code.NO_SUCH_PEER` (not connected: the verdict is "not-connected") or
    `Code.TOO_MANY_WATCHES`."""

    req: int
    code: int


class WatchCancel(msgspec.Struct, tag="unwatch", frozen=True):
    """Client -> Coordinator: forget watch `req` (no answer)."""

    req: int


class PeerTerminated(msgspec.Struct, tag="terminated", frozen=True):
    """Coordinator -> watcher: the peer of watch `req` ended; `reason` is
    "left" (it closed) or "vanished" (its connection timed out or was lost)."""

    req: int
    reason: str


class GroupRequest(msgspec.Struct, tag="group", frozen=True):
    """Client -> Coordinator: `op` on group `name`, answered by a
    `GroupReply`. `op` is "join", "leave", "members" (a snapshot) or
    "follow" (a snapshot, then a `GroupView` on every change of the members
    until the client leaves)."""

    req: int
    op: str
    name: str


class GroupReply(msgspec.Struct, tag="groupr", frozen=True):
    """Coordinator -> client: 0 or a `Code` (`TOO_MANY_GROUPS`,
    `GROUP_FULL`), and the members of the group after the request."""

    req: int
    code: int
    members: list[str] = []


class GroupView(msgspec.Struct, tag="groupv", frozen=True):
    """Coordinator -> follower of group `name`: its members now, and the
    load each last reported (`asks[i]`, `tells[i]` for `members[i]`; empty
    when none is known)."""

    name: str
    members: list[str]
    asks: list[int] = []
    tells: list[int] = []


class LoadReport(msgspec.Struct, tag="load", frozen=True):
    """Client (a group member) -> Coordinator: the asks it has taken and not
    answered yet, and the envelopes waiting in its mailbox (no answer)."""

    asks: int
    tells: int


Control = (Hello | Welcome | StreamHeader | StreamAccepted | ChannelRequest | ChannelOffer
           | ChannelAnswer | ChannelIntro | ChannelHello | ChannelWelcome | BroadcastCount
           | BroadcastCountReply | ChannelDialing | PeerDialing | WatchRequest | WatchReply
           | WatchCancel | PeerTerminated | GroupRequest | GroupReply | GroupView
           | LoadReport)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Control)


def encode(msg: Control) -> bytes:
    """Encode a control message (unframed)."""
    return _encoder.encode(msg)


#: What decoding peer input with msgspec can raise: its `DecodeError` (and
#: `ValidationError`, a subclass), and `RecursionError` for a message nested
#: deeper than the interpreter's recursion limit (even inside a field that is
#: only skipped). Every decoder of peer input turns these into our errors.
DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, RecursionError)


def decode(data: bytes) -> Control:
    """Decode a control message; `ProtocolError` if it is not one."""
    try:
        return _decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise errors.ProtocolError(f"malformed control message: {exc}") from None
