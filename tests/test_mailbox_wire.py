"""The mailbox wire format (`conec_actors.client.mailbox.wire`): an ask's
deadline is an optional trailing field, so old and new peers understand each
other."""

from __future__ import annotations

import msgspec
import pytest

from conec_actors.client.mailbox.wire import (
    MAILBOX_VERSION,
    Ask,
    AskOut,
    BatchOut,
    Tell,
    decode_batch,
    encode_batch,
    encoder,
)
from conec_actors.errors import ProtocolError


class OldAskOut(msgspec.Struct, tag=1, array_like=True):
    """An ask as senders before the deadline field encoded it."""

    id: int
    timeout: float
    body: object


class OldAsk(msgspec.Struct, tag=1, array_like=True, frozen=True):
    """An ask as receivers before the deadline field decoded it."""

    id: int
    timeout: float
    body: msgspec.Raw


def test_an_ask_carries_its_time_left() -> None:
    item = encoder.encode(AskOut(7, 2.0, "q", 1500))
    (ask,) = decode_batch(encode_batch(1, 0, [item])).items
    assert isinstance(ask, Ask) and ask.id == 7 and ask.ttl_ms == 1500
    assert msgspec.msgpack.decode(ask.body) == "q"


def test_an_ask_without_a_timeout_carries_no_deadline() -> None:
    item = encoder.encode(AskOut(7, 0.0, "q", None))
    (ask,) = decode_batch(encode_batch(1, 0, [item])).items
    assert isinstance(ask, Ask) and ask.ttl_ms is None


def test_an_old_format_ask_decodes_with_no_deadline() -> None:
    old = encoder.encode(OldAskOut(3, 1.0, b"body"))
    frame = encoder.encode(BatchOut(MAILBOX_VERSION, 9, 0, [msgspec.Raw(old)]))
    (ask,) = decode_batch(frame).items
    assert isinstance(ask, Ask) and ask.id == 3 and ask.timeout == 1.0
    assert ask.ttl_ms is None  # no deadline
    assert msgspec.msgpack.decode(ask.body) == b"body"


def test_an_old_receiver_ignores_the_deadline() -> None:
    new = encoder.encode(AskOut(3, 1.0, "x", 250))
    old = msgspec.msgpack.decode(new, type=OldAsk | Tell)
    assert isinstance(old, OldAsk) and old.id == 3
    assert msgspec.msgpack.decode(old.body) == "x"


def test_a_deadline_of_the_wrong_type_is_a_protocol_error() -> None:
    item = encoder.encode([1, 3, 1.0, "x", "soon"])
    with pytest.raises(ProtocolError, match="malformed mailbox frame"):
        decode_batch(encode_batch(1, 0, [item]))
