"""The mailbox wire format: what travels on a mailbox stream (see
`conec_actors.client.mailbox`). Every frame is one `Batch` ``["mbox",
version, session, seq, items]``; forward items are `Tell` and `Ask`, backward
items `Reply`, `Fail`, `Ack` and `Drained`. Bodies are raw msgpack
(`msgspec.Raw`), decoded lazily with the type the receiver asks for.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ...errors import ProtocolError
from ...wire import DECODE_ERRORS

#: Version of the mailbox wire format (the second field of every `Batch`).
MAILBOX_VERSION = 1

class Tell(msgspec.Struct, tag=0, array_like=True, frozen=True):
    """A told message."""

    body: msgspec.Raw


class Ask(msgspec.Struct, tag=1, array_like=True, frozen=True):
    """An asked message; the answer carries `id`. `timeout` (0: none) bounds
    how long the receiver keeps the return half open for the answer.
    `ttl_ms` is the time the asker still waited when it sent the ask, in
    milliseconds (None: no deadline); the receiver adds it to its own clock
    on arrival and drops the ask once that passes. A trailing field with a
    default: asks of older senders (without it) have no deadline, and older
    receivers ignore it."""

    id: int
    timeout: float
    body: msgspec.Raw
    ttl_ms: int | None = None


class Reply(msgspec.Struct, tag=2, array_like=True, frozen=True):
    """The answer to ask `id`."""

    id: int
    body: msgspec.Raw


class Fail(msgspec.Struct, tag=3, array_like=True, frozen=True):
    """Ask `id` failed at the receiver (raised as `RemoteError` by the asker)."""

    id: int
    type_name: str
    message: str


class Ack(msgspec.Struct, tag=4, array_like=True, frozen=True):
    """The receiver consumed every message up to `seq`."""

    seq: int


class Drained(msgspec.Struct, tag=5, array_like=True, frozen=True):
    """The receiver consumed the whole (cleanly finished) forward half."""


Item = Tell | Ask | Reply | Fail | Ack | Drained


class Batch(msgspec.Struct, tag="mbox", array_like=True, frozen=True):
    """One frame of a mailbox stream."""

    v: int
    session: int
    seq: int
    items: list[Item]


# Encoding side: the same layouts, with bodies encoded straight from the
# user's value and batches built from pre-encoded items.

class TellOut(msgspec.Struct, tag=0, array_like=True):
    body: Any


class AskOut(msgspec.Struct, tag=1, array_like=True):
    id: int
    timeout: float
    body: Any
    ttl_ms: int | None


class ReplyOut(msgspec.Struct, tag=2, array_like=True):
    id: int
    body: Any


class BatchOut(msgspec.Struct, tag="mbox", array_like=True):
    v: int
    session: int
    seq: int
    items: list[msgspec.Raw]


encoder = msgspec.msgpack.Encoder()
batch_decoder = msgspec.msgpack.Decoder(Batch)
any_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()
DRAINED = encoder.encode(Drained())
#: Bytes a batch adds around its items (largest session and seq, and a list
#: header of up to 5 bytes).
BATCH_OVERHEAD = len(encoder.encode(BatchOut(MAILBOX_VERSION, 2**63 - 1, 2**63 - 1, []))) + 4


def encode_batch(session: int, seq: int, items: list[bytes]) -> bytes:
    return encoder.encode(BatchOut(MAILBOX_VERSION, session, seq,
                                     [msgspec.Raw(i) for i in items]))


def decode_batch(frame: bytes) -> Batch:
    try:
        batch = batch_decoder.decode(frame)
    except DECODE_ERRORS as exc:
        raise ProtocolError(f"malformed mailbox frame: {exc}") from None
    if batch.v != MAILBOX_VERSION:
        raise ProtocolError(f"mailbox format version {batch.v} is not {MAILBOX_VERSION}")
    return batch


_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def decoder_for(typ: Any) -> msgspec.msgpack.Decoder[Any]:
    """The (cached) decoder of bodies of type `typ`; builtins for None or Any."""
    if typ is None or typ is Any:
        return any_decoder
    try:
        return _decoders[typ]
    except (KeyError, TypeError):
        dec: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(typ)
        try:
            _decoders[typ] = dec
        except TypeError:  # an unhashable type expression: not cached
            pass
        return dec
