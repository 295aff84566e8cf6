"""Tests for conec_actors.limits: the smaller of both sides' values."""

from __future__ import annotations

from conec_actors.limits import effective_limit


def test_the_smaller_known_value_wins() -> None:
    assert effective_limit(1000, 300) == 300
    assert effective_limit(300, 1000) == 300
    assert effective_limit(5, 7, 3, 9) == 3


def test_zero_means_unknown_and_never_lowers() -> None:
    assert effective_limit(1000, 0) == 1000
    assert effective_limit(0, 1000) == 1000
    assert effective_limit(0, 0) == 0
    assert effective_limit() == 0


def test_a_negative_value_counts_as_unknown() -> None:
    assert effective_limit(-1, 50) == 50
