"""Groups at the front-end, without I/O: who belongs to which group, and who
follows which group's members.

A member is a client id: it joins and leaves with `GroupRequest`s, and is
dropped from every group when its session ends (`member_gone`). A follower
is a connection (`conn_key`) that picks members itself (`tell_group`,
`ask_group`); it is sent the members of the groups it follows on every
change, so the Coordinator is not asked once per message. Every change
returns the names of the groups whose members changed, for the driver to
push a `GroupView` to their followers.

Members report their load (`LoadReport`: asks taken and not answered,
envelopes waiting in their mailbox). A report marks the member's followed
groups dirty (`report`); the driver pushes their views at most every
`VIEW_INTERVAL` (`take_dirty`), so reports cost the followers a bounded
rate of views however often loads change.

Everything a client can make the Coordinator hold is bounded (DESIGN 3.1):
`MAX_GROUPS` groups joined and `MAX_FOLLOWS` groups followed per client,
`MAX_MEMBERS` members per group; beyond, the request is refused with
`Code.TOO_MANY_GROUPS` or `Code.GROUP_FULL`.

There is one front-end today, so it holds the book; with front-end shards
the book moves to a worker (sharded by group name) that the shards ask.
"""

from __future__ import annotations

from .. import wire
from ..errors import ProtocolError

#: Groups one client may belong to at once.
MAX_GROUPS = 256
#: Groups one client may follow at once (one per group it sends to).
MAX_FOLLOWS = 256
#: Members one group may have.
MAX_MEMBERS = 4096
#: Seconds between two views of a group pushed because loads changed (a
#: change of members is pushed at once).
VIEW_INTERVAL = 0.1


def check_name(name: object) -> str:
    """`name` if it is a valid group name (a str of 1-`wire.MAX_GROUP_NAME`
    characters, like a broadcast name), else `ProtocolError`."""
    if not isinstance(name, str) or not 1 <= len(name) <= wire.MAX_GROUP_NAME:
        raise ProtocolError("a group name is a str of 1-"
                            f"{wire.MAX_GROUP_NAME} characters")
    return name


class GroupBook:
    """Every group of one front-end: members and followers."""

    __slots__ = ("_dirty", "_followers", "_follows", "_joined", "_loads", "_members")

    def __init__(self) -> None:
        #: group -> member ids, in joining order
        self._members: dict[str, dict[str, None]] = {}
        #: member id -> the groups it belongs to
        self._joined: dict[str, set[str]] = {}
        #: group -> follower conn_keys
        self._followers: dict[str, set[int]] = {}
        #: follower conn_key -> the groups it follows
        self._follows: dict[int, set[str]] = {}
        #: member id -> its last reported (asks, tells)
        self._loads: dict[str, tuple[int, int]] = {}
        #: followed groups whose members' loads changed since the last view
        self._dirty: set[str] = set()

    def members(self, name: str) -> list[str]:
        """The members of `name`, in joining order (empty if it has none)."""
        return list(self._members.get(name, ()))

    def view(self, name: str) -> wire.GroupView:
        """The `GroupView` of `name` now: its members and their loads."""
        members = self.members(name)
        loads = self._loads
        asks = [loads.get(m, (0, 0))[0] for m in members]
        tells = [loads.get(m, (0, 0))[1] for m in members]
        return wire.GroupView(name, members, asks, tells)

    def groups_of(self, member: str) -> set[str]:
        """The groups `member` belongs to."""
        return set(self._joined.get(member, ()))

    def followers(self, name: str) -> list[int]:
        """The connections following `name`."""
        return list(self._followers.get(name, ()))

    def __len__(self) -> int:
        """How many groups have members."""
        return len(self._members)

    # -- membership ---------------------------------------------------------------

    def join(self, member: str, name: str) -> tuple[int, bool]:
        """`member` joins `name`: (the `GroupReply` code, whether the members
        changed). Joining twice is fine (nothing changes)."""
        mine = self._joined.get(member)
        if mine is not None and name in mine:
            return 0, False
        if mine is not None and len(mine) >= MAX_GROUPS:
            return wire.Code.TOO_MANY_GROUPS, False
        group = self._members.get(name)
        if group is not None and len(group) >= MAX_MEMBERS:
            return wire.Code.GROUP_FULL, False
        if group is None:
            group = self._members[name] = {}
        group[member] = None
        if mine is None:
            mine = self._joined[member] = set()
        mine.add(name)
        return 0, True

    def leave(self, member: str, name: str) -> bool:
        """`member` leaves `name`: whether the members changed (False if it
        was not a member)."""
        mine = self._joined.get(member)
        if mine is None or name not in mine:
            return False
        mine.discard(name)
        if not mine:
            del self._joined[member]
            self._loads.pop(member, None)
        self._drop(member, name)
        return True

    def member_gone(self, member: str) -> list[str]:
        """`member`'s session ended: the groups it was dropped from."""
        self._loads.pop(member, None)
        names = sorted(self._joined.pop(member, ()))
        for name in names:
            self._drop(member, name)
        return names

    def _drop(self, member: str, name: str) -> None:
        group = self._members[name]
        del group[member]
        if not group:
            del self._members[name]

    # -- loads ----------------------------------------------------------------------

    def report(self, member: str, asks: int, tells: int) -> bool:
        """`member` reports its load: True if a followed group became dirty
        (the driver then arms its view timer, if not armed). A client in no
        group has no load worth keeping. `ProtocolError` for a negative count."""
        if asks < 0 or tells < 0:
            raise ProtocolError("a load report counts from 0")
        names = self._joined.get(member)
        if not names or self._loads.get(member) == (asks, tells):
            return False
        self._loads[member] = (asks, tells)
        before = len(self._dirty)
        self._dirty.update(n for n in names if n in self._followers)
        return len(self._dirty) > before

    def take_dirty(self) -> list[str]:
        """The followed groups whose loads changed since the last call (the
        driver pushes their views now)."""
        names = sorted(n for n in self._dirty if n in self._followers)
        self._dirty.clear()
        return names

    # -- following ----------------------------------------------------------------

    def follow(self, follower: int, name: str) -> int:
        """`follower` wants `name`'s members on every change: the
        `GroupReply` code (following twice is fine)."""
        mine = self._follows.get(follower)
        if mine is not None and name in mine:
            return 0
        if mine is not None and len(mine) >= MAX_FOLLOWS:
            return wire.Code.TOO_MANY_GROUPS
        if mine is None:
            mine = self._follows[follower] = set()
        mine.add(name)
        self._followers.setdefault(name, set()).add(follower)
        return 0

    def follower_gone(self, follower: int) -> None:
        """`follower`'s connection ended: it follows nothing any more."""
        for name in self._follows.pop(follower, ()):
            keys = self._followers[name]
            keys.discard(follower)
            if not keys:
                del self._followers[name]
