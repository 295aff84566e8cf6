"""Every error conec-actors raises: one `ConecError` subclass per cause."""

from __future__ import annotations


class ConecError(Exception):
    """Base class of every error raised by conec-actors."""


class InvalidId(ConecError, ValueError):
    """A client id is not a lowercase DNS name (see `conec_actors.ids`)."""


class DuplicateId(ConecError):
    """Another client with this id is connected to the Coordinator."""


class NoSuchPeer(ConecError):
    """The peer is not connected to the Coordinator."""


class NoResponders(NoSuchPeer):
    """A `tell` or `ask` found nobody to take it: the peer was not connected
    when it was sent (or its route was found dead). A `NoSuchPeer`, so
    handlers written for `tell`/`ask` before it existed keep working."""


class PeerGone(ConecError):
    """The peer of a pending `ask` went away (it closed, or its connection was
    lost) before answering: raised then, not at the ask's timeout."""


class PeerNotListening(ConecError):
    """The peer does not accept direct channels (it runs with `listen=False`)."""


class CertificateError(ConecError):
    """A certificate was refused: bad, expired, wrong name, untrusted, or not
    the one the Coordinator vouched for."""


class ConnectFailed(ConecError, ConnectionError):
    """A connection could not be established (unreachable or timed out)."""


class NoChannel(ConecError):
    """There is no direct channel to that peer."""


class ChannelExists(ConecError):
    """A direct channel to that peer is already open or opening."""


class ChannelToSelf(ConecError):
    """A client cannot open a direct channel to itself."""


class StreamIdInUse(ConecError):
    """This client already used that stream number."""


class NoSuchBroadcast(ConecError):
    """No broadcast with that name exists."""


class StreamClosed(ConecError):
    """The stream ended cleanly: the writer finished, nothing more will come."""


class StreamReset(ConecError):
    """The stream was aborted by the other end or because its path failed."""

    def __init__(self, code: int = 0, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"stream reset (code {code:#x}): {reason}" if reason
                         else f"stream reset (code {code:#x})")


class Lagged(ConecError):
    """A `NonblockingInStream` dropped `count` messages (oldest first)."""

    def __init__(self, count: int) -> None:
        self.count = count
        super().__init__(f"reader lagged: {count} message(s) dropped")


class MessageTooLarge(ConecError):
    """A message exceeds the effective `max_message_size`."""


class DecodeError(ConecError):
    """A message did not decode as the expected type."""


class ProtocolError(ConecError):
    """The peer broke the conec-actors wire protocol."""


class ClientClosed(ConecError, ConnectionError):
    """The client is closed or lost its Coordinator."""


class RemoteError(ConecError):
    """The receiver of an `ask` raised; carries the remote exception's type name
    and message."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"remote {type_name}: {message}")


class CoordinatorFailed(ConecError):
    """The Coordinator shut itself down (for example a worker crash loop)."""


class FederationError(ConecError):
    """A Coordinator could not join its federation (`CoordConfig.cluster`):
    no NATS server answered, a bucket could not be made, or no Coordinator
    number was free."""


class PoolFailed(ConecError):
    """An `ActorPool` stopped because its instances kept dying (3 deaths within
    10 s), or could not start."""


__all__ = [
    "CertificateError",
    "ChannelExists",
    "ChannelToSelf",
    "ClientClosed",
    "ConecError",
    "ConnectFailed",
    "CoordinatorFailed",
    "DecodeError",
    "DuplicateId",
    "FederationError",
    "InvalidId",
    "Lagged",
    "MessageTooLarge",
    "NoChannel",
    "NoResponders",
    "NoSuchBroadcast",
    "NoSuchPeer",
    "PeerGone",
    "PeerNotListening",
    "PoolFailed",
    "ProtocolError",
    "RemoteError",
    "StreamClosed",
    "StreamIdInUse",
    "StreamReset",
]
