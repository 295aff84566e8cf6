"""Tests for conec_actors.used_numbers: the range of stream numbers, the
opener's pick and the checking side's admission."""

from __future__ import annotations

import pytest

from conec_actors.errors import StreamIdInUse
from conec_actors.used_numbers import MAX_STREAM_NUMBER, UsedNumbers, check_stream_number
from conec_actors.wire import Code


def test_check_stream_number_accepts_the_range() -> None:
    assert check_stream_number(0) == 0
    assert check_stream_number(MAX_STREAM_NUMBER - 1) == MAX_STREAM_NUMBER - 1


@pytest.mark.parametrize("bad", [-1, MAX_STREAM_NUMBER, True, 1.0, "1", None])
def test_check_stream_number_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        check_stream_number(bad)


def test_pick_counts_up_from_the_lowest_free() -> None:
    used = UsedNumbers()
    assert [used.pick() for _ in range(3)] == [0, 1, 2]
    assert used.pick(10) == 10
    assert used.pick() == 3


def test_pick_refuses_a_number_used_before() -> None:
    used = UsedNumbers()
    used.pick(5)
    with pytest.raises(StreamIdInUse, match="direct stream number 5"):
        used.pick(5, "direct")
    assert 5 in used


def test_admit_refuses_reuse_and_numbers_out_of_range() -> None:
    used = UsedNumbers()
    assert used.admit(0) is None
    assert used.admit(0) == Code.STREAM_ID_IN_USE
    assert used.admit(-1) == Code.PROTOCOL
    assert used.admit(MAX_STREAM_NUMBER) == Code.PROTOCOL
    assert MAX_STREAM_NUMBER not in used
    assert used.admit(MAX_STREAM_NUMBER - 1) is None
