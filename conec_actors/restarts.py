"""`RestartBudget`: how many deaths a supervised thing may have within a
window before its supervisor gives up (sans-I/O: time comes in as `now`).

One home for the rule "3 deaths in 10 s and it stops", used by the
Coordinator's worker supervisor and by `ActorPool`.
"""

from __future__ import annotations

from collections import deque

__all__ = ["BudgetExhausted", "RestartBudget"]


class BudgetExhausted(RuntimeError):
    """A death was recorded after the budget was already spent."""


class RestartBudget:
    """Counts deaths within the last `window` seconds; `record(now)` says
    whether a restart is still allowed (False: `limit` deaths within the
    window, give up). Once spent it stays spent: recording again raises
    `BudgetExhausted`."""

    def __init__(self, limit: int = 3, window: float = 10.0) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if window <= 0:
            raise ValueError(f"window must be positive, not {window}")
        self.limit = limit
        self.window = window
        self._deaths: deque[float] = deque()
        self._last = float("-inf")
        self.exhausted = False

    def record(self, now: float) -> bool:
        """Record a death at `now`; True if a restart is allowed."""
        if self.exhausted:
            raise BudgetExhausted("the restart budget is already spent")
        if now < self._last:
            raise ValueError(f"time went backwards: {now} < {self._last}")
        self._last = now
        while self._deaths and now - self._deaths[0] >= self.window:
            self._deaths.popleft()
        self._deaths.append(now)
        if len(self._deaths) >= self.limit:
            self.exhausted = True
        return not self.exhausted

    @property
    def recent(self) -> int:
        """Deaths counted in the window as of the last `record`."""
        return len(self._deaths)
