"""The federation's decisions (coord/federation_core.py), without NATS: heartbeats,
bucket records and batch headers in, `Joined` / `Died` / `Cut` out."""

from __future__ import annotations

import base64
import re

import msgspec
import pytest

from conec_actors.coord import ipc
from conec_actors.coord.federation_core import (
    DEAD_AFTER,
    HEAD_SIZE,
    HEARTBEAT,
    BadBatch,
    CoordRecord,
    Cut,
    Died,
    Event,
    Heartbeat,
    HomeRecord,
    IdRecord,
    Joined,
    Members,
    coord_key,
    id_key,
    pack_head,
    unpack_head,
)
from conec_actors.coord.peers import MAX_COORDINATORS, MAX_SHARDS

ME, INC = 1, 1000
Y, Y_INC = 2, 2000
Z, Z_INC = 3, 3000
#: NATS KV keys (nats-py's `VALID_KEY_RE`; no leading or trailing dot).
KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


def hb(cnum: int = Y, inc: int = Y_INC, *, epoch: int = 0, count: int = 1,
       name: str = "y", leaving: bool = False) -> Heartbeat:
    return Heartbeat(cnum, inc, name, count, epoch, leaving)


def members() -> Members:
    return Members(ME, INC)


def joined(m: Members, cnum: int = Y, inc: int = Y_INC, *, count: int = 1,
           epoch: int = 0, now: float = 0.0) -> Members:
    assert m.heard(hb(cnum, inc, epoch=epoch, count=count), now) == [Joined(cnum, count)]
    return m


def deliver(m: Members, seq: int, *, cnum: int = Y, shard: int = 0, count: int = 1,
            inc: int = Y_INC, epoch: int = 0, now: float = 0.0) -> tuple[bool, list[Event]]:
    return m.batch(cnum, shard, count, inc, epoch, seq, now)


# -- constants and records ----------------------------------------------------------------


def test_a_coordinator_is_dead_after_several_missed_heartbeats() -> None:
    assert DEAD_AFTER >= 2 * HEARTBEAT
    assert DEAD_AFTER <= 5.0  # DESIGN 9: a Coordinator that dies is noticed within 5 s


def test_records_round_trip_through_msgpack() -> None:
    entry = ipc.Entry("alice", "fe0", 7 << 48 | 12, ("10.0.0.1", 4433), b"\x30\x82")
    for value in (hb(leaving=True), CoordRecord("y", Y_INC, 3), IdRecord(Y, Y_INC, entry),
                  HomeRecord(Y, Y_INC)):
        data = msgspec.msgpack.encode(value)
        assert msgspec.msgpack.decode(data, type=type(value)) == value


def test_a_heartbeat_without_leaving_decodes_as_staying() -> None:
    # An older Coordinator's heartbeat has no trailing `leaving`.
    data = msgspec.msgpack.encode([Y, Y_INC, "y", 1, 0])
    assert msgspec.msgpack.decode(data, type=Heartbeat) == hb()


def test_coord_keys_are_distinct_kv_keys() -> None:
    keys = {coord_key(c) for c in range(1, 2000)}
    assert len(keys) == 1999
    assert all(KV_KEY.match(k) for k in keys)


# -- id_key -------------------------------------------------------------------------------


IDS = ["a", "b", "alice", "bob-2", "x.y", "a" * 63, "é", "a/b", "a b", "a.", ".a",
       "\x00", "日本", "ab", "aa", "a-", "a_"]


def test_id_keys_use_only_kv_key_characters() -> None:
    for cid in IDS:
        key = id_key(cid)
        assert KV_KEY.match(key), key
        assert not key.startswith(".") and not key.endswith("."), key


def test_distinct_ids_give_distinct_keys() -> None:
    many = IDS + [f"client-{i}" for i in range(2000)] + [chr(c) for c in range(1, 3000)]
    assert len({id_key(cid) for cid in many}) == len(set(many))


def test_id_keys_round_trip_through_base64url() -> None:
    for cid in IDS + [f"c{i}" * (i % 5 + 1) for i in range(100)]:
        key = id_key(cid)
        assert key.startswith("i.")
        body = key.removeprefix("i.")
        assert "=" not in body  # unpadded
        assert base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode() == cid


# -- batch headers ------------------------------------------------------------------------


def test_head_round_trip() -> None:
    top = MAX_COORDINATORS
    for fields in [(1, 0, 1, 0, 0, 0), (top, MAX_SHARDS - 1, MAX_SHARDS, 2**62, 2**40, 2**64 - 1),
                   (top, 3, 4, 123456789, 7, 99)]:
        data = pack_head(*fields)
        assert len(data) == HEAD_SIZE
        assert unpack_head(data) == fields
        assert unpack_head(data + b"payload") == fields  # the batch follows the head


@pytest.mark.parametrize("size", [0, 1, HEAD_SIZE - 1])
def test_a_message_shorter_than_a_head_is_a_bad_batch(size: int) -> None:
    with pytest.raises(BadBatch, match=f"{size} bytes"):
        unpack_head(bytes(size))


def test_bad_batch_is_a_value_error() -> None:
    assert issubclass(BadBatch, ValueError)


# -- heartbeats ---------------------------------------------------------------------------


def test_first_heartbeat_makes_a_member() -> None:
    m = members()
    assert m.heard(hb(count=3, name="y-host"), 5.0) == [Joined(Y, 3)]
    assert m.alive(Y) and m.alive(Y, Y_INC) and not m.alive(Y, Y_INC + 1)
    assert m.count_of(Y) == 3 and m.names() == {Y: "y-host"}
    assert m.verdict(Y, Y_INC) is True


def test_own_heartbeat_is_ignored() -> None:
    m = members()
    assert m.heard(hb(ME, INC), 0.0) == []
    assert m.heard(hb(ME, INC, leaving=True), 0.0) == []
    assert not m.alive(ME) and m.names() == {}


def test_same_incarnation_same_epoch_changes_nothing() -> None:
    m = joined(members())
    for t in (1.0, 2.0, 3.0):
        assert m.heard(hb(name="renamed", count=9), t) == []
    assert m.names() == {Y: "y"} and m.count_of(Y) == 1


def test_a_heartbeat_keeps_a_member_alive() -> None:
    m = joined(members(), now=0.0)
    t = 0.0
    for _ in range(10):
        t += DEAD_AFTER * 0.9
        assert m.heard(hb(), t) == []
        assert m.expire(t) == []
    assert m.alive(Y)


def test_new_epoch_in_a_heartbeat_cuts_once() -> None:
    m = joined(members())
    assert m.heard(hb(epoch=1), 1.0) == [Cut(Y)]
    assert m.heard(hb(epoch=1), 2.0) == []
    assert m.heard(hb(epoch=2), 3.0) == [Cut(Y)]
    assert m.epoch == 0  # its epoch, not ours
    assert m.alive(Y, Y_INC)


def test_new_incarnation_is_a_death_then_a_join() -> None:
    m = joined(members())
    assert m.heard(hb(inc=Y_INC + 1, count=2), 1.0) == [Died(Y), Joined(Y, 2)]
    assert m.verdict(Y, Y_INC) is False
    assert m.verdict(Y, Y_INC + 1) is True
    assert m.count_of(Y) == 2


def test_leaving_is_a_death() -> None:
    m = joined(members())
    assert m.heard(hb(leaving=True), 1.0) == [Died(Y)]
    assert not m.alive(Y) and m.count_of(Y) == 0 and m.names() == {}
    assert m.verdict(Y, Y_INC) is False
    assert m.heard(hb(leaving=True), 1.5) == []  # said twice: dead once


def test_leaving_of_an_unknown_or_other_incarnation_is_ignored() -> None:
    m = members()
    assert m.heard(hb(leaving=True), 0.0) == []
    assert m.verdict(Y, Y_INC) is None
    joined(m)
    assert m.heard(hb(inc=Y_INC - 1, leaving=True), 1.0) == []  # an old one's farewell
    assert m.alive(Y, Y_INC)


def test_a_member_that_comes_back_after_its_death_joins_again() -> None:
    m = joined(members())
    assert m.expire(DEAD_AFTER + 1) == [Died(Y)]
    assert m.heard(hb(), DEAD_AFTER + 2) == [Joined(Y, 1)]
    assert m.verdict(Y, Y_INC) is True


# -- expire -------------------------------------------------------------------------------


def test_expire_drops_members_silent_for_dead_after() -> None:
    m = joined(members(), now=10.0)
    joined(m, Z, Z_INC, now=11.0)
    assert m.expire(10.0 + DEAD_AFTER) == []  # not more than DEAD_AFTER yet
    assert m.expire(10.0 + DEAD_AFTER + 0.01) == [Died(Y)]
    assert m.alive(Z) and not m.alive(Y)
    assert m.expire(11.0 + DEAD_AFTER + 0.01) == [Died(Z)]
    assert m.expire(100.0) == []
    assert m.verdict(Y, Y_INC) is False and m.verdict(Z, Z_INC) is False


def test_expire_uses_the_dead_after_given() -> None:
    m = Members(ME, INC, dead_after=0.5)
    joined(m)
    assert m.expire(0.5) == []
    assert m.expire(0.6) == [Died(Y)]


# -- verdict and known --------------------------------------------------------------------


def test_verdict_of_a_coordinator_never_heard_of_is_none() -> None:
    m = members()
    assert m.verdict(Y, Y_INC) is None
    joined(m)
    assert m.verdict(Y, Y_INC + 1) is None  # another incarnation, never seen
    assert m.verdict(Z, Z_INC) is None


def test_known_makes_a_member_until_its_heartbeats_stop() -> None:
    m = members()
    assert m.known(Y, Y_INC, 4, "y", 1.0) == [Joined(Y, 4)]
    assert m.verdict(Y, Y_INC) is True and m.count_of(Y) == 4 and m.names() == {Y: "y"}
    assert m.known(Y, Y_INC, 4, "y", 2.0) == []  # already a member
    assert m.expire(1.0 + DEAD_AFTER + 0.01) == [Died(Y)]


def test_known_of_self_is_ignored() -> None:
    m = members()
    assert m.known(ME, INC, 1, "me", 0.0) == []
    assert not m.alive(ME)


def test_known_with_a_new_incarnation_replaces_the_old() -> None:
    m = joined(members())
    assert m.known(Y, Y_INC + 1, 2, "y", 1.0) == [Died(Y), Joined(Y, 2)]
    assert m.verdict(Y, Y_INC) is False and m.verdict(Y, Y_INC + 1) is True


def test_first_heartbeat_after_known_cuts_only_if_its_epoch_moved() -> None:
    # The bucket says which epoch it was in: a first heartbeat in that epoch
    # cuts nothing (streams opened meanwhile go on); one in a later epoch
    # cuts once (what was sent to it may have been lost).
    m = members()
    m.known(Y, Y_INC, 1, "y", 0.0, epoch=3)
    assert m.heard(hb(epoch=3), 0.5) == []
    assert m.heard(hb(epoch=4), 1.0) == [Cut(Y)]
    assert m.heard(hb(epoch=4), 1.5) == []
    # A record without an epoch (the bucket's older form): cut once.
    m.known(Z, Z_INC, 1, "z", 0.0)
    assert m.heard(hb(Z, Z_INC), 0.5) == [Cut(Z)]


# -- lost_connection ----------------------------------------------------------------------


def test_lost_connection_bumps_our_epoch_and_cuts_every_member() -> None:
    m = joined(members())
    joined(m, Z, Z_INC)
    assert m.lost_connection() == [Cut(Y), Cut(Z)]
    assert m.epoch == 1
    assert m.alive(Y) and m.alive(Z)  # members still
    assert m.lost_connection() == [Cut(Y), Cut(Z)]
    assert m.epoch == 2


def test_lost_connection_alone_cuts_nothing() -> None:
    m = members()
    assert m.lost_connection() == []
    assert m.epoch == 1


# -- batches ------------------------------------------------------------------------------


def test_first_batch_with_seq_0_is_delivered() -> None:
    m = joined(members())
    assert deliver(m, 0) == (True, [])
    assert m.epoch == 0


def test_consecutive_batches_are_delivered() -> None:
    m = joined(members())
    for seq in range(100):
        assert deliver(m, seq) == (True, [])
    assert m.epoch == 0


def test_links_are_numbered_per_sender_shard() -> None:
    m = joined(members(), count=3)
    for seq in range(5):
        for shard in range(3):
            assert deliver(m, seq, shard=shard, count=3) == (True, [])


def test_first_batch_not_numbered_0_cuts_and_bumps_our_epoch() -> None:
    m = joined(members())
    assert deliver(m, 3) == (True, [Cut(Y)])
    assert m.epoch == 1
    assert deliver(m, 4) == (True, [])  # then follows on from there


def test_a_gap_cuts_and_bumps_our_epoch() -> None:
    m = joined(members())
    deliver(m, 0)
    deliver(m, 1)
    assert deliver(m, 3) == (True, [Cut(Y)])  # 2 was lost
    assert m.epoch == 1
    assert deliver(m, 4) == (True, [])
    assert deliver(m, 4) == (True, [Cut(Y)])  # a repeat is a gap too
    assert m.epoch == 2


def test_a_gap_on_one_link_leaves_the_others_alone() -> None:
    m = joined(members(), count=2)
    deliver(m, 0, shard=0, count=2)
    deliver(m, 0, shard=1, count=2)
    assert deliver(m, 2, shard=0, count=2) == (True, [Cut(Y)])
    assert deliver(m, 1, shard=1, count=2) == (True, [])


def test_senders_new_epoch_from_seq_0_cuts_once_without_a_bump() -> None:
    m = joined(members())
    deliver(m, 0)
    deliver(m, 1)
    assert deliver(m, 0, epoch=1) == (True, [Cut(Y)])
    assert m.epoch == 0
    assert deliver(m, 1, epoch=1) == (True, [])
    # Its heartbeat saying so comes later: no second Cut.
    assert m.heard(hb(epoch=1), 1.0) == []


def test_new_epoch_seen_in_a_heartbeat_then_a_batch_cuts_once() -> None:
    m = joined(members())
    deliver(m, 0)
    assert m.heard(hb(epoch=1), 1.0) == [Cut(Y)]
    assert deliver(m, 0, epoch=1) == (True, [])
    assert m.epoch == 0


def test_first_batch_of_a_new_epoch_on_a_fresh_link_leaves_the_cut_to_its_heartbeat() -> None:
    # Nothing came on this link before: batch 0 is in order, and the
    # heartbeat that tells of the new epoch cuts, once.
    m = joined(members())
    assert deliver(m, 0, epoch=1) == (True, [])
    assert m.heard(hb(epoch=1), 1.0) == [Cut(Y)]
    assert m.heard(hb(epoch=1), 2.0) == []
    assert m.epoch == 0


def test_new_epoch_on_several_links_cuts_once() -> None:
    m = joined(members(), count=2)
    deliver(m, 0, shard=0, count=2)
    deliver(m, 0, shard=1, count=2)
    assert deliver(m, 0, shard=0, count=2, epoch=1) == (True, [Cut(Y)])
    assert deliver(m, 0, shard=1, count=2, epoch=1) == (True, [])


def test_new_epoch_not_from_seq_0_is_a_gap() -> None:
    m = joined(members())
    deliver(m, 0)
    assert deliver(m, 1, epoch=1) == (True, [Cut(Y)])  # its batch 0 of epoch 1 was lost
    assert m.epoch == 1


def test_batch_from_an_unknown_coordinator_joins_it_then_delivers() -> None:
    m = members()
    assert deliver(m, 0, count=2, shard=1) == (True, [Joined(Y, 2)])
    assert m.verdict(Y, Y_INC) is True and m.count_of(Y) == 2
    assert m.names() == {Y: ""}  # until its heartbeat names it
    assert m.heard(hb(count=2), 0.5) == []  # same incarnation and epoch: nothing new
    assert m.names() == {Y: "y"}


def test_batch_from_an_unknown_coordinator_in_a_later_epoch_joins_without_a_cut() -> None:
    m = members()
    assert deliver(m, 0, epoch=5) == (True, [Joined(Y, 1)])
    assert m.heard(hb(epoch=5), 0.5) == []


def test_batch_from_a_new_incarnation_is_a_death_then_a_join() -> None:
    m = joined(members())
    deliver(m, 0)
    deliver(m, 1)
    assert deliver(m, 0, inc=Y_INC + 1) == (True, [Died(Y), Joined(Y, 1)])
    assert m.verdict(Y, Y_INC) is False
    assert deliver(m, 1, inc=Y_INC + 1) == (True, [])


def test_batch_from_self_is_dropped() -> None:
    m = members()
    assert deliver(m, 0, cnum=ME, inc=INC) == (False, [])
    assert deliver(m, 7, cnum=ME, inc=INC) == (False, [])
    assert not m.alive(ME) and m.epoch == 0


def test_a_member_that_died_starts_its_links_afresh() -> None:
    m = joined(members())
    deliver(m, 0)
    deliver(m, 1)
    m.heard(hb(leaving=True), 1.0)
    assert deliver(m, 0, now=2.0) == (True, [Joined(Y, 1)])  # it is back: from 0


def test_batches_keep_a_member_alive_only_through_its_heartbeats() -> None:
    # A batch refreshes nothing: liveness is the heartbeats' alone.
    m = joined(members(), now=0.0)
    deliver(m, 0, now=DEAD_AFTER)
    assert m.expire(DEAD_AFTER + 0.01) == [Died(Y)]


# -- two Coordinators ---------------------------------------------------------------------


class Side:
    """One Coordinator as its driver uses `Members`: it numbers its batches to
    the other from 0 in each of its epochs (federation_core's contract)."""

    def __init__(self, cnum: int, inc: int) -> None:
        self.m = Members(cnum, inc)
        self.cuts = 0
        self._epoch = 0
        self._seq = 0

    def head(self) -> tuple[int, int, int, int, int, int]:
        if self.m.epoch != self._epoch:
            self._epoch, self._seq = self.m.epoch, 0
        self._seq += 1
        return (self.m.cnum, 0, 1, self.m.incarnation, self.m.epoch, self._seq - 1)

    def take(self, events: list[Event]) -> None:
        self.cuts += sum(isinstance(e, Cut) for e in events)

    def receive(self, head: tuple[int, int, int, int, int, int]) -> None:
        ok, events = self.m.batch(*head, 0.0)
        assert ok
        self.take(events)

    def beat(self) -> Heartbeat:
        return Heartbeat(self.m.cnum, self.m.incarnation, "", 1, self.m.epoch)


def test_after_one_lost_batch_both_sides_cut_once_then_settle() -> None:
    x, y = Side(ME, INC), Side(Y, Y_INC)
    for _ in range(3):
        y.receive(x.head())
        x.receive(y.head())
    x.head()  # lost on the way to y
    y.receive(x.head())
    assert y.cuts == 1 and y.m.epoch == 1
    x.take(x.m.heard(y.beat(), 1.0))  # y's new epoch: x ends its side too
    for _ in range(5):
        x.receive(y.head())
        y.receive(x.head())
        x.take(x.m.heard(y.beat(), 1.0))
        y.take(y.m.heard(x.beat(), 1.0))
    assert (x.cuts, y.cuts) == (1, 1)
    assert (x.m.epoch, y.m.epoch) == (0, 1)
