"""The control stream's reader: bytes in, control messages out, credit accounted."""

from __future__ import annotations

import pytest

from conec_actors import wire
from conec_actors.control import CONTROL_MAX, ControlReader
from conec_actors.errors import ProtocolError
from conec_actors.framing import frame

HELLO = wire.Hello(id="a", version=1, max_message_size=1000, idle_timeout=30.0,
                   max_datagram_size=1200)


def test_a_message_split_across_chunks_is_taken_once_whole() -> None:
    data = frame(wire.encode(HELLO))
    r = ControlReader()
    r.feed(data[:3])
    assert not r and r.acted_on == 0
    r.feed(data[3:])
    assert r and r.acted_on == 0  # whole but not taken yet: no credit
    assert r.next() == HELLO
    assert not r and r.acted_on == len(data)


def test_credit_excludes_parked_messages_and_a_partial_one() -> None:
    one = frame(wire.encode(HELLO))
    r = ControlReader()
    r.feed(one + one + one[:3])
    assert r.next() == HELLO
    assert r.acted_on == len(one)  # the second waits, the third is partial
    assert r.next() == HELLO
    assert r.acted_on == 2 * len(one)
    assert not r


def test_fin_ends_the_stream_only_once_everything_was_taken() -> None:
    r = ControlReader()
    r.feed(frame(wire.encode(HELLO)), fin=True)
    assert r.fin and not r.ended
    r.next()
    assert r.ended


def test_an_oversize_message_is_a_protocol_error() -> None:
    r = ControlReader()
    with pytest.raises(ProtocolError, match="control message too large"):
        r.feed((CONTROL_MAX + 1).to_bytes(4, "big"))


def test_bytes_that_are_not_a_control_message_are_a_protocol_error() -> None:
    r = ControlReader()
    r.feed(frame(b"\xc1"))  # msgpack's never-used byte
    with pytest.raises(ProtocolError, match="malformed control message"):
        r.next()
