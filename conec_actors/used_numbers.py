"""Stream numbers: their range, and the ones an opener has used, in O(1)
memory for the usual case.

A stream number (the `n` of a `StreamId`) is chosen by its opener, in
[0, 2**62). It is never reused by the same opener, so the side that checks
(the Coordinator for proxied streams, a channel's target for direct ones,
and the opener choosing its next number) must remember which numbers were
used. Numbers mostly come from a counter, so `UsedNumbers` keeps a floor
(every number below it is used) plus the few numbers used above it, out of
order; the floor moves up as the gaps above it fill.
"""

from __future__ import annotations

from .errors import StreamIdInUse
from .wire import Code

#: Stream numbers are below this (they fit a QUIC variable-length integer).
MAX_STREAM_NUMBER = 2**62
#: Numbers remembered above the floor at most. Past this many, the floor
#: jumps to the lowest of them: the skipped numbers count as used from then
#: on (refused, never reused), which keeps memory bounded for a peer that
#: picks scattered numbers.
MAX_OUT_OF_ORDER = 256


def check_stream_number(n: object) -> int:
    """Validate a user-chosen stream number (0 <= n < 2**62)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError(f"stream_id must be an int, not {type(n).__name__}")
    if not 0 <= n < MAX_STREAM_NUMBER:
        raise ValueError(f"stream_id must be in [0, 2**62), got {n}")
    return n


class UsedNumbers:
    """Sans-I/O set of used stream numbers: a floor plus a few above it."""

    __slots__ = ("_above", "_floor", "limit")

    def __init__(self, limit: int = MAX_OUT_OF_ORDER) -> None:
        self._floor = 0
        self._above: set[int] = set()
        self.limit = limit

    def __contains__(self, n: int) -> bool:
        return n < self._floor or n in self._above

    def __len__(self) -> int:
        """How many numbers are remembered individually (not how many were used)."""
        return len(self._above)

    @property
    def floor(self) -> int:
        """Every number below this one counts as used."""
        return self._floor

    def add(self, n: int) -> bool:
        """Mark `n` used; False (and no change) if it already was."""
        if n < self._floor or n in self._above:
            return False
        if n == self._floor:
            self._floor += 1
            self._settle()
        else:
            self._above.add(n)
            if len(self._above) > self.limit:
                self._floor = min(self._above)
                self._settle()
        return True

    def next_free(self) -> int:
        """The lowest number not used (what a counter would pick next)."""
        return self._floor

    def pick(self, wanted: int | None = None, kind: str = "stream") -> int:
        """The opener's side: mark `wanted` used, or the lowest free number
        when it is None, and return it. Raises `StreamIdInUse` if `wanted`
        was used already (`kind` names the stream in the message)."""
        n = self._floor if wanted is None else wanted
        if not self.add(n):
            raise StreamIdInUse(f"{kind} stream number {n} was already used")
        return n

    def admit(self, n: int) -> Code | None:
        """The checking side (the Coordinator, a channel's target): mark the
        number a peer opened a stream with used. None if the stream may
        open, else the code to refuse it with: `Code.PROTOCOL` for a number
        out of range, `Code.STREAM_ID_IN_USE` for one used before."""
        if not 0 <= n < MAX_STREAM_NUMBER:
            return Code.PROTOCOL
        if not self.add(n):
            return Code.STREAM_ID_IN_USE
        return None

    def _settle(self) -> None:
        above = self._above
        floor = self._floor
        while floor in above:
            above.remove(floor)
            floor += 1
        self._floor = floor
