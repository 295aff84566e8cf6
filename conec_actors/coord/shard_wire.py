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


ShardMsg = Open | Data | Consumed | Drained | Window | Reset | Stop | Forget | Settled | Gone

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list[ShardMsg])


def encode(msgs: Sequence[ShardMsg]) -> bytes:
    return _enc.encode(msgs)


def decode(data: bytes) -> list[ShardMsg]:
    return _dec.decode(data)
