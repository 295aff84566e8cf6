"""conec-actors: COordinated NEtwork Channels for Python.

Many Clients, one Coordinator: ordered, message-framed QUIC streams between
clients, relayed by a multi-process Coordinator.
"""

from .client import Client
from .config import ClientConfig, CoordConfig
from .coord import Coord
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
    InvalidId,
    Lagged,
    MessageTooLarge,
    NoChannel,
    NoSuchBroadcast,
    NoSuchPeer,
    PeerNotListening,
    ProtocolError,
    RemoteError,
    StreamClosed,
    StreamIdInUse,
    StreamReset,
)
from .streams import IncomingStream, InStream, OutStream, StreamId

__version__ = "0.1.0"

__all__ = [
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
    "DuplicateId",
    "InStream",
    "IncomingStream",
    "InvalidId",
    "Lagged",
    "MessageTooLarge",
    "NoChannel",
    "NoSuchBroadcast",
    "NoSuchPeer",
    "OutStream",
    "PeerNotListening",
    "ProtocolError",
    "RemoteError",
    "StreamClosed",
    "StreamId",
    "StreamIdInUse",
    "StreamReset",
]
