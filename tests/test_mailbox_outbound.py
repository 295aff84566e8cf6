"""The outbound log of one (sender, receiver) pair
(`conec_actors.client.mailbox.outbound`): numbering, batches at the size
limits, acks, resends after a path change, the size limit and failure rules."""

from __future__ import annotations

import pytest

from conec_actors.client.mailbox.limits import (
    ASK_TTL_MAX_MS,
    BATCH_BYTES,
    PAIR_QUEUE_BYTES,
    PAIR_QUEUE_ITEMS,
    REOPEN_ATTEMPTS,
    REOPEN_BACKOFF,
    ROUTE_SETTLED,
)
from conec_actors.client.mailbox.outbound import (
    OutboundLog,
    ask_id_of,
    check_size,
    copy_error,
    ttl_ms,
)
from conec_actors.client.mailbox.state import PairEvent, PairState
from conec_actors.client.mailbox.wire import (
    BATCH_OVERHEAD,
    AskOut,
    Tell,
    TellOut,
    decode_batch,
    encode_batch,
    encoder,
)
from conec_actors.errors import (
    ClientClosed,
    MessageTooLarge,
    NoResponders,
    NoSuchPeer,
    PeerGone,
    ProtocolError,
)
from conec_actors.transitions import LocalProtocolError


def tell(n: int) -> bytes:
    """An encoded tell of exactly `n` bytes (4 at least)."""
    for size in range(n, -1, -1):
        item = encoder.encode(TellOut(b"x" * size))
        if len(item) == n:
            return item
    raise AssertionError(f"no tell of {n} bytes")


def filled(*sizes: int) -> OutboundLog:
    log = OutboundLog("bob", 1 << 20)
    for s in sizes:
        log.push(tell(s))
    return log


def test_push_numbers_and_counts_bytes() -> None:
    log = filled(10, 20, 30)
    assert [seq for seq, _ in log.queue] == [0, 1, 2]
    assert log.queued_bytes == 60 and log.next_seq == 3
    log.sent_alone(tell(5))  # the fast path takes the next number too
    assert log.unacked[-1][0] == 3 and log.next_seq == 4
    assert (log.frames, log.messages) == (1, 1)


def test_full_by_items_and_by_bytes() -> None:
    log = filled(*[8] * (PAIR_QUEUE_ITEMS - 1))
    assert not log.full()
    log.push(tell(8))
    assert log.full()
    big = OutboundLog("bob", 1 << 30)
    big.push(tell(PAIR_QUEUE_BYTES - 1))
    assert not big.full()
    big.push(tell(8))
    assert big.full()


def test_cut_batch_fills_up_to_batch_bytes() -> None:
    # Items that fill BATCH_BYTES exactly with the overhead go together.
    n = 8
    each = (BATCH_BYTES - BATCH_OVERHEAD) // n
    rest = BATCH_BYTES - BATCH_OVERHEAD - each * (n - 1)
    log = filled(*[each] * (n - 1), rest, 4)
    seq0, items = log.cut_batch(hard=1 << 20)
    assert seq0 == 0 and len(items) == n
    assert BATCH_OVERHEAD + sum(map(len, items)) == BATCH_BYTES
    # The smallest item did not fit: it starts the next batch.
    assert log.cut_batch(hard=1 << 20) == (n, [log.unacked[-1][1]])
    assert log.queued_bytes == 0 and not log.queue
    assert [seq for seq, _ in log.unacked] == list(range(n + 1))


def test_cut_batch_respects_a_smaller_frame_limit() -> None:
    hard = 1000
    log = filled(400, 400, 400)
    assert len(log.cut_batch(hard)[1]) == 2  # 2*400 + overhead <= 1000
    assert len(log.cut_batch(hard)[1]) == 1


def test_a_large_item_goes_alone_and_the_frame_fits_the_limit() -> None:
    hard = 5000
    log = filled(100, hard - BATCH_OVERHEAD, 100)
    batches = [log.cut_batch(hard) for _ in range(3)]
    assert [len(items) for _, items in batches] == [1, 1, 1]
    for seq0, items in batches:
        # The worst-case session still fits: BATCH_OVERHEAD is an upper bound.
        frame = encode_batch(2**63 - 1, seq0, items)
        assert len(frame) <= hard
        assert decode_batch(frame).seq == seq0
    assert isinstance(decode_batch(encode_batch(1, 0, batches[1][1])).items[0], Tell)


def test_putters_room_after_a_cut() -> None:
    log = filled(*[8] * PAIR_QUEUE_ITEMS)
    assert log.full()
    log.cut_batch(hard=1 << 20)
    assert not log.full()


def test_ack_trims_up_to_and_including_seq() -> None:
    log = filled(10, 10, 10, 10)
    log.cut_batch(hard=1 << 20)
    log.acked(1)
    assert [seq for seq, _ in log.unacked] == [2, 3]
    log.acked(0)  # a stale ack changes nothing
    assert [seq for seq, _ in log.unacked] == [2, 3]
    log.acked(99)
    assert not log.unacked


def test_resend_after_a_path_change() -> None:
    log = filled(300, 300, 300, 300, 100)
    assert len(log.cut_batch(hard=700)[1]) == 2  # 0, 1 sent
    assert len(log.cut_batch(hard=700)[1]) == 2  # 2, 3 sent
    log.acked(0)                                 # the receiver has 0
    resend = log.to_resend()
    assert [seq for seq, _ in resend] == [1, 2, 3]
    frames = []
    while resend:
        frames.append(log.cut_resend(resend, hard=700))
    assert [(seq0, len(items)) for seq0, items in frames] == [(1, 2), (3, 1)]
    # Resending keeps them unacknowledged (and the queue untouched) until acked.
    assert [seq for seq, _ in log.unacked] == [1, 2, 3]
    assert [seq for seq, _ in log.queue] == [4]


def test_drop_forgets_one_item() -> None:
    log = filled(10, 20)
    _, items = log.cut_batch(hard=1 << 20)
    log.drop(1, items[1])
    log.drop(7, b"never sent")  # unknown: ignored
    assert [seq for seq, _ in log.unacked] == [0]


def test_size_limit_is_the_smallest_path_seen() -> None:
    log = OutboundLog("bob", 10_000)
    log.learn_limit(20_000)
    assert log.limit == 10_000
    log.learn_limit(4_000)
    log.learn_limit(8_000)
    assert log.limit == 4_000


def test_check_size_boundary() -> None:
    check_size("bob", b"x" * (1000 - BATCH_OVERHEAD), 1000)
    with pytest.raises(MessageTooLarge, match="'bob'"):
        check_size("bob", b"x" * (1000 - BATCH_OVERHEAD + 1), 1000)


def test_route_breaks_count_unless_it_progressed_or_settled() -> None:
    log = OutboundLog("bob", 1000)
    assert log.route_broke(progress=True, lived=0.0) == 0.0
    assert log.route_broke(progress=False, lived=ROUTE_SETTLED) == 0.0
    assert log.failures == 0
    delays = [log.route_broke(progress=False, lived=0.1) for _ in range(REOPEN_ATTEMPTS - 1)]
    assert delays == [REOPEN_BACKOFF * n for n in range(1, REOPEN_ATTEMPTS)]
    with pytest.raises(NoSuchPeer, match="keeps failing"):
        log.route_broke(progress=False, lived=0.1)


def test_progress_resets_failures() -> None:
    log = OutboundLog("bob", 1000)
    log.route_broke(progress=False, lived=0.0)
    log.progressed()
    for _ in range(REOPEN_ATTEMPTS - 1):
        log.route_broke(progress=False, lived=0.0)  # no raise: counted afresh


def test_open_failures() -> None:
    log = OutboundLog("bob", 1000)
    err = ProtocolError("refused")
    for n in range(1, REOPEN_ATTEMPTS):
        assert log.open_failed(err) == REOPEN_BACKOFF * n
    with pytest.raises(NoSuchPeer, match="cannot open"):
        log.open_failed(err)


def test_kill_forgets_everything_and_names_the_cause() -> None:
    log = filled(10, 10)
    log.cut_batch(hard=1 << 20)
    log.push(tell(10))
    dead, for_asks = log.kill(ProtocolError("boom"))
    assert isinstance(dead, NoResponders) and "boom" in str(dead) and "'bob'" in str(dead)
    assert log.state is PairState.DEAD and log.dead is dead
    assert not log.queue and not log.unacked and log.queued_bytes == 0
    # Never routed: the asks waiting on it found nobody either.
    assert for_asks is dead


def test_kill_before_the_route_opened_means_no_responders() -> None:
    # What the Coordinator answers to opening a stream to an absent peer.
    log = OutboundLog("bob", 1000)
    dead, for_asks = log.kill(NoSuchPeer("no client 'bob' is connected"))
    assert type(dead) is NoResponders and isinstance(dead, NoSuchPeer)
    assert str(dead) == "no client 'bob' is connected"
    assert for_asks is dead


def test_kill_after_the_route_opened_fails_pending_asks_with_peer_gone() -> None:
    log = OutboundLog("bob", 1000)
    log.handle(PairEvent.ROUTED)
    log.push(tell(10))
    dead, for_asks = log.kill(NoSuchPeer("no client 'bob' is connected"))
    # The next tell or ask: nobody is there.
    assert type(dead) is NoResponders and log.dead is dead
    # The asks it carried: the peer was there and went away.
    assert type(for_asks) is PeerGone and not isinstance(for_asks, NoSuchPeer)
    assert "'bob' went away" in str(for_asks)


def test_kill_after_a_drain_that_had_routed_is_peer_gone() -> None:
    log = OutboundLog("bob", 1000)
    log.handle(PairEvent.ROUTED)
    log.handle(PairEvent.DRAIN)
    assert type(log.kill(ProtocolError("reset"))[1]) is PeerGone


def test_kill_by_closing_is_client_closed_for_everyone() -> None:
    log = OutboundLog("bob", 1000)
    log.handle(PairEvent.ROUTED)
    closed = ClientClosed("closed")
    assert log.kill(closed) == (closed, closed)


def test_kill_twice_is_illegal() -> None:
    log = OutboundLog("bob", 1000)
    log.kill(ProtocolError("x"))
    with pytest.raises(LocalProtocolError):
        log.kill(ProtocolError("again"))


def test_ttl_is_the_timeout_in_milliseconds_rounded_up() -> None:
    assert ttl_ms(None) is None
    assert ttl_ms(5.0) == 5000
    assert ttl_ms(0.0001) == 1   # never 0 for a timeout still running
    assert ttl_ms(0.0) == 0 and ttl_ms(-1.0) == 0  # expired already
    assert ttl_ms(ASK_TTL_MAX_MS / 1000) == ASK_TTL_MAX_MS
    assert ttl_ms(1e12) is None  # longer than the wire carries: none


def test_copy_error_is_fresh_of_the_same_kind() -> None:
    cause = RuntimeError("x")
    closed = ClientClosed("closed")
    closed.__cause__ = cause
    fresh = copy_error(closed)
    assert isinstance(fresh, ClientClosed) and fresh is not closed
    assert fresh.__cause__ is cause and str(fresh) == "closed"
    assert type(copy_error(NoSuchPeer("gone"))) is NoResponders
    gone = copy_error(PeerGone("left"))
    assert type(gone) is PeerGone and str(gone) == "left"
    assert type(copy_error(NoResponders("nobody"))) is NoResponders


def test_ask_id_of_finds_asks_only() -> None:
    assert ask_id_of(encoder.encode(AskOut(42, 1.5, {"q": 1}, 1500))) == 42
    assert ask_id_of(tell(20)) is None
    assert ask_id_of(b"\xc1") is None  # not msgpack


def ask(ask_id: int) -> bytes:
    return encoder.encode(AskOut(ask_id, 5.0, b"q", 5000))


def test_an_acknowledged_ask_not_answered_is_sent_again_after_a_break() -> None:
    """Its answer may have been lost with the broken stream: the receiver,
    which has the ask already, answers it again from what it kept."""
    log = OutboundLog("bob", 1 << 20)
    log.push(tell(10))  # seq 0
    log.ask_waiting(7)
    log.push(ask(7))  # seq 1
    log.push(tell(10))  # seq 2
    log.push(tell(10))  # seq 3
    log.cut_batch(1 << 20)
    log.acked(2)  # the ask is acknowledged, its answer has not come
    assert [s for s, _ in log.unacked] == [3]
    resend = log.to_resend()
    assert [s for s, _ in resend] == [1, 3]
    # Not consecutive: two batches, each numbered from its first item.
    assert log.cut_resend(resend, 1 << 20) == (1, [ask(7)])
    assert log.cut_resend(resend, 1 << 20) == (3, [tell(10)])
    # Answered: never again.
    log.ask_done(7)
    assert [s for s, _ in log.to_resend()] == [3]


def test_a_tell_only_pair_keeps_nothing_acknowledged() -> None:
    log = filled(10, 10)
    log.cut_batch(1 << 20)
    log.acked(1)
    assert not log.unacked and not log.asks_kept and not log.to_resend()


def test_an_ask_given_up_before_its_ack_is_not_kept() -> None:
    log = OutboundLog("bob", 1 << 20)
    log.ask_waiting(3)
    log.push(ask(3))
    log.cut_batch(1 << 20)
    log.ask_done(3)  # timed out
    log.acked(0)
    assert not log.asks_kept and not log.to_resend()


def test_a_killed_pair_forgets_its_asks() -> None:
    log = OutboundLog("bob", 1 << 20)
    log.ask_waiting(3)
    log.push(ask(3))
    log.cut_batch(1 << 20)
    log.acked(0)
    assert 3 in log.asks_kept
    log.kill(NoResponders("gone"))
    assert not log.asks_kept and not log.awaiting


def test_a_receiver_keeps_its_latest_answers_within_bounds() -> None:
    from conec_actors.client.mailbox.limits import ANSWERS_KEPT, ANSWERS_KEPT_BYTES
    from conec_actors.client.mailbox.receiver import _SenderRecord

    sender = _SenderRecord()
    for i in range(ANSWERS_KEPT + 10):
        sender.keep_answer(i, b"a" * 10)
    assert list(sender.answers) == list(range(10, ANSWERS_KEPT + 10))
    big = b"b" * (ANSWERS_KEPT_BYTES // 2 + 1)
    sender.keep_answer(1000, big)
    sender.keep_answer(1001, big)  # the two do not fit together
    assert list(sender.answers) == [1001]
    assert sender.answers_bytes == len(big)
