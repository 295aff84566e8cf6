"""Messages between the Coordinator's front-end and its worker processes.

Everything that crosses ZeroMQ is one of these `msgspec.Struct`s, sent in
batches (one ZeroMQ message holds a list). Versioned with the wire protocol.
Payload never travels here: only the control plane.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from ..ids import stable_hash

IPC_VERSION = 1


def shard_of(key: str, workers: int) -> int:
    """Which of `workers` workers of a kind holds `key` (a client id or a
    broadcast name): the one sharding rule, used by the front-end to route a
    request and to rebuild a restarted worker's shard."""
    return stable_hash(key) % workers


class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A directory entry: which front-end and connection (`conn_key`, the
    front-end's handle of it) hold a client id, the certificate (DER) it
    authenticated with and the address it is seen from (what a channel
    introduction tells the other side)."""

    client_id: str
    frontend: str
    conn_key: int
    addr: tuple[str, int]
    cert: bytes


# front-end -> worker ----------------------------------------------------------

class Register(msgspec.Struct, tag="reg", array_like=True, frozen=True, gc=False):
    req: int
    entry: Entry


class Unregister(msgspec.Struct, tag="unreg", array_like=True, frozen=True, gc=False):
    req: int
    client_id: str
    frontend: str
    conn_key: int


class Lookup(msgspec.Struct, tag="look", array_like=True, frozen=True, gc=False):
    """Stream introduction: where is `dst`, for a stream from `src`?"""

    req: int
    src: str
    dst: str


class Rebuild(msgspec.Struct, tag="rebuild", array_like=True, frozen=True, gc=False):
    """Sent to a (re)started worker before anything else: its whole shard."""

    req: int
    entries: list[Entry]


class StatsRequest(msgspec.Struct, tag="stats", array_like=True, frozen=True, gc=False):
    req: int


class Shutdown(msgspec.Struct, tag="bye", array_like=True, frozen=True, gc=False):
    req: int


class Member(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One member of a broadcast: a client and the stream it joined with."""

    client_id: str
    conn_key: int
    stream: int


class BroadcastState(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What a restarted broadcast worker rebuilds one broadcast from."""

    name: str
    epoch: int
    senders: list[Member]
    receivers: list[Member]


class Join(msgspec.Struct, tag="join", array_like=True, frozen=True, gc=False):
    """A member joins broadcast `name` (as sender and receiver)."""

    req: int
    name: str
    member: Member


class Leave(msgspec.Struct, tag="leave", array_like=True, frozen=True, gc=False):
    """A member stops sending, stops receiving, or both."""

    req: int
    name: str
    epoch: int
    member: Member
    sending: bool
    receiving: bool


class Count(msgspec.Struct, tag="count", array_like=True, frozen=True, gc=False):
    req: int
    name: str


class RebuildBroadcasts(msgspec.Struct, tag="rebuildb", array_like=True, frozen=True,
                        gc=False):
    req: int
    broadcasts: list[BroadcastState]


# Coordinator -> front-end shard (frontends > 1) -------------------------------

class ShardPeer(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Where shard `index` takes the other shards' batches (`mesh`), and
    the CURVE public key (Z85) it speaks to them with."""

    index: int
    endpoint: str
    public: bytes
    #: its number in a federation (`peers`), 0 outside one
    cnum: int = 0


class ShardPeers(msgspec.Struct, tag="peers", array_like=True, frozen=True, gc=False):
    """Sent to a (re)started shard before anything else: the other shards up."""

    req: int
    peers: list[ShardPeer]


class PeerUp(msgspec.Struct, tag="peerup", array_like=True, frozen=True, gc=False):
    """A shard (re)started: link to it."""

    req: int
    peer: ShardPeer


class PeerDown(msgspec.Struct, tag="peerdown", array_like=True, frozen=True, gc=False):
    """Shard `index` died: its clients (`entries`) are gone."""

    req: int
    index: int
    entries: list[Entry] = []


class ClientsRequest(msgspec.Struct, tag="clients", array_like=True, frozen=True, gc=False):
    """Coordinator -> shard: every admitted client's figures (/clients)."""

    req: int


ToWorker = (Register | Unregister | Lookup | Rebuild | StatsRequest | Shutdown | Join
            | Leave | Count | RebuildBroadcasts)


# worker -> front-end ----------------------------------------------------------

class Ready(msgspec.Struct, tag="ready", array_like=True, frozen=True, gc=False):
    """A worker (or front-end shard) started; a shard says where its mesh is."""

    kind: str
    slot: int
    pid: int
    version: int = IPC_VERSION
    endpoint: str = ""
    public: bytes = b""
    #: a shard in a federation: the member number it claimed
    cnum: int = 0


class Reply(msgspec.Struct, tag="reply", array_like=True, frozen=True, gc=False):
    """Answer to a request: `code` is 0 or a `wire.Code`; `entry` for lookups."""

    req: int
    code: int = 0
    entry: Entry | None = None


class StatsReply(msgspec.Struct, tag="statsr", array_like=True, frozen=True, gc=False):
    req: int
    figures: dict[str, int]
    #: seconds: the worker's loop lag (`lag.LagMeter`), set by its process
    loop_lag: float = 0.0


class BroadcastReply(msgspec.Struct, tag="breply", array_like=True, frozen=True, gc=False):
    """The broadcast worker's decision: `code` 0 or a `wire.Code`, the
    broadcast's epoch (a new one each time a name starts afresh), counts after
    the change, and `ended` when the broadcast is removed ("finished": every
    member finished sending; "no-readers": nobody reads any more)."""

    req: int
    code: int = 0
    epoch: int = 0
    senders: int = 0
    receivers: int = 0
    ended: str = ""


class Forward(msgspec.Struct, tag="fwd", array_like=True, frozen=True, gc=False):
    """shard -> Coordinator: pass `request` to the worker of `kind` that holds
    `key`; its reply comes back as `Forwarded(req, ...)`."""

    req: int
    kind: str
    key: str
    request: ToWorker


class ClientsReply(msgspec.Struct, tag="clientsr", array_like=True, frozen=True, gc=False):
    """shard -> Coordinator: its clients (`clients`), and what the streams
    of other shards' clients carried here moved so far (`carried`: id and
    home shard, bytes and messages; added to the home shard's figures).
    Each a msgpack list of `metrics.ClientFigures` left encoded (decoded
    where it is read, so that this module and the workers need not import
    `metrics`)."""

    req: int
    clients: msgspec.Raw = msgspec.Raw(b"\x90")  # an empty list
    carried: msgspec.Raw = msgspec.Raw(b"\x90")


FromWorker = Ready | Reply | StatsReply | BroadcastReply | Forward | ClientsReply

#: What the front-end gets back for a request, and who gets it.
WorkerReply = Reply | StatsReply | BroadcastReply | ClientsReply
ReplyCallback = Callable[[WorkerReply], None]
#: Builds a request once its id is known.
MakeRequest = Callable[[int], ToWorker]

class Forwarded(msgspec.Struct, tag="fwdr", array_like=True, frozen=True, gc=False):
    """Coordinator -> shard: a worker's reply to the shard's `Forward` `req`."""

    req: int
    reply: WorkerReply


#: What a front-end shard reads from the Coordinator.
ToShard = (ShardPeers | PeerUp | PeerDown | Forwarded | StatsRequest | Shutdown
           | ClientsRequest)

_enc = msgspec.msgpack.Encoder()
_to_shard = msgspec.msgpack.Decoder(list[ToShard])
_to_worker = msgspec.msgpack.Decoder(list[ToWorker])
_from_worker = msgspec.msgpack.Decoder(list[FromWorker])


def encode_batch(msgs: Sequence[ToWorker | ToShard] | Sequence[FromWorker]) -> bytes:
    return _enc.encode(msgs)


def decode_to_worker(data: bytes) -> list[ToWorker]:
    return _to_worker.decode(data)


def decode_from_worker(data: bytes) -> list[FromWorker]:
    return _from_worker.decode(data)


def decode_to_shard(data: bytes) -> list[ToShard]:
    return _to_shard.decode(data)
