"""The broadcast workers' book, sans-I/O: membership, counts, epochs, limits."""

from __future__ import annotations

from conec_actors.coord.broadcasts import MAX_MEMBERS, BroadcastBook
from conec_actors.coord.ipc import (
    BroadcastReply,
    BroadcastState,
    Count,
    Join,
    Leave,
    Member,
    RebuildBroadcasts,
)
from conec_actors.wire import Code


def m(i: int) -> Member:
    return Member(f"c{i}", i, 0)


def reply(book: BroadcastBook, msg: object) -> BroadcastReply:
    r = book.handle(msg)  # type: ignore[arg-type]
    assert isinstance(r, BroadcastReply)
    return r


def test_join_counts_and_idempotent_replay() -> None:
    book = BroadcastBook()
    r1 = reply(book, Join(1, "room", m(1)))
    assert (r1.code, r1.senders, r1.receivers) == (0, 1, 1)
    again = reply(book, Join(1, "room", m(1)))  # a replay after a restart
    assert (again.senders, again.receivers, again.epoch) == (1, 1, r1.epoch)
    r2 = reply(book, Join(2, "room", m(2)))
    assert (r2.senders, r2.receivers) == (2, 2)
    assert reply(book, Count(3, "room")).receivers == 2
    assert reply(book, Count(4, "nothing")).code == Code.NO_SUCH_BROADCAST


def test_end_when_all_finished_or_no_reader_and_fresh_epoch() -> None:
    book = BroadcastBook()
    e = reply(book, Join(1, "a", m(1))).epoch
    reply(book, Join(2, "a", m(2)))
    assert reply(book, Leave(3, "a", e, m(1), True, False)).ended == ""
    assert reply(book, Leave(4, "a", e, m(2), True, False)).ended == "finished"
    assert reply(book, Count(5, "a")).code == Code.NO_SUCH_BROADCAST
    e2 = reply(book, Join(6, "a", m(3))).epoch
    assert e2 != e
    assert reply(book, Leave(7, "a", e2, m(3), False, True)).ended == "no-readers"
    # a replayed leave for an epoch that is over is answered, not applied
    assert reply(book, Leave(8, "a", e, m(1), True, True)).code == Code.NO_SUCH_BROADCAST


def test_member_limit_is_a_named_refusal() -> None:
    book = BroadcastBook()
    for i in range(MAX_MEMBERS):
        assert reply(book, Join(i, "big", m(i))).code == 0
    full = reply(book, Join(MAX_MEMBERS, "big", m(MAX_MEMBERS)))
    assert full.code == Code.BROADCAST_FULL
    assert full.receivers == MAX_MEMBERS


def test_rebuild_keeps_epochs_moving_forward() -> None:
    book = BroadcastBook()
    reply(book, RebuildBroadcasts(1, [BroadcastState("x", 41, [m(1)], [m(1), m(2)])]))
    c = reply(book, Count(2, "x"))
    assert (c.epoch, c.senders, c.receivers) == (41, 1, 2)
    assert reply(book, Join(3, "y", m(3))).epoch > 41
