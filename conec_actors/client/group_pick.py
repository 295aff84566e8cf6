"""Which member of a group a `tell_group` or `ask_group` goes to, without I/O.

The client follows each group it sends to: the Coordinator sends the group's
members once (`follow`) and again on every change (`view`), so picking needs
no round trip per message. The pick is the least loaded member: fewest asks
(what it last reported to the Coordinator, at most `REPORT_INTERVAL` +
`coord.groups.VIEW_INTERVAL` old, plus this sender's own asks to it not yet
answered), then fewest tells (reported envelopes waiting in its mailbox,
plus this sender's own messages queued toward it and not yet written: the
driver says how many with `queued`); ties go round-robin. A slow member answers
later, so it holds more asks and is picked less.

A sender that outpaces its writes picks tells in runs (`pick_tell`): while
tells queue toward the member picked last, it takes up to `TELL_RUN` in a
row, as long as nothing else the pick rests on changed (no view, no ask sent
or answered). Those tells would wait for a write anyway; in one run they share
a batch toward one member instead of being dealt out one per pair, which costs
a batch per member. A tell to an idle line is written at once, so a trickle
of tells (a job at a time) is still spread one by one.

`LoadReporter` is the member's side: it says when its load is worth
reporting.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import wire

#: Seconds between two load reports of a member (at most; none while its
#: load does not change).
REPORT_INTERVAL = 0.05

#: Tells in a row to the member picked, while tells queue toward it and
#: nothing else changed (`pick_tell`).
TELL_RUN = 64


_IDLE = (0, 0)


class LoadReporter:
    """When a group member reports its load: sampled every `REPORT_INTERVAL`
    by the driver, reported when it changed."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        #: The (asks, tells) last reported.
        self.last = _IDLE

    def sample(self, asks: int, tells: int) -> wire.LoadReport | None:
        """The load now: the report to send, or None if it has not changed."""
        if (asks, tells) == self.last:
            return None
        self.last = (asks, tells)
        return wire.LoadReport(asks, tells)

    def reset(self) -> None:
        """The member left its groups: the Coordinator forgot its load."""
        self.last = _IDLE


class NotFollowed(LookupError):
    """A group was picked from before its members were known."""


class GroupPicker:
    """The members of the groups one client sends to, and its load on them."""

    __slots__ = ("_changes", "_cursor", "_outstanding", "_reported", "_runs", "_views",
                 "epoch")

    def __init__(self) -> None:
        #: group -> its members, as the Coordinator last said
        self._views: dict[str, list[str]] = {}
        #: group -> where the next round-robin tie-break starts
        self._cursor: dict[str, int] = {}
        #: member -> this client's asks to it not yet answered
        self._outstanding: dict[str, int] = {}
        #: member -> the (asks, tells) it last reported, as views said
        self._reported: dict[str, tuple[int, int]] = {}
        #: Counts the views taken: what a send saw when it picked.
        self.epoch = 0
        #: Counts every change a pick rests on, bar tells queued (`pick_tell`).
        self._changes = 0
        #: group -> (member, tells left in its run, `_changes` when picked)
        self._runs: dict[str, tuple[str, int, int]] = {}

    def follows(self, name: str) -> bool:
        """Whether the members of `name` are known (it is followed)."""
        return name in self._views

    def view(self, name: str, members: list[str], asks: list[int] | None = None,
             tells: list[int] | None = None) -> None:
        """The Coordinator says `name`'s members are `members` (from now on
        only they are picked), with the loads they reported (`asks[i]`,
        `tells[i]` for `members[i]`, when given)."""
        self._views[name] = list(members)
        self.epoch += 1
        self._changes += 1
        if asks and tells and len(asks) == len(tells) == len(members):
            for m, a, t in zip(members, asks, tells, strict=True):
                self._reported[m] = (a, t)

    def gone(self, member: str, epoch: int | None = None) -> None:
        """A send to `member` found it not connected: stop picking it now,
        before the Coordinator's view says so (a later view wins). With the
        `epoch` the send picked at, nothing changes if a view came since:
        that view is newer than the failed send (the member may be back)."""
        if epoch is not None and epoch != self.epoch:
            return
        self._changes += 1
        for name, members in self._views.items():
            if member in members:
                self._views[name] = [m for m in members if m != member]

    def reported(self, member: str) -> tuple[int, int]:
        """The (asks, tells) `member` last reported ((0, 0) if unknown)."""
        return self._reported.get(member, (0, 0))

    def followed(self) -> list[str]:
        """The groups followed."""
        return list(self._views)

    def members(self, name: str) -> list[str]:
        """The members of followed group `name`; `NotFollowed` otherwise."""
        try:
            return list(self._views[name])
        except KeyError:
            raise NotFollowed(name) from None

    def forget(self) -> None:
        """The Coordinator is gone: nothing is followed any more."""
        self._views.clear()
        self._cursor.clear()
        self._reported.clear()
        self._runs.clear()

    def outstanding(self, member: str) -> int:
        """This client's asks to `member` not yet answered."""
        return self._outstanding.get(member, 0)

    def pick(self, name: str, queued: Callable[[str], int]) -> str | None:
        """The member of followed group `name` to send to next, or None if
        it has none; `queued(member)` is how many tells wait toward it.
        `NotFollowed` if `name` is not followed."""
        try:
            members = self._views[name]
        except KeyError:
            raise NotFollowed(name) from None
        n = len(members)
        if n == 0:
            return None
        start = self._cursor.get(name, 0) % n
        out = self._outstanding
        rep = self._reported
        best = start
        best_key = (-1, -1)
        for i in range(n):
            at = (start + i) % n
            m = members[at]
            ra, rt = rep.get(m, _IDLE)
            key = (ra + out.get(m, 0), rt + queued(m))
            if best_key[0] < 0 or key < best_key:
                best, best_key = at, key
                if key == (0, 0):  # nobody is less loaded than idle
                    break
        self._cursor[name] = best + 1
        return members[best]

    def pick_tell(self, name: str, queued: Callable[[str], int]) -> str | None:
        """As `pick`, for a tell: the member picked last for a tell to `name`
        while its run lasts (up to `TELL_RUN` tells, while tells queue toward
        it and nothing else changed since)."""
        run = self._runs.get(name)
        if run is not None and run[1] and run[2] == self._changes and queued(run[0]):
            self._runs[name] = (run[0], run[1] - 1, run[2])
            return run[0]
        member = self.pick(name, queued)
        if member is not None:
            self._runs[name] = (member, TELL_RUN - 1, self._changes)
        return member

    def ask_sent(self, member: str) -> None:
        """An ask to `member` was handed to the mailbox."""
        self._outstanding[member] = self._outstanding.get(member, 0) + 1
        self._changes += 1

    def ask_done(self, member: str) -> None:
        """An ask to `member` was answered, failed or given up. `ValueError`
        if none was outstanding (a driver bug)."""
        left = self._outstanding.get(member, 0) - 1
        if left < 0:
            raise ValueError(f"no ask to {member!r} is outstanding")
        self._changes += 1
        if left:
            self._outstanding[member] = left
        else:
            del self._outstanding[member]
