"""Where a connection lives (coord/peers.py): connection keys in, peer numbers out.

Keys are made the way `FrontEnd` makes them: shard `index` of `n` (restarted
`start` times) hands out `base + start * n + n + index`, then every n-th
number after it; `base` is the Coordinator's number shifted by `LOCAL_BITS`.
"""

from __future__ import annotations

import pytest

from conec_actors.coord.peers import (
    LOCAL_BITS,
    LOCAL_MASK,
    MAX_COORDINATORS,
    MAX_SHARDS,
    REMOTE,
    Peers,
    remote_peer,
    split_peer,
)

STARTS = (0, 1, 7, 1000)
COUNTS = (1, 2, 3, 4, 5)


def keys(cnum: int, index: int, count: int, start: int = 0, n: int = 6) -> list[int]:
    """The first `n` connection keys of shard `index` of `count` of Coordinator
    `cnum`, as `FrontEnd.accept` hands them out after `start` restarts."""
    first = (cnum << LOCAL_BITS) + start * count + count + index
    return [first + j * count for j in range(n)]


def test_keys_as_frontend_makes_them() -> None:
    # Mirrors FrontEnd: `base + start * shard[1] + shard[1] + shard[0]`, step n.
    p = Peers(1, 3, cnum=5)
    assert p.base == 5 << LOCAL_BITS
    assert keys(5, 1, 3, start=2, n=2) == [p.base + 2 * 3 + 3 + 1, p.base + 2 * 3 + 3 + 1 + 3]


# -- remote_peer / split_peer -----------------------------------------------------------


def test_remote_peer_and_split_peer_round_trip() -> None:
    seen = set()
    for cnum in (1, 2, 255, 256, 4097, MAX_COORDINATORS):
        for shard in (0, 1, 4, MAX_SHARDS - 1):
            peer = remote_peer(cnum, shard)
            assert peer >= REMOTE
            assert split_peer(peer) == (cnum, shard)
            seen.add(peer)
    assert len(seen) == 6 * 4  # no two shards of the federation share a peer number


def test_remote_peers_never_collide_with_local_shards() -> None:
    assert remote_peer(1, 0) > MAX_SHARDS - 1
    assert all(not Peers(0, 1).is_remote(k) for k in range(MAX_SHARDS))


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "count"), [(0, 0), (1, 1), (-1, 2), (3, 3),
                                              (0, MAX_SHARDS + 1)])
def test_a_shard_outside_its_count_is_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="shard"):
        Peers(index, count)


@pytest.mark.parametrize("cnum", [-1, MAX_COORDINATORS + 1])
def test_a_coordinator_number_out_of_range_is_refused(cnum: int) -> None:
    with pytest.raises(ValueError, match="Coordinator number"):
        Peers(0, 1, cnum)


def test_the_largest_federation_and_shard_counts_are_allowed() -> None:
    p = Peers(MAX_SHARDS - 1, MAX_SHARDS, MAX_COORDINATORS)
    assert p.base == MAX_COORDINATORS << LOCAL_BITS
    assert p.base >> LOCAL_BITS == MAX_COORDINATORS and p.base & LOCAL_MASK == 0


def test_outside_a_federation_the_base_is_zero() -> None:
    p = Peers(0, 1)
    assert (p.cnum, p.base) == (0, 0)
    assert p.coordinators() == {} and p.others() == []


# -- this Coordinator's keys --------------------------------------------------------------


@pytest.mark.parametrize("cnum", [0, 1, 300, MAX_COORDINATORS])
def test_own_keys_belong_to_the_shard_that_made_them(cnum: int) -> None:
    for count in COUNTS:
        views = [Peers(i, count, cnum) for i in range(count)]
        for start in STARTS:
            for maker in range(count):
                for key in keys(cnum, maker, count, start):
                    for view in views:
                        assert view.peer_of(key) == maker
                        assert view.is_local(key) == (view.index == maker)
                        assert not view.is_remote(view.peer_of(key))


def test_keys_of_two_coordinators_never_meet() -> None:
    a = {k for i in range(3) for s in STARTS for k in keys(1, i, 3, s)}
    b = {k for i in range(3) for s in STARTS for k in keys(2, i, 3, s)}
    assert not a & b


# -- other Coordinators' keys -------------------------------------------------------------


def test_keys_of_a_known_coordinator_name_its_shard() -> None:
    for own_count in COUNTS:
        p = Peers(own_count - 1, own_count, cnum=1)
        for cnum, count in ((2, 1), (3, 4), (MAX_COORDINATORS, 5)):
            p.add_coordinator(cnum, count)
            for start in STARTS:
                for shard in range(count):
                    for key in keys(cnum, shard, count, start):
                        peer = p.peer_of(key)
                        assert peer == remote_peer(cnum, shard)
                        assert p.is_remote(peer) and not p.is_local(key)
                        assert split_peer(peer) == (cnum, shard)


def test_keys_of_a_coordinator_not_yet_known_go_to_its_first_shard() -> None:
    # Before its heartbeat (or a batch) says how many shards it has, every key
    # of Coordinator 9 is taken to be on its shard 0.
    p = Peers(0, 2, cnum=1)
    for key in keys(9, 3, 4, start=5):
        assert p.peer_of(key) == remote_peer(9, 0)
        assert not p.is_local(key)


def test_a_coordinator_without_a_number_sees_federation_keys_as_remote() -> None:
    p = Peers(0, 1)  # cnum 0: not (yet) in a federation
    [key] = keys(4, 0, 1, n=1)
    assert not p.is_local(key)
    assert p.peer_of(key) == remote_peer(4, 0)


def test_add_coordinator_again_changes_its_shard_count() -> None:
    p = Peers(0, 1, cnum=1)
    p.add_coordinator(2, 1)
    p.add_coordinator(2, 3)
    assert p.coordinators() == {2: 3}
    assert p.peer_of(keys(2, 2, 3, n=1)[0]) == remote_peer(2, 2)


@pytest.mark.parametrize("cnum", [0, 1, -3, MAX_COORDINATORS + 1])
def test_add_coordinator_refuses_own_or_invalid_numbers(cnum: int) -> None:
    p = Peers(0, 1, cnum=1)
    with pytest.raises(ValueError, match="not another Coordinator"):
        p.add_coordinator(cnum, 1)
    assert p.coordinators() == {}


@pytest.mark.parametrize("count", [0, -1, MAX_SHARDS + 1])
def test_add_coordinator_refuses_impossible_shard_counts(count: int) -> None:
    p = Peers(0, 1, cnum=1)
    with pytest.raises(ValueError, match="shards"):
        p.add_coordinator(2, count)
    assert p.coordinators() == {}


def test_coordinators_is_a_copy() -> None:
    p = Peers(0, 1, cnum=1)
    p.add_coordinator(2, 2)
    view = p.coordinators()
    view[3] = 1
    assert p.coordinators() == {2: 2}


# -- others and drop_coordinator ----------------------------------------------------------


def test_others_lists_own_other_shards_then_every_remote_shard() -> None:
    for count in COUNTS:
        for index in range(count):
            p = Peers(index, count, cnum=1)
            own = [k for k in range(count) if k != index]
            assert p.others() == own
            p.add_coordinator(7, 2)
            p.add_coordinator(3, 1)
            assert p.others() == [*own, remote_peer(7, 0), remote_peer(7, 1),
                                  remote_peer(3, 0)]


def test_drop_coordinator_gives_its_peers_and_forgets_it() -> None:
    p = Peers(0, 2, cnum=1)
    p.add_coordinator(2, 3)
    p.add_coordinator(4, 1)
    assert p.drop_coordinator(2) == [remote_peer(2, k) for k in range(3)]
    assert p.coordinators() == {4: 1}
    assert p.others() == [1, remote_peer(4, 0)]
    # Its keys are unknown again: shard 0 until it rejoins.
    assert p.peer_of(keys(2, 2, 3, n=1)[0]) == remote_peer(2, 0)


def test_dropping_an_unknown_coordinator_gives_nothing() -> None:
    p = Peers(0, 1, cnum=1)
    assert p.drop_coordinator(2) == []
    p.add_coordinator(2, 2)
    p.drop_coordinator(2)
    assert p.drop_coordinator(2) == []  # twice: the second time, nothing


def test_a_coordinator_that_rejoins_with_other_shards_is_counted_anew() -> None:
    p = Peers(0, 1, cnum=1)
    p.add_coordinator(2, 4)
    p.drop_coordinator(2)
    p.add_coordinator(2, 2)
    assert p.drop_coordinator(2) == [remote_peer(2, 0), remote_peer(2, 1)]


# -- sibling shards (front-end shards in a federation: a member number each) --------------


def sharded(count: int = 3, index: int = 0) -> tuple[Peers, dict[int, int]]:
    """Shard `index` of a Coordinator of `count` shards whose shard k is
    member 10 + k; its view with every sibling set."""
    numbers = {k: 10 + k for k in range(count)}
    p = Peers(index, count, numbers[index])
    for k, c in numbers.items():
        if k != index:
            p.set_sibling(c, k)
    return p, numbers


def test_keys_of_a_sibling_name_its_shard_not_a_remote_peer() -> None:
    for count in (2, 3, 5):
        for index in range(count):
            p, numbers = sharded(count, index)
            for k, c in numbers.items():
                assert p.is_sibling(c) == (k != index)
                for start in STARTS:
                    for key in keys(c, k, count, start):
                        assert p.peer_of(key) == k
                        assert not p.is_remote(p.peer_of(key))
                        assert p.is_local(key) == (k == index)


def test_siblings_are_this_coordinators_shards_in_others() -> None:
    p, _ = sharded(3, 1)
    p.add_coordinator(50, 2)
    assert p.others() == [0, 2, remote_peer(50, 0), remote_peer(50, 1)]
    assert p.coordinators() == {50: 2}


def test_a_sibling_is_never_counted_as_a_coordinator() -> None:
    p, numbers = sharded(3, 0)
    p.add_coordinator(numbers[1], 3)  # its heartbeat, as any member's
    assert p.coordinators() == {}
    assert p.drop_coordinator(numbers[1]) == []  # nothing remote to end
    assert p.is_sibling(numbers[1])


def test_set_sibling_takes_a_member_out_of_the_coordinators() -> None:
    p = Peers(0, 2, cnum=10)
    p.add_coordinator(11, 2)  # heard of before it was known as a sibling
    p.set_sibling(11, 1)
    assert p.coordinators() == {} and p.others() == [1]
    assert p.peer_of(keys(11, 1, 2, n=1)[0]) == 1


def test_a_sibling_that_rejoins_under_a_new_number_replaces_its_old_one() -> None:
    p, numbers = sharded(3, 0)
    p.set_sibling(42, 2)  # shard 2 restarted and joined as member 42
    assert p.is_sibling(42) and not p.is_sibling(numbers[2])
    assert p.peer_of(keys(42, 2, 3, n=1)[0]) == 2
    # The old number's keys are another Coordinator's now (unknown: its shard 0).
    assert p.peer_of(keys(numbers[2], 2, 3, n=1)[0]) == remote_peer(numbers[2], 0)
    assert p.is_sibling(numbers[1])


@pytest.mark.parametrize("index", [0, -1, 3])
def test_set_sibling_refuses_itself_and_shards_it_does_not_have(index: int) -> None:
    p = Peers(0, 3, cnum=10)
    with pytest.raises(ValueError, match="not another shard"):
        p.set_sibling(11, index)
    assert not p.is_sibling(11)
