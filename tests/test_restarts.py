"""RestartBudget: deaths within a window, then give up (no I/O)."""

from __future__ import annotations

import pytest

from conec_actors.restarts import BudgetExhausted, RestartBudget


def test_deaths_below_the_limit_allow_restarts() -> None:
    b = RestartBudget(3, 10.0)
    assert b.record(0.0) is True
    assert b.record(1.0) is True
    assert b.recent == 2
    assert not b.exhausted


def test_limit_deaths_within_the_window_exhaust_it() -> None:
    b = RestartBudget(3, 10.0)
    b.record(0.0)
    b.record(5.0)
    assert b.record(9.9) is False
    assert b.exhausted
    assert b.recent == 3


def test_deaths_older_than_the_window_are_forgotten() -> None:
    b = RestartBudget(3, 10.0)
    b.record(0.0)
    b.record(5.0)
    assert b.record(10.0) is True  # the death at 0.0 left the window
    assert b.recent == 2
    assert b.record(14.9) is False


def test_limit_one_gives_up_at_the_first_death() -> None:
    assert RestartBudget(1, 1.0).record(0.0) is False


def test_recording_after_exhaustion_raises() -> None:
    b = RestartBudget(1, 1.0)
    b.record(0.0)
    with pytest.raises(BudgetExhausted):
        b.record(100.0)


def test_time_going_backwards_raises() -> None:
    b = RestartBudget()
    b.record(5.0)
    with pytest.raises(ValueError, match="backwards"):
        b.record(4.0)


@pytest.mark.parametrize(("limit", "window"), [(0, 10.0), (3, 0.0), (3, -1.0)])
def test_bad_parameters_raise(limit: int, window: float) -> None:
    with pytest.raises(ValueError):
        RestartBudget(limit, window)
