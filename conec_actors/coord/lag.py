"""How late a process's event loop runs its timers, without I/O.

A driver (the front-end's event loop, a worker's poll loop) arms one timer
for `due`, and when it fires calls `fired(now)`, which measures how late it
was and gives the next deadline. `lag` is the worst lateness of the last
LAG_WINDOW ticks, so a stall between two scrapes still shows.
"""

from __future__ import annotations

from collections import deque

#: Seconds between two ticks of the timer.
LAG_INTERVAL = 0.5
#: Ticks `lag` is the worst of (5 s at LAG_INTERVAL).
LAG_WINDOW = 10


class LagMeter:
    """A periodic timer's lateness: deadlines out, times it fired in."""

    __slots__ = ("_recent", "due", "interval")

    def __init__(self, interval: float = LAG_INTERVAL, window: int = LAG_WINDOW) -> None:
        if interval <= 0 or window < 1:
            raise ValueError("a lag meter needs a positive interval and window")
        self.interval = interval
        self._recent: deque[float] = deque(maxlen=window)
        self.due: float | None = None

    def start(self, now: float) -> float:
        """Start measuring at `now`: the first deadline."""
        self.due = now + self.interval
        return self.due

    def fired(self, now: float) -> float:
        """The timer armed for `due` ran at `now`: the next deadline."""
        if self.due is None:
            raise RuntimeError("LagMeter.fired() before start()")
        self._recent.append(max(0.0, now - self.due))
        self.due = now + self.interval
        return self.due

    @property
    def lag(self) -> float:
        """Seconds: the latest the timer ran in the last ticks (0.0 before any)."""
        return max(self._recent, default=0.0)
