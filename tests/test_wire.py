"""Tests for conec_actors.wire: control message codec and the error code table."""

from __future__ import annotations

import msgspec
import pytest

from conec_actors import errors, wire
from conec_actors.errors import ConecError, ProtocolError
from conec_actors.wire import (
    CODES,
    USER_CODE_LIMIT,
    Code,
    Hello,
    StreamAccepted,
    StreamHeader,
    Welcome,
    decode,
    describe,
    encode,
    error_for,
    stream_reset,
)

# --- control messages --------------------------------------------------------

CONTROL_MESSAGES: list[wire.Control] = [
    Hello(id="alice", version=wire.PROTOCOL_VERSION, max_message_size=1 << 20,
          idle_timeout=30.0, max_datagram_size=1200),
    Hello(id="a-b.c-d", version=7, max_message_size=0, idle_timeout=0.5,
          max_datagram_size=0),
    Welcome(version=wire.PROTOCOL_VERSION, max_message_size=65536, idle_timeout=12.25,
            max_datagram_size=1350, observed_addr=("192.0.2.1", 4433)),
    Welcome(version=1, max_message_size=1, idle_timeout=1.0, max_datagram_size=1,
            observed_addr=("::1", 0)),
    StreamHeader(kind="proxied", name="bob", n=0),
    StreamHeader(kind="direct", name="carol.example.com", n=2**40, purpose="chat"),
    StreamHeader(kind="broadcast", name="ünïcode ✓", n=5, max_message_size=9),
    StreamAccepted(),
]


@pytest.mark.parametrize("msg", CONTROL_MESSAGES, ids=lambda m: type(m).__name__)
def test_control_round_trip(msg: wire.Control) -> None:
    data = encode(msg)
    assert isinstance(data, bytes)
    back = decode(data)
    assert type(back) is type(msg)
    assert back == msg


def test_round_trip_keeps_field_types() -> None:
    w = decode(encode(CONTROL_MESSAGES[2]))
    assert isinstance(w, Welcome)
    assert w.observed_addr == ("192.0.2.1", 4433)
    assert isinstance(w.observed_addr, tuple)
    assert isinstance(w.idle_timeout, float)


class _OldStreamHeader(msgspec.Struct, tag="stream", frozen=True):
    """StreamHeader as earlier versions define it (with the unused `channel`)."""

    kind: str
    peer: str
    n: int
    channel: str = ""
    purpose: str = ""
    max_message_size: int = 0


def test_stream_header_name_is_encoded_as_peer() -> None:
    raw = msgspec.msgpack.decode(encode(StreamHeader("broadcast", "room", 3)))
    assert raw["peer"] == "room" and "name" not in raw


def test_stream_header_decodes_an_old_frame_with_a_channel() -> None:
    old = msgspec.msgpack.encode(_OldStreamHeader("direct", "bob", 1, channel="chat",
                                                  purpose="mailbox"))
    h = decode(old)
    assert h == StreamHeader("direct", "bob", 1, purpose="mailbox")


def test_an_old_peer_decodes_a_new_stream_header() -> None:
    new = encode(StreamHeader("proxied", "bob", 7, max_message_size=100))
    old = msgspec.msgpack.decode(new, type=_OldStreamHeader)
    assert (old.kind, old.peer, old.n, old.channel, old.max_message_size) == (
        "proxied", "bob", 7, "", 100)


def test_stream_header_reads_its_name_as_peer_or_broadcast() -> None:
    assert StreamHeader("proxied", "bob", 1).peer == "bob"
    assert StreamHeader("broadcast", "room", 1).broadcast == "room"


def test_control_messages_are_distinguished_by_tag() -> None:
    encodings = {encode(m) for m in CONTROL_MESSAGES}
    assert len(encodings) == len(CONTROL_MESSAGES)
    kinds = {type(decode(encode(m))) for m in CONTROL_MESSAGES}
    assert kinds == {Hello, Welcome, StreamHeader, StreamAccepted}


def test_alpn_and_version() -> None:
    assert wire.ALPN == "conec-actors/1"
    assert isinstance(wire.PROTOCOL_VERSION, int)


_enc = msgspec.msgpack.Encoder()

#: A msgpack value nested far deeper than the recursion limit (one-element
#: arrays around a nil), small enough for any message size limit.
DEEP = b"\x91" * 10_000 + b"\xc0"
#: A hello whose extra field (skipped, but skipping recurses) is `DEEP`.
DEEP_HELLO = b"\x82\xa4type\xa5hello\xa3zzz" + DEEP

MALFORMED: list[bytes] = [
    DEEP,
    DEEP_HELLO,
    b"",  # nothing
    b"\xc1",  # a byte msgpack never uses
    b"\x93\x01",  # truncated array
    b"\xff" * 16,
    b"not msgpack at all, just text",
    encode(StreamAccepted()) + b"\x00",  # trailing bytes
    _enc.encode(5),  # valid msgpack, not tagged
    _enc.encode("hello"),
    _enc.encode(None),
    _enc.encode([1, 2, 3]),
    _enc.encode({"id": "alice"}),  # an object without a tag
    _enc.encode({"type": "nope"}),  # an unknown tag
    _enc.encode({"type": "hello"}),  # a known tag, fields missing
    _enc.encode({"type": "stream", "kind": "sideways", "peer": "bob", "n": 1}),  # bad literal
    _enc.encode({"type": "stream", "kind": "direct", "peer": "bob", "n": "one"}),  # bad type
    _enc.encode({"type": "welcome", "version": 1, "max_message_size": 1,
                 "idle_timeout": 1.0, "max_datagram_size": 1,
                 "observed_addr": ["h"]}),  # tuple of the wrong length
]


@pytest.mark.parametrize("data", MALFORMED)
def test_decode_malformed_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert isinstance(info.value, ConecError)
    assert "malformed control message" in str(info.value)


# --- the code table ----------------------------------------------------------


def test_every_code_has_an_entry() -> None:
    for code in Code:
        assert code in CODES, code
        assert CODES[code].code is code


def test_every_entry_is_a_code() -> None:
    assert set(CODES) == set(Code)
    for key, info in CODES.items():
        assert key == info.code
        assert isinstance(info.code, Code)


def test_every_entry_maps_to_a_conec_error() -> None:
    for info in CODES.values():
        assert isinstance(info.error, type)
        assert issubclass(info.error, ConecError), info
        assert info.message


def test_codes_are_unique() -> None:
    values = [int(c) for c in Code]
    assert len(values) == len(set(values))
    assert len(CODES) == len(Code)


def test_library_codes_above_user_limit() -> None:
    for code in Code:
        if code is Code.NO_ERROR:
            assert int(code) == 0
        else:
            assert code >= USER_CODE_LIMIT, code
    assert USER_CODE_LIMIT == 0x10000


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (Code.DUPLICATE_ID, errors.DuplicateId),
        (Code.CERTIFICATE, errors.CertificateError),
        (Code.INVALID_ID, errors.InvalidId),
        (Code.MESSAGE_TOO_LARGE, errors.MessageTooLarge),
        (Code.PROTOCOL, errors.ProtocolError),
        (Code.NO_SUCH_PEER, errors.NoSuchPeer),
        (Code.STREAM_ID_IN_USE, errors.StreamIdInUse),
        (Code.CLIENT_CLOSED, errors.ClientClosed),
    ],
)
def test_error_for_maps_to_class(code: Code, cls: type[ConecError]) -> None:
    exc = error_for(code)
    assert type(exc) is cls
    assert str(exc) == describe(code)
    assert str(exc) == CODES[code].message


def test_error_for_carries_reason() -> None:
    exc = error_for(Code.DUPLICATE_ID, "a client with id 'alice' is already connected")
    assert type(exc) is errors.DuplicateId
    assert str(exc) == "a client with id 'alice' is already connected"
    exc2 = error_for(int(Code.CERTIFICATE), "expired")
    assert type(exc2) is errors.CertificateError
    assert "expired" in str(exc2)


def test_error_for_accepts_plain_ints() -> None:
    assert type(error_for(0x10002)) is errors.DuplicateId


def test_error_for_every_code() -> None:
    for code, info in CODES.items():
        exc = error_for(code, "why")
        assert isinstance(exc, info.error)
        assert isinstance(exc, ConecError)
        if isinstance(exc, errors.StreamReset):
            assert exc.code == code
            assert exc.reason == "why"
        else:
            assert str(exc) == "why"


@pytest.mark.parametrize("code", [Code.NO_ERROR, Code.PEER_GONE, Code.READER_CLOSED,
                                  Code.PATH_FAILED])
def test_error_for_stream_reset_codes(code: Code) -> None:
    exc = error_for(code)
    assert type(exc) is errors.StreamReset
    assert exc.code == code
    assert exc.reason == CODES[code].message


def test_error_for_user_code() -> None:
    exc = error_for(7)
    assert type(exc) is errors.StreamReset
    assert exc.code == 7
    assert exc.reason == describe(7)
    assert "7" in exc.reason

    exc = error_for(7, "the user gave up")
    assert type(exc) is errors.StreamReset
    assert exc.code == 7
    assert exc.reason == "the user gave up"
    assert "the user gave up" in str(exc)


def test_error_for_largest_user_code() -> None:
    exc = error_for(USER_CODE_LIMIT - 1)
    assert type(exc) is errors.StreamReset
    assert exc.code == USER_CODE_LIMIT - 1


def test_error_for_unknown_library_code() -> None:
    exc = error_for(0x1FFFF)
    assert type(exc) is errors.StreamReset
    assert exc.code == 0x1FFFF
    assert exc.reason == describe(0x1FFFF)


def test_describe_library_codes() -> None:
    for code, info in CODES.items():
        assert describe(code) == info.message
    assert describe(Code.DUPLICATE_ID) == "a client with this id is already connected"


@pytest.mark.parametrize("code", [1, 7, 42, USER_CODE_LIMIT - 1])
def test_describe_user_codes(code: int) -> None:
    text = describe(code)
    assert text == f"reset by the application with code {code}"


@pytest.mark.parametrize("code", [USER_CODE_LIMIT, 0x10100, 0x1FFFF, 2**62 - 1])
def test_describe_unknown_codes(code: int) -> None:
    assert code not in CODES
    assert describe(code) == f"unknown error code {code:#x}"


def test_stream_reset_helper() -> None:
    r = stream_reset(Code.PEER_GONE)
    assert type(r) is errors.StreamReset
    assert r.code == Code.PEER_GONE
    assert r.reason == "the other end went away"
    r = stream_reset(9, "custom")
    assert (r.code, r.reason) == (9, "custom")
    # A user code without a reason gets some description naming the code.
    r = stream_reset(9)
    assert r.code == 9
    assert "9" in r.reason
