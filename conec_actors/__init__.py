"""conec-actors: COordinated NEtwork Channels for Python.

Many Clients, one Coordinator: ordered, message-framed QUIC streams between
clients, relayed by a multi-process Coordinator.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CertificateError,
    ChannelExists,
    ChannelToSelf,
    ClientClosed,
    ConecError,
    ConnectFailed,
    CoordinatorFailed,
    DecodeError,
    DuplicateId,
    FederationError,
    InvalidId,
    Lagged,
    MessageTooLarge,
    NoChannel,
    NoResponders,
    NoSuchBroadcast,
    NoSuchPeer,
    PeerGone,
    PeerNotListening,
    PoolFailed,
    ProtocolError,
    RemoteError,
    StreamClosed,
    StreamIdInUse,
    StreamReset,
)

if TYPE_CHECKING:
    from .actor import Actor
    from .adapters import NonblockingInStream, TypedInStream, TypedOutStream
    from .client import Client
    from .client.backoff import Disconnected, Reconnected
    from .client.mailbox import Envelope, Mailbox, TypedMailbox
    from .client.watch import Terminated, Watch
    from .config import ClientConfig, CoordConfig
    from .coord import Coord
    from .pool import ActorPool
    from .streams import (
        BroadcastInStream,
        BroadcastMessage,
        IncomingStream,
        InStream,
        OutStream,
        StreamId,
    )

# Imported on first use, so that worker processes (which only need msgspec
# and pyzmq) do not pay for aioquic and cryptography.
_LAZY = {
    "BroadcastMessage": ".streams",
    "BroadcastInStream": ".streams",
    "NonblockingInStream": ".adapters",
    "TypedInStream": ".adapters",
    "TypedOutStream": ".adapters",
    "Actor": ".actor",
    "ActorPool": ".pool",
    "Client": ".client",
    "Disconnected": ".client.backoff",
    "Reconnected": ".client.backoff",
    "Envelope": ".client.mailbox",
    "Mailbox": ".client.mailbox",
    "TypedMailbox": ".client.mailbox",
    "ClientConfig": ".config",
    "CoordConfig": ".config",
    "Coord": ".coord",
    "IncomingStream": ".streams",
    "InStream": ".streams",
    "OutStream": ".streams",
    "StreamId": ".streams",
    "Terminated": ".client.watch",
    "Watch": ".client.watch",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorPool",
    "BroadcastInStream",
    "BroadcastMessage",
    "CertificateError",
    "ChannelExists",
    "ChannelToSelf",
    "Client",
    "ClientClosed",
    "ClientConfig",
    "ConecError",
    "ConnectFailed",
    "Coord",
    "CoordConfig",
    "CoordinatorFailed",
    "DecodeError",
    "Disconnected",
    "DuplicateId",
    "Envelope",
    "FederationError",
    "InStream",
    "IncomingStream",
    "InvalidId",
    "Lagged",
    "Mailbox",
    "MessageTooLarge",
    "NoChannel",
    "NoResponders",
    "NoSuchBroadcast",
    "NoSuchPeer",
    "NonblockingInStream",
    "OutStream",
    "PeerGone",
    "PeerNotListening",
    "PoolFailed",
    "ProtocolError",
    "Reconnected",
    "RemoteError",
    "StreamClosed",
    "StreamId",
    "StreamIdInUse",
    "StreamReset",
    "Terminated",
    "TypedInStream",
    "TypedMailbox",
    "TypedOutStream",
    "Watch",
]
