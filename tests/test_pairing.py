"""Per-pair proxied stream slots (coord/pairing.py), without a Coordinator."""

from __future__ import annotations

from conec_actors.coord.pairing import MAX_STREAMS_PER_PAIR, Pairing

A, B, T = 1, 2, 9  # two openers and a target, by conn_key


def always() -> bool:
    return True


def never() -> bool:
    return False


def alive(item: str) -> bool:
    return not item.startswith("dead")


def fill(p: Pairing[str], opener: int = A, target: int = T) -> None:
    for _ in range(p.per_pair):
        assert not p.must_wait(opener, target, room=True)
        p.opened(opener, target)


def test_an_opener_holds_at_most_its_share_of_slots_toward_one_target() -> None:
    p: Pairing[str] = Pairing()
    assert p.per_pair == MAX_STREAMS_PER_PAIR
    fill(p)
    assert p.open_count(A, T) == MAX_STREAMS_PER_PAIR
    assert p.must_wait(A, T, room=True)
    assert not p.must_wait(B, T, room=True)  # another opener has its own slots
    assert not p.must_wait(A, B, room=True)  # and so has another target


def test_no_room_at_the_target_makes_every_open_wait() -> None:
    p: Pairing[str] = Pairing()
    assert p.must_wait(A, T, room=False)


def test_a_queued_open_keeps_later_ones_of_its_pair_behind_it() -> None:
    p: Pairing[str] = Pairing(per_pair=1)
    p.opened(A, T)
    p.wait(A, T, "a1")
    assert p.closed(A, T)  # a slot is free, and opens wait toward T
    assert p.must_wait(A, T, room=True)  # a1 first


def test_admit_opens_each_openers_queue_in_order_within_its_slots() -> None:
    p: Pairing[str] = Pairing(per_pair=2)
    for item in ("a1", "a2", "a3"):
        p.wait(A, T, item)
    p.wait(B, T, "b1")
    got = []
    for item, go in p.admit(T, alive, always):
        assert go
        got.append(item)
        p.opened(A if item[0] == "a" else B, T)
    assert got == ["a1", "a2", "b1"]  # a3 waits for one of A's streams to end
    assert p.has_waiting(T)
    assert p.closed(A, T)
    assert [item for item, _ in p.admit(T, alive, always)] == ["a3"]
    assert not p.has_waiting(T)


def test_admit_drops_what_no_longer_waits_even_without_room() -> None:
    p: Pairing[str] = Pairing()
    for item in ("dead1", "dead2", "a1"):
        p.wait(A, T, item)
    assert list(p.admit(T, alive, never)) == [("dead1", False), ("dead2", False)]
    assert p.has_waiting(T)  # a1 waits for room
    assert list(p.admit(T, alive, always)) == [("a1", True)]


def test_admit_stops_when_the_target_runs_out_of_room() -> None:
    p: Pairing[str] = Pairing()
    p.wait(A, T, "a1")
    p.wait(A, T, "a2")
    p.wait(B, T, "b1")
    room = [True]
    got = []
    for item, _ in p.admit(T, alive, lambda: room[0]):
        got.append(item)
        room[0] = False  # opening a1 used the last stream the target allows
    assert got == ["a1"]
    room[0] = True
    assert [i for i, _ in p.admit(T, alive, lambda: room[0])] == ["a2", "b1"]


def test_counts_return_to_nothing() -> None:
    p: Pairing[str] = Pairing()
    fill(p)
    for _ in range(MAX_STREAMS_PER_PAIR):
        assert not p.closed(A, T)
    assert p.open_count(A, T) == 0 and p._open == {}


def test_a_target_that_leaves_takes_its_queues() -> None:
    p: Pairing[str] = Pairing()
    p.wait(A, T, "a1")
    p.wait(B, T, "b1")
    assert sorted(p.drop_target(T)) == ["a1", "b1"]
    assert not p.has_waiting(T) and p.drop_target(T) == []
    assert list(p.admit(T, alive, always)) == []


def test_a_nested_admit_while_one_is_under_way_leaves_both_consistent() -> None:
    # Opening one stream can end another (an abort), which admits again.
    p: Pairing[str] = Pairing()
    for item in ("a1", "a2", "a3"):
        p.wait(A, T, item)
    outer = p.admit(T, alive, always)
    assert next(outer) == ("a1", True)
    assert [i for i, _ in p.admit(T, alive, always)] == ["a2", "a3"]
    assert list(outer) == []
    assert not p.has_waiting(T)
