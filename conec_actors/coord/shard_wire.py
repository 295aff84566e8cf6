"""Messages between the front-end shards of one Coordinator (`mesh`).

A client's stream that meets its peer (the other client of a proxied stream,
a broadcast's home shard) on another shard is *tunnelled*: the shard holding
the client's connection (its "home") carries the stream's bytes both ways,
and the shard where the stream is spliced or fanned out ("far" shard) runs
the stream's logic as if the client were its own (`tunnel.RemoteSession`).
Every message names the client's connection (`conn`, a key unique among the
Coordinator's shards) and the stream (`stream`, the QUIC stream id on that
connection). Order per pair of shards is kept by the mesh.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class Open(msgspec.Struct, tag="open", array_like=True, frozen=True, gc=False):
    """home -> far: carry stream `stream` of client `client_id` (connection
    `conn`) here: a proxied stream to `target` (its connection key and id),
    or a broadcast membership of `broadcast`. `base` is the header's size."""

    conn: int
    stream: int
    client_id: str
    max_message_size: int
    base: int
    kind: str  # "proxied" | "broadcast"
    n: int = 0
    purpose: str = ""
    target_conn: int = 0
    target_id: str = ""
    broadcast: str = ""


class Data(msgspec.Struct, tag="data", array_like=True, frozen=True, gc=False):
    """Bytes of a tunnelled stream: home -> far what the client sent, far ->
    home what is to be written to it."""

    conn: int
    stream: int
    data: bytes
    fin: bool = False


class Consumed(msgspec.Struct, tag="cons", array_like=True, frozen=True, gc=False):
    """far -> home: the client's stream may be credited up to `offset`."""

    conn: int
    stream: int
    offset: int


class Drained(msgspec.Struct, tag="drn", array_like=True, frozen=True, gc=False):
    """home -> far: of what the far shard wrote to the stream, `sent` bytes
    left the client's send buffer."""

    conn: int
    stream: int
    sent: int


class Window(msgspec.Struct, tag="win", array_like=True, frozen=True, gc=False):
    """far -> home: set the stream's receive window."""

    conn: int
    stream: int
    window: int


class Reset(msgspec.Struct, tag="rst", array_like=True, frozen=True, gc=False):
    """home -> far: the client reset its sending side; far -> home: reset
    what the client reads."""

    conn: int
    stream: int
    code: int


class Stop(msgspec.Struct, tag="stop", array_like=True, frozen=True, gc=False):
    """home -> far: the client stopped reading; far -> home: ask the client
    to stop sending."""

    conn: int
    stream: int
    code: int


class Forget(msgspec.Struct, tag="fgt", array_like=True, frozen=True, gc=False):
    """far -> home: the stream is over both ways, with these figures."""

    conn: int
    stream: int
    bytes_in: int = 0
    messages_in: int = 0
    bytes_out: int = 0
    messages_out: int = 0


class Settled(msgspec.Struct, tag="stl", array_like=True, frozen=True, gc=False):
    """far -> home: an open the client waits on was settled (opened or not)."""

    conn: int


class Gone(msgspec.Struct, tag="gone", array_like=True, frozen=True, gc=False):
    """home -> far: the client's connection is gone."""

    conn: int


# -- the control plane between shards (`shard_control`) -------------------------

class Control(msgspec.Struct, tag="ctl", array_like=True, frozen=True, gc=False):
    """Send control message `msg` (`wire.encode`d) to client connection `conn`."""

    conn: int
    msg: bytes


class Offer(msgspec.Struct, tag="offer", array_like=True, frozen=True, gc=False):
    """A channel offer (`msg`, encoded) for client `client_id` on connection
    `conn`; `NoPeer(offer)` comes back if it is not there."""

    conn: int
    client_id: str
    offer: int
    msg: bytes


class NoPeer(msgspec.Struct, tag="nopeer", array_like=True, frozen=True, gc=False):
    offer: int


class Answer(msgspec.Struct, tag="answer", array_like=True, frozen=True, gc=False):
    """Connection `conn` answered channel offer `offer` with `code`."""

    offer: int
    conn: int
    code: int


class WatchAsk(msgspec.Struct, tag="wask", array_like=True, frozen=True, gc=False):
    """Is `peer` connected here? Asked for watch `req` of connection `conn`."""

    conn: int
    req: int
    peer: str


class WatchState(msgspec.Struct, tag="wstate", array_like=True, frozen=True, gc=False):
    conn: int
    req: int
    peer: str
    connected: bool


class GroupOp(msgspec.Struct, tag="gop", array_like=True, frozen=True, gc=False):
    """A group request of client `client_id` (connection `conn`), sent to
    the group's home shard."""

    conn: int
    client_id: str
    op: str
    name: str
    req: int


class Load(msgspec.Struct, tag="load", array_like=True, frozen=True, gc=False):
    """A member's load report, for the groups homed on the receiving shard."""

    client_id: str
    asks: int
    tells: int


class Left(msgspec.Struct, tag="left", array_like=True, frozen=True, gc=False):
    """Client `client_id` (connection `conn`) left, for `reason` (`watches.Reason`)."""

    conn: int
    client_id: str
    reason: str


class Replace(msgspec.Struct, tag="repl", array_like=True, frozen=True, gc=False):
    """Close connection `conn`: its client reconnected with the same certificate."""

    conn: int


class CountAsk(msgspec.Struct, tag="cask", array_like=True, frozen=True, gc=False):
    """How many members broadcast `name` has (asked of its home Coordinator
    in a federation), for request `req` of connection `conn`."""

    conn: int
    req: int
    name: str


class Counted(msgspec.Struct, tag="cnt", array_like=True, frozen=True, gc=False):
    """The answer to a `CountAsk`, as `wire.BroadcastCountReply` has it."""

    conn: int
    req: int
    code: int
    senders: int
    receivers: int


ControlMsg = (Control | Offer | NoPeer | Answer | WatchAsk | WatchState | GroupOp | Load
              | Left | Replace | CountAsk | Counted)

#: A tunnelled stream's messages (`tunnel`).
StreamMsg = Open | Data | Consumed | Drained | Window | Reset | Stop | Forget | Settled | Gone

ShardMsg = (Open | Data | Consumed | Drained | Window | Reset | Stop | Forget | Settled | Gone
            | Control | Offer | NoPeer | Answer | WatchAsk | WatchState | GroupOp | Load
            | Left | Replace | CountAsk | Counted)

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list[ShardMsg])


def encode(msgs: Sequence[ShardMsg]) -> bytes:
    return _enc.encode(msgs)


def decode(data: bytes) -> list[ShardMsg]:
    return _dec.decode(data)
