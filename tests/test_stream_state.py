"""Tests for conec_actors.stream_state: a stream's bookkeeping and broadcast
reassembly, bytes in and connection calls out (no event loop, no sockets)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conec_actors import wire
from conec_actors.errors import MessageTooLarge, StreamClosed, StreamReset
from conec_actors.framing import HEADER_SIZE, frame
from conec_actors.stream_state import (
    HEADER_FRAME_MAX,
    BroadcastAssembler,
    BroadcastMessage,
    StreamId,
    StreamState,
)

QID = 4


class FakeConn:
    """Records what the stream asks of its connection."""

    def __init__(self) -> None:
        self.closed = False
        self.calls: list[tuple[object, ...]] = []
        self.consumed = 0
        self.pending = 0  # what `unsent` reports
        self.window = 0

    def send(self, quic_id: int, data: bytes, end: bool = False) -> None:
        self.calls.append(("send", quic_id, data, end))

    def reset(self, quic_id: int, code: int) -> None:
        self.calls.append(("reset", quic_id, code))

    def stop(self, quic_id: int, code: int) -> None:
        self.calls.append(("stop", quic_id, code))

    def consume_to(self, quic_id: int, offset: int) -> None:
        assert quic_id == QID
        self.consumed = offset

    def unsent(self, quic_id: int) -> int:
        return self.pending

    def set_stream_window(self, quic_id: int, window: int) -> None:
        self.window = window

    def watch_drain(self, quic_id: int, cb: Callable[[], None]) -> None:
        self.calls.append(("watch", quic_id))

    def unwatch_drain(self, quic_id: int) -> None:
        self.calls.append(("unwatch", quic_id))

    def forget_stream(self, quic_id: int) -> None:
        self.calls.append(("forget", quic_id))


class Woken(StreamState):
    """Counts the wake-ups the asyncio half would act on."""

    __slots__ = ("readers_woken", "writers_woken")

    def __init__(self, conn: FakeConn, limit: int = 1000) -> None:
        super().__init__(conn, QID, StreamId("proxied", 7), limit)
        self.readers_woken = 0
        self.writers_woken = 0

    def _wake(self) -> None:
        self.readers_woken += 1
        super()._wake()

    def _wake_writer(self) -> None:
        self.writers_woken += 1


def make(limit: int = 1000) -> tuple[Woken, FakeConn]:
    conn = FakeConn()
    return Woken(conn, limit), conn


# -- receiving -------------------------------------------------------------------------


def test_messages_are_queued_and_credited_as_they_are_taken() -> None:
    st, conn = make()
    data = frame(b"one") + frame(b"two")
    assert st.data_received(data, False) == [b"one", b"two"]
    assert st.readers_woken == 1
    assert conn.consumed == 0  # nothing taken yet: nothing credited
    assert st.recv_nowait() == b"one"
    assert conn.consumed == HEADER_SIZE + 3
    assert st.recv_nowait() == b"two"
    assert conn.consumed == len(data)
    assert st.recv_nowait() is None


def test_a_partial_message_is_credited_only_while_a_reader_waits() -> None:
    st, conn = make()
    part = frame(b"x" * 100)[:50]
    st.data_received(part, False)
    assert conn.consumed == HEADER_SIZE  # the payload so far is held
    st.reader_waits()
    assert conn.consumed == 50  # the reader needs the rest to arrive
    st.reader_done()
    st.data_received(b"", False)
    assert conn.consumed == HEADER_SIZE  # nobody waits: held again


def test_a_partial_message_is_credited_for_an_on_wake_reader() -> None:
    st, conn = make()
    woken: list[int] = []
    st.on_wake = lambda: woken.append(1)
    st.data_received(frame(b"x" * 100)[:50], False)
    assert conn.consumed == 50 and woken == [1]


def test_the_clean_end_comes_after_the_queued_messages() -> None:
    st, _ = make()
    st.data_received(frame(b"last"), True)
    assert st.recv_fin
    assert st.recv_nowait() == b"last"
    with pytest.raises(StreamClosed):
        st.check_recv()


def test_an_end_inside_a_message_fails_the_stream_both_ways() -> None:
    st, conn = make()
    assert st.data_received(frame(b"abc")[:-1], True) is None
    with pytest.raises(StreamReset) as info:
        st.check_recv()
    assert info.value.code == wire.Code.PROTOCOL
    with pytest.raises(StreamReset):
        st.check_send()
    assert ("stop", QID, wire.Code.PROTOCOL) in conn.calls
    assert ("reset", QID, wire.Code.PROTOCOL) in conn.calls
    assert st.writers_woken == 1


def test_a_frame_above_the_limit_fails_the_stream() -> None:
    st, _ = make(limit=HEADER_FRAME_MAX)
    assert st.data_received(frame(b"x" * (HEADER_FRAME_MAX + 1)), False) is None
    with pytest.raises(StreamReset) as info:
        st.check_recv()
    assert info.value.code == wire.Code.MESSAGE_TOO_LARGE


def test_the_first_frame_may_exceed_a_tiny_limit_and_then_the_limit_holds() -> None:
    st, _ = make(limit=10)
    header = b"h" * 200
    assert st.data_received(frame(header), False) == [header]
    assert st.take_first() == header
    assert st.data_received(frame(b"y" * 11), False) is None


def test_data_after_a_failure_is_credited_and_dropped() -> None:
    st, conn = make()
    st.reset_received(9)
    assert st.data_received(frame(b"late"), False) == []
    assert st.recv_nowait() is None
    assert conn.consumed == HEADER_SIZE + 4


def test_a_reset_from_the_writer_is_raised_with_its_code() -> None:
    st, _ = make()
    st.reset_received(42)
    with pytest.raises(StreamReset) as info:
        st.check_recv()
    assert info.value.code == 42
    assert st.readers_woken == 1


def test_a_reset_after_the_clean_end_changes_nothing() -> None:
    st, _ = make()
    st.data_received(b"", True)
    st.reset_received(42)
    with pytest.raises(StreamClosed):
        st.check_recv()


def test_close_recv_drops_the_queue_and_stops_the_writer() -> None:
    st, conn = make()
    st.data_received(frame(b"a"), False)
    st.close_recv()
    assert st.recv_nowait() is None
    assert ("stop", QID, wire.Code.READER_CLOSED) in conn.calls
    with pytest.raises(StreamReset) as info:
        st.check_recv()
    assert info.value.code == wire.Code.READER_CLOSED


def test_close_recv_on_a_closed_connection_sends_nothing() -> None:
    st, conn = make()
    conn.closed = True
    st.close_recv()
    assert conn.calls == []


def test_limit_to_keeps_the_smaller_known_limit() -> None:
    st, _ = make(limit=1000)
    st.limit_to(0)  # unknown
    assert st.max_message_size == 1000
    st.limit_to(5000)
    assert st.max_message_size == 1000
    st.limit_to(100)
    assert st.max_message_size == 100
    with pytest.raises(MessageTooLarge):
        st.check_size(101)
    st.check_size(100)


def test_set_buffers_sets_the_watermarks_and_the_window() -> None:
    st, conn = make()
    st.set_buffers(window=64, high_water=16, low_water=8)
    assert (st.high_water, st.low_water, conn.window) == (16, 8, 64)


# -- sending ---------------------------------------------------------------------------


def test_a_stop_from_the_reader_fails_sending() -> None:
    st, _ = make()
    st.stop_received(7)
    with pytest.raises(StreamReset) as info:
        st.check_send()
    assert info.value.code == 7
    assert st.writers_woken == 1


def test_finish_ends_sending_once() -> None:
    st, conn = make()
    st.finish_now()
    st.finish_now()
    assert conn.calls == [("send", QID, b"", True)]
    with pytest.raises(StreamClosed):
        st.check_send()


def test_reset_aborts_sending_once_and_not_after_finish() -> None:
    st, conn = make()
    st.reset(3)
    st.reset(4)
    assert conn.calls == [("reset", QID, 3)]
    with pytest.raises(StreamReset):
        st.check_send()
    st2, conn2 = make()
    st2.finish_now()
    st2.reset(3)
    assert ("reset", QID, 3) not in conn2.calls


def test_path_failed_fails_what_is_not_over() -> None:
    st, _ = make()
    st.finish_now()
    st.path_failed(wire.Code.PEER_GONE, "gone")
    with pytest.raises(StreamReset):
        st.check_recv()
    assert st.send_error is None  # sending had ended cleanly
    assert st.readers_woken == 1 and st.writers_woken == 1


def test_drained_below_the_low_watermark_or_on_failure() -> None:
    st, conn = make()
    conn.pending = st.low_water + 1
    assert not st.drained()
    conn.pending = st.low_water
    assert st.drained()
    assert ("unwatch", QID) in conn.calls
    conn.pending = st.high_water * 2
    st.stop_received(1)
    assert st.drained()


def test_write_raw_sends_as_is() -> None:
    st, conn = make()
    st.write_raw(b"framed")
    assert conn.calls == [("send", QID, b"framed", False)]


# -- broadcast reassembly ------------------------------------------------------------------


def delivery(sender: str, data: bytes) -> bytes:
    return bytes([len(sender)]) + sender.encode() + data


def test_a_delivery_is_a_message_with_its_sender() -> None:
    asm = BroadcastAssembler(100)
    assert asm.feed(delivery("alice", b"hi")) == BroadcastMessage("alice", b"hi")


def test_pieces_are_joined_with_the_final_delivery() -> None:
    asm = BroadcastAssembler(100)
    assert asm.feed(wire.BROADCAST_PART + b"ab") is None
    assert asm.feed(wire.BROADCAST_PART + b"cd") is None
    assert asm.feed(delivery("bob", b"ef")) == BroadcastMessage("bob", b"abcdef")
    assert asm.feed(delivery("bob", b"g")) == BroadcastMessage("bob", b"g")


def test_pieces_beyond_the_limit_reset_the_stream() -> None:
    asm = BroadcastAssembler(3)
    assert asm.feed(wire.BROADCAST_PART + b"ab") is None
    with pytest.raises(StreamReset) as info:
        asm.feed(wire.BROADCAST_PART + b"cd")
    assert info.value.code == wire.Code.MESSAGE_TOO_LARGE


def test_a_dropped_notice_forgets_the_pieces() -> None:
    asm = BroadcastAssembler(100)
    asm.feed(wire.BROADCAST_PART + b"ab")
    assert asm.feed(wire.BROADCAST_DROPPED) is None
    assert asm.feed(delivery("c", b"x")) == BroadcastMessage("c", b"x")


def test_a_too_large_notice_raises_and_the_stream_goes_on() -> None:
    asm = BroadcastAssembler(100)
    notice = wire.too_large_notice(5000, bytes([5]) + b"alice")
    with pytest.raises(MessageTooLarge, match="5000 bytes from 'alice'"):
        asm.feed(notice)
    assert asm.feed(delivery("a", b"y")) == BroadcastMessage("a", b"y")


@pytest.mark.parametrize("raw", [
    b"\x09abc",  # sender longer than the delivery
    b"\x02\xff\xfe",  # sender not UTF-8
    b"\x00\x07",  # unknown notice
    wire.BROADCAST_TOO_LARGE + b"\x00",  # notice cut short
])
def test_malformed_deliveries_reset_the_stream(raw: bytes) -> None:
    with pytest.raises(StreamReset) as info:
        BroadcastAssembler(100).feed(raw)
    assert info.value.code == wire.Code.PROTOCOL


def test_stream_id_kinds() -> None:
    assert StreamId("proxied", 1).is_proxied and not StreamId("proxied", 1).is_direct
    assert StreamId("direct", 1).is_direct
    assert not StreamId("broadcast", 1).is_proxied
