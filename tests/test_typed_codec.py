"""Tests for conec_actors.typed_codec: values to msgpack messages and back."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest

from conec_actors.errors import DecodeError
from conec_actors.stream_state import BroadcastMessage
from conec_actors.typed_codec import TypedCodec, type_name


class Point(msgspec.Struct):
    x: int
    y: int


@dataclass
class Note:
    text: str


def test_values_round_trip() -> None:
    codec: TypedCodec[Point] = TypedCodec(Point)
    assert codec.decode(codec.encode(Point(1, 2))) == Point(1, 2)
    notes: TypedCodec[Note] = TypedCodec(Note)
    assert notes.decode_item(notes.encode(Note("hi"))) == Note("hi")
    counts: TypedCodec[dict[str, int]] = TypedCodec(dict[str, int])
    assert counts.decode_item(bytearray(counts.encode({"a": 1}))) == {"a": 1}


def test_a_message_of_another_type_is_a_decode_error() -> None:
    codec: TypedCodec[Point] = TypedCodec(Point)
    with pytest.raises(DecodeError, match="did not decode as Point"):
        codec.decode_item(msgspec.msgpack.encode("text"))
    with pytest.raises(DecodeError):
        codec.decode(b"\xc1")  # not msgpack at all


def test_a_broadcast_item_keeps_its_sender_and_errors_name_it() -> None:
    codec: TypedCodec[Point] = TypedCodec(Point)
    item = BroadcastMessage("alice", codec.encode(Point(3, 4)))
    assert codec.decode_item(item) == BroadcastMessage("alice", Point(3, 4))
    with pytest.raises(DecodeError, match="from 'bob'"):
        codec.decode_item(BroadcastMessage("bob", b"\x01"))


def test_other_items_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot decode a int item"):
        TypedCodec(Point).decode_item(5)


def test_encode_does_not_check_the_type_but_refuses_what_msgpack_cannot_hold() -> None:
    codec: TypedCodec[Point] = TypedCodec(Point)
    assert codec.encode("anything") == msgspec.msgpack.encode("anything")
    with pytest.raises(TypeError):
        codec.encode(object())


def test_type_name() -> None:
    assert type_name(Point) == "Point"
    assert type_name(dict[str, int]) == "dict[str, int]"
