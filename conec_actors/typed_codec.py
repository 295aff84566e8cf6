"""Values of one type as msgpack messages and back, for the typed stream
adapters (`adapters.TypedOutStream`, `adapters.TypedInStream`): no stream,
no waiting, just the encoding and the errors a reader sees."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from . import wire
from .errors import DecodeError
from .stream_state import BroadcastMessage

T = TypeVar("T")


def type_name(tp: Any) -> str:
    """How messages name a value type: a class by its qualified name."""
    return tp.__qualname__ if isinstance(tp, type) else repr(tp)


class TypedCodec(Generic[T]):
    """Encodes values (a `msgspec.Struct`, a dataclass or a builtin type such
    as `dict[str, int]`) and decodes messages as `type`.

    Values are encoded as they are, not checked against `type`; one msgspec
    cannot encode raises `TypeError`. A message that does not decode as
    `type` raises `DecodeError`.
    """

    __slots__ = ("_decoder", "encode", "type")

    def __init__(self, type: Any) -> None:
        self.type = type
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(type)
        #: `encode(value) -> bytes` (msgspec's own, not wrapped: it runs per message).
        self.encode = msgspec.msgpack.Encoder().encode

    def decode(self, data: Any, sender: str | None = None) -> T:
        """`data` decoded; `DecodeError` names `sender` (a broadcast member)
        when given."""
        try:
            value: T = self._decoder.decode(data)
        except wire.DECODE_ERRORS as exc:
            raise self._error(exc, sender) from exc
        return value

    def decode_item(self, item: object) -> T | BroadcastMessage[T]:
        """An item of a reader decoded: bytes as a value, a
        `BroadcastMessage` as one with its `data` decoded. `TypeError` for
        anything else."""
        if isinstance(item, (bytes, bytearray, memoryview)):
            try:  # `decode`, inline: this runs per message
                value: T = self._decoder.decode(item)
            except wire.DECODE_ERRORS as exc:
                raise self._error(exc, None) from exc
            return value
        if isinstance(item, BroadcastMessage):
            return BroadcastMessage(item.sender, self.decode(item.data, item.sender))
        raise TypeError(f"TypedInStream cannot decode a {type(item).__name__} item; "
                        "expected bytes or BroadcastMessage")

    def _error(self, exc: Exception, sender: str | None) -> DecodeError:
        origin = f" from {sender!r}" if sender is not None else ""
        return DecodeError(f"message{origin} did not decode as {type_name(self.type)}: {exc}")
