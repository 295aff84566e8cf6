"""The receiver's bookkeeping (`conec_actors.client.mailbox.inbound`):
sessions and duplicates, when an Ack is due, the Drained answer to a clean
end, and the return half's frames."""

from __future__ import annotations

import msgspec

from conec_actors.client.mailbox.inbound import (
    NO_DEADLINE,
    InboundLog,
    KnownSender,
    ask_deadline,
    expired,
)
from conec_actors.client.mailbox.limits import ACK_EVERY, ASK_HOLD_MAX, BATCH_BYTES
from conec_actors.client.mailbox.state import RecvState
from conec_actors.client.mailbox.wire import (
    BATCH_OVERHEAD,
    DRAINED,
    Ack,
    Drained,
    Reply,
    ReplyOut,
    decode_batch,
    encode_batch,
    encoder,
)


def consume(sender: KnownSender, session: int, seq: int, count: int) -> list[int]:
    """The sequence numbers of a batch that are delivered (not duplicates)."""
    sender.begin_batch(session, seq)
    first = sender.fresh_from(seq)
    sender.consumed(seq + count - 1)
    return [seq + i for i in range(count) if i >= first]


def reply(n: int) -> bytes:
    """An encoded reply of exactly `n` bytes (5 at least)."""
    for size in range(n, -1, -1):
        item = encoder.encode(ReplyOut(1, b"r" * size))
        if len(item) == n:
            return item
    raise AssertionError(f"no reply of {n} bytes")


def test_duplicates_after_a_resend_are_dropped() -> None:
    sender = KnownSender()
    assert consume(sender, 7, 0, 4) == [0, 1, 2, 3]
    # The stream broke after 0..3 arrived; the sender resends from 2.
    assert consume(sender, 7, 2, 4) == [4, 5]
    assert consume(sender, 7, 0, 6) == []


def test_a_new_session_starts_afresh() -> None:
    sender = KnownSender()
    consume(sender, 7, 0, 100)
    # The peer restarted: a new client instance numbers from 0 again.
    assert consume(sender, 8, 0, 2) == [0, 1]
    assert sender.session == 8


def test_a_batch_consumed_in_parts() -> None:
    sender = KnownSender()
    sender.begin_batch(5, 100)
    assert sender.fresh_from(100) == 0
    sender.consumed(109)  # the first 10 items of 20, then the inbox was full
    # Meanwhile the same items arrived again on a new stream, and more:
    assert consume(sender, 5, 105, 10) == list(range(110, 115))
    # The paused batch resumes at its 11th item: all of it is old now.
    assert sender.fresh_from(100) == 15
    sender.consumed(99)  # nothing new: no step back
    assert sender.last == 114


def test_first_batch_of_a_session_need_not_start_at_zero() -> None:
    sender = KnownSender()
    assert consume(sender, 3, 40, 2) == [40, 41]  # seen mid-way (an earlier stream)


def test_ack_due_every_ack_every_messages() -> None:
    sender = KnownSender()
    r = InboundLog()
    due = []
    for seq in range(0, 3 * ACK_EVERY, 64):
        consume(sender, 1, seq, 64)
        due.append(r.batch_done(64, sender))
    per = ACK_EVERY // 64
    assert due == ([False] * (per - 1) + [True]) * 3
    assert r.ack_to == sender.last == 3 * ACK_EVERY - 1
    assert r.batch is None


def test_clean_end_owes_ack_and_drained() -> None:
    sender = KnownSender()
    r = InboundLog()
    consume(sender, 1, 0, 5)
    r.batch_done(5, sender)
    assert r.ack_to is None and not r.has_work()
    r.clean_end(sender)
    assert r.state is RecvState.ENDED and r.ack_to == 4 and r.drained
    items = decode_batch(encode_batch(9, 0, r.cut_back(hard=1 << 16))).items
    assert items == [Ack(4), Drained()]
    assert r.can_finish()


def test_clean_end_of_an_empty_stream_owes_drained_only() -> None:
    r = InboundLog()
    r.clean_end(KnownSender())
    assert r.cut_back(hard=1 << 16) == [DRAINED]


def test_asks_keep_the_return_half_open() -> None:
    sender = KnownSender()
    r = InboundLog()
    r.asked(timeout=2.0, now=100.0)
    r.asked(timeout=0.0, now=101.0)  # no timeout: held up to ASK_HOLD_MAX
    assert r.hold_until == 101.0 + ASK_HOLD_MAX
    r.clean_end(sender)
    r.cut_back(hard=1 << 16)
    assert not r.can_finish()
    assert r.answered() is False  # one ask still waits
    assert r.answered() is True   # the last: the writer may finish
    assert r.can_finish()


def test_answered_while_reading_wakes_nobody() -> None:
    r = InboundLog()
    r.asked(timeout=1.0, now=0.0)
    assert r.answered() is False
    assert not r.can_finish()


def test_give_up_asks() -> None:
    r = InboundLog()
    r.asked(timeout=1.0, now=0.0)
    r.clean_end(KnownSender())
    r.cut_back(hard=1 << 16)
    r.give_up_asks()
    assert r.has_work() and r.can_finish()


def test_cut_back_packs_replies_then_ack() -> None:
    r = InboundLog()
    r.back.extend([reply(10), reply(20)])
    r.ack_to = 41
    assert r.has_work() and not r.nothing_owed()
    items = decode_batch(encode_batch(1, 0, r.cut_back(hard=1 << 16))).items
    assert [type(i) for i in items] == [Reply, Reply, Ack]
    assert items[2] == Ack(41)
    assert r.nothing_owed()


def test_cut_back_within_batch_bytes_and_the_frame_limit() -> None:
    r = InboundLog()
    half = (BATCH_BYTES - BATCH_OVERHEAD) // 2 - 16
    r.back.extend([reply(half), reply(half), reply(half)])
    assert len(r.cut_back(hard=1 << 20)) == 2
    assert len(r.cut_back(hard=1 << 20)) == 1
    # A reply that fills the frame: the Ack and Drained wait for the next one.
    hard = 2000
    big = reply(hard - BATCH_OVERHEAD)
    r.back.append(big)
    r.ack_to = 3
    r.drained = True
    first = r.cut_back(hard)
    assert first == [big] and len(encode_batch(2**63 - 1, 0, first)) <= hard
    assert r.ack_to == 3 and r.drained
    assert [type(i) for i in
            decode_batch(encode_batch(1, 0, r.cut_back(hard))).items] == [Ack, Drained]


def test_bodies_stay_raw() -> None:
    r = InboundLog()
    r.back.append(reply(8))
    item = decode_batch(encode_batch(1, 0, r.cut_back(hard=1 << 16))).items[0]
    assert isinstance(item, Reply) and isinstance(item.body, msgspec.Raw)


# --- deadlines ----------------------------------------------------------------------

def test_an_ask_deadline_is_the_time_left_on_the_receivers_clock() -> None:
    # The asker had 250 ms left; the receiver's clock reads 1000.0 on arrival.
    deadline = ask_deadline(250, now=1000.0)
    assert deadline == 1000.25
    assert not expired(deadline, now=1000.2)
    assert expired(deadline, now=1000.25) and expired(deadline, now=1001.0)


def test_an_ask_without_a_deadline_never_expires() -> None:
    # None: asked with timeout=None, or by a sender older than the field.
    assert ask_deadline(None, now=5.0) is NO_DEADLINE
    assert not expired(NO_DEADLINE, now=1e18)


def test_an_ask_sent_with_no_time_left_is_expired_on_arrival() -> None:
    assert expired(ask_deadline(0, now=7.0), now=7.0)


def test_a_dropped_ask_releases_the_ended_stream() -> None:
    r = InboundLog()
    r.asked(timeout=1.0, now=0.0)
    r.asked(timeout=1.0, now=0.0)
    r.clean_end(KnownSender())
    r.cut_back(hard=1 << 16)
    assert r.dropped() is False  # expired: one ask still waits for its answer
    assert not r.can_finish()
    assert r.answered() is True  # the last one: the return half may finish
    assert r.can_finish()
