"""`shard_ids`: connection ids that name a shard, and the steering rule."""

from __future__ import annotations

import itertools

import pytest

from conec_actors import shard_ids


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16])
def test_an_issued_id_maps_to_its_shard(n: int) -> None:
    for k in range(n):
        for _ in range(50):
            cid = shard_ids.issue(k, n, 8)
            assert len(cid) == 8 and shard_ids.shard_of(cid, n) == k


def test_an_id_keeps_its_random_tail_and_moves_its_word_by_less_than_n() -> None:
    raw = bytes(range(1, 9))
    cid = shard_ids.issue(2, 3, 8, urandom=lambda size: raw[:size])
    assert cid[4:] == raw[4:]
    assert abs(int.from_bytes(cid[:4], "big") - int.from_bytes(raw[:4], "big")) < 3


@pytest.mark.parametrize("n", [3, 7, 1000])
def test_the_top_of_the_word_range_does_not_overflow(n: int) -> None:
    top = b"\xff\xff\xff\xff"
    for k in range(min(n, 10)):
        cid = shard_ids.issue(k, n, 8, urandom=lambda size: top + bytes(size - 4))
        assert shard_ids.shard_of(cid, n) == k


def test_ids_spread_over_shards_as_the_kernel_would_steer_them() -> None:
    counts = [0, 0, 0]
    for i in itertools.islice(itertools.count(), 3000):
        counts[shard_ids.shard_of(i.to_bytes(4, "big") * 2, 3)] += 1
    assert counts == [1000, 1000, 1000]


@pytest.mark.parametrize("call,match", [
    (lambda: shard_ids.issue(3, 3, 8), "shard 3 is not one of 0..2"),
    (lambda: shard_ids.issue(-1, 3, 8), "not one of"),
    (lambda: shard_ids.issue(0, 3, 3), "at least 4 bytes"),
    (lambda: shard_ids.shard_of(b"abc", 3), "at least 4 bytes"),
    (lambda: shard_ids.shard_of(b"abcd", 0), "at least one shard"),
])
def test_bad_arguments_are_named(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
