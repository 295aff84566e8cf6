"""The federation's decisions, without I/O: who is alive, and whether the
payload links between Coordinators lost anything.

Every Coordinator publishes a `Heartbeat` each `HEARTBEAT` seconds; one not
heard from for `DEAD_AFTER` is dead (its ids are free, its streams end), one
that says `leaving` is gone at once. Its `incarnation` changes when it
restarts (the old one is dead), its `epoch` when it lost its connection to
NATS (what it sent or was sent may be lost: every stream shared with it
ends, but it stays a member).

Payload between Coordinators rides core NATS, which may drop messages when a
connection breaks. Each batch on a link (sender shard -> receiver) carries
(incarnation, epoch, seq); a receiver that sees a gap, or a batch of an
epoch or incarnation it was not following, ends every stream it shares with
the sender before it delivers the batch (`Cut`), and bumps its own epoch so
the sender ends its side too. So streams between hosts continue or end with
a reset, never with silent loss, duplication or reorder.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

import msgspec

from . import ipc

#: Seconds between a Coordinator's heartbeats.
HEARTBEAT = 1.0
#: A Coordinator not heard from for this long is dead.
DEAD_AFTER = 3.0


class Heartbeat(msgspec.Struct, array_like=True, frozen=True):
    """What a Coordinator says of itself on the heartbeat subject."""

    cnum: int
    incarnation: int
    name: str
    count: int  # its front-end shards
    epoch: int
    leaving: bool = False


class CoordRecord(msgspec.Struct, array_like=True, frozen=True):
    """The value of a Coordinator number's key in the coordinators bucket."""

    name: str
    incarnation: int
    count: int
    #: its epoch when it wrote this (refreshed each `HEARTBEAT`), so that a
    #: member learnt from the bucket is not cut by its first heartbeat
    epoch: int = 0


class IdRecord(msgspec.Struct, array_like=True, frozen=True):
    """The value of a client id's key in the ids bucket: which Coordinator
    (number, incarnation) holds it, and its directory entry there."""

    cnum: int
    incarnation: int
    entry: ipc.Entry


class HomeRecord(msgspec.Struct, array_like=True, frozen=True):
    """The value of a broadcast's key in the ids bucket: the Coordinator
    its members' streams are fanned out at."""

    cnum: int
    incarnation: int


def id_key(client_id: str) -> str:
    """The ids bucket's key of `client_id` (KV keys allow fewer characters
    than ids: base64url of its UTF-8, unpadded)."""
    return "i." + base64.urlsafe_b64encode(client_id.encode()).rstrip(b"=").decode()


def coord_key(cnum: int) -> str:
    return f"c{cnum}"


# -- batches on the payload links ----------------------------------------------------

_HEAD = struct.Struct("!HHHQQQ")  # sender cnum, shard, shard count, incarnation, epoch, seq
HEAD_SIZE = _HEAD.size


class BadBatch(ValueError):
    """A payload message too short to carry a batch header."""


def pack_head(cnum: int, shard: int, count: int, incarnation: int, epoch: int,
              seq: int) -> bytes:
    return _HEAD.pack(cnum, shard, count, incarnation, epoch, seq)


def unpack_head(data: bytes) -> tuple[int, int, int, int, int, int]:
    if len(data) < HEAD_SIZE:
        raise BadBatch(f"a batch of {len(data)} bytes has no header")
    cnum, shard, count, inc, epoch, seq = _HEAD.unpack_from(data)
    return cnum, shard, count, inc, epoch, seq


# -- members -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    """Coordinator `cnum` (with `count` shards) is a member now."""

    cnum: int
    count: int


@dataclass(frozen=True, slots=True)
class Died:
    """Coordinator `cnum` is gone: its ids are free, its streams end."""

    cnum: int


@dataclass(frozen=True, slots=True)
class Cut:
    """End every stream shared with Coordinator `cnum` (it stays a member)."""

    cnum: int


Event = Joined | Died | Cut


@dataclass(slots=True)
class _Member:
    incarnation: int
    count: int
    epoch: int
    heard: float
    name: str


class Members:
    """The other Coordinators of the federation, as their heartbeats and
    batches tell, and what each link from them has delivered."""

    def __init__(self, cnum: int, incarnation: int, dead_after: float = DEAD_AFTER) -> None:
        self.cnum = cnum
        self.incarnation = incarnation
        self.dead_after = dead_after
        #: this Coordinator's epoch: bumped when it may have lost payload
        self.epoch = 0
        self._members: dict[int, _Member] = {}
        self._dead: dict[int, int] = {}  # cnum -> incarnation, of members that died
        # per (sender cnum, sender shard): (incarnation, epoch, next seq)
        # A sender numbers its batches to each peer from 0 in each of its
        # epochs, and again for a receiver's new incarnation.
        self._links: dict[tuple[int, int], tuple[int, int, int]] = {}

    def alive(self, cnum: int, incarnation: int | None = None) -> bool:
        m = self._members.get(cnum)
        return m is not None and (incarnation is None or m.incarnation == incarnation)

    def verdict(self, cnum: int, incarnation: int) -> bool | None:
        """Whether Coordinator (`cnum`, `incarnation`) is alive: True, False
        (it died while this one watched), or None (never heard of)."""
        m = self._members.get(cnum)
        if m is not None and m.incarnation == incarnation:
            return True
        if self._dead.get(cnum) == incarnation:
            return False
        return None

    def count_of(self, cnum: int) -> int:
        m = self._members.get(cnum)
        return m.count if m is not None else 0

    def names(self) -> dict[int, str]:
        return {c: m.name for c, m in self._members.items()}

    def heard(self, hb: Heartbeat, now: float) -> list[Event]:
        """A heartbeat arrived."""
        if hb.cnum == self.cnum:
            return []
        m = self._members.get(hb.cnum)
        if hb.leaving:
            if m is None or m.incarnation != hb.incarnation:
                return []
            return self._drop(hb.cnum)
        if m is not None and m.incarnation == hb.incarnation:
            m.heard = now
            if not m.name:
                m.name = hb.name
            if hb.epoch != m.epoch:
                # A new epoch there: it may have lost what we sent it.
                m.epoch = hb.epoch
                return [Cut(hb.cnum)]
            return []
        out: list[Event] = self._drop(hb.cnum) if m is not None else []
        self._members[hb.cnum] = _Member(hb.incarnation, hb.count, hb.epoch, now, hb.name)
        out.append(Joined(hb.cnum, hb.count))
        return out

    def known(self, cnum: int, incarnation: int, count: int, name: str,
              now: float, epoch: int = -1) -> list[Event]:
        """The coordinators bucket says `cnum` is alive (before any heartbeat
        of it arrived here): a member, until its heartbeats stop."""
        if cnum == self.cnum or self.alive(cnum, incarnation):
            return []
        out: list[Event] = self._drop(cnum) if cnum in self._members else []
        self._members[cnum] = _Member(incarnation, count, epoch, now, name)
        out.append(Joined(cnum, count))
        return out

    def expire(self, now: float) -> list[Event]:
        """Members not heard from for `dead_after` are dead."""
        out: list[Event] = []
        for cnum in [c for c, m in self._members.items() if now - m.heard > self.dead_after]:
            out.extend(self._drop(cnum))
        return out

    def _drop(self, cnum: int) -> list[Event]:
        self._dead[cnum] = self._members.pop(cnum).incarnation
        for link in [k for k in self._links if k[0] == cnum]:
            del self._links[link]
        return [Died(cnum)]

    def lost_connection(self) -> list[Event]:
        """This Coordinator's own link to NATS broke: what it sent or was
        sent may be lost. A new epoch (its links start numbering again), and
        every stream between hosts ends."""
        self.epoch += 1
        return [Cut(c) for c in self._members]

    def batch(self, cnum: int, shard: int, count: int, incarnation: int, epoch: int,
              seq: int, now: float) -> tuple[bool, list[Event]]:
        """A batch arrived from shard `shard` (of `count`) of Coordinator
        `cnum`: whether to deliver it, and what to do first."""
        if cnum == self.cnum:
            return False, []
        out: list[Event] = []
        m = self._members.get(cnum)
        if m is None or m.incarnation != incarnation:
            # Its heartbeat is still on the way: a member from now on.
            if m is not None:
                out.extend(self._drop(cnum))
            m = self._members[cnum] = _Member(incarnation, count, epoch, now, "")
            out.append(Joined(cnum, count))
        link = (cnum, shard)
        was = self._links.get(link)
        self._links[link] = (incarnation, epoch, seq + 1)
        if was == (incarnation, epoch, seq) or (was is None and seq == 0):
            return True, out
        if was is not None and epoch != was[1] and seq == 0:
            # The sender started a new epoch: it has cut its side; so do we
            # (once: its heartbeat saying so may come later).
            if m.epoch != epoch:
                m.epoch = epoch
                out.append(Cut(cnum))
            return True, out
        # A gap: something was lost. Cut, and make the sender cut its side
        # too: a new epoch here, which every member hears.
        m.epoch = epoch
        self.epoch += 1
        out.append(Cut(cnum))
        return True, out
