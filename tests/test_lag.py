"""The loop lag meter (coord/lag.py): deadlines out, firing times in."""

from __future__ import annotations

import pytest

from conec_actors.coord.lag import LAG_INTERVAL, LAG_WINDOW, LagMeter


def test_a_timer_on_time_has_no_lag() -> None:
    m = LagMeter()
    due = m.start(10.0)
    assert due == 10.0 + LAG_INTERVAL and m.lag == 0.0
    assert m.fired(due) == due + LAG_INTERVAL
    assert m.lag == 0.0


def test_lateness_is_measured_from_the_deadline() -> None:
    m = LagMeter(interval=1.0)
    due = m.start(0.0)
    nxt = m.fired(due + 0.25)
    assert m.lag == pytest.approx(0.25)
    assert nxt == pytest.approx(2.25)  # the next interval starts when it ran


def test_an_early_firing_counts_as_no_lag() -> None:
    m = LagMeter(interval=1.0)
    m.start(0.0)
    m.fired(0.999)
    assert m.lag == 0.0


def test_lag_is_the_worst_of_the_recent_ticks_then_forgotten() -> None:
    m = LagMeter(interval=1.0, window=3)
    due = m.start(0.0)
    due = m.fired(due + 0.5)  # a stall
    due = m.fired(due + 0.1)
    due = m.fired(due)
    assert m.lag == pytest.approx(0.5)
    due = m.fired(due)  # three ticks on time since: the stall left the window
    assert m.lag == pytest.approx(0.1)
    m.fired(due)
    assert m.lag == 0.0


def test_default_window_covers_seconds() -> None:
    assert LAG_INTERVAL * LAG_WINDOW >= 2.0


def test_firing_before_start_is_a_driver_bug() -> None:
    with pytest.raises(RuntimeError):
        LagMeter().fired(1.0)


@pytest.mark.parametrize(("interval", "window"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_meter_needs_a_positive_interval_and_window(interval: float, window: int) -> None:
    with pytest.raises(ValueError):
        LagMeter(interval, window)
