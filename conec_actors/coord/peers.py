"""Where a connection lives: which shard of which Coordinator.

Connection keys and offer ids are unique among the shards of one
Coordinator (`key % n` is the shard) and, in a federation, among its
Coordinators: the bits above `LOCAL_BITS` hold the Coordinator's number in
the federation (0 outside one), claimed when it joins (`federation`).

A *peer* is what the links between front-ends address (`Links.send`): a
shard of this Coordinator is its index, 0 to n - 1; shard k of Coordinator
number c is `REMOTE + c * MAX_SHARDS + k`. So the cross-shard code
(`tunnel`, `shard_control`) carries streams and control messages to another
host exactly as to another shard, and only the links differ.
"""

from __future__ import annotations

#: A key's bits below this are its Coordinator's own; above, its number.
LOCAL_BITS = 48
LOCAL_MASK = (1 << LOCAL_BITS) - 1
#: Coordinator numbers a federation hands out: 1 to this (0 is "none").
MAX_COORDINATORS = (1 << 15) - 1
#: Shards a Coordinator may have, as peers count them.
MAX_SHARDS = 256
#: Peer numbers from here on name another Coordinator's shards.
REMOTE = 1 << 16


def remote_peer(cnum: int, shard: int) -> int:
    """The peer number of shard `shard` of Coordinator `cnum`."""
    return REMOTE + cnum * MAX_SHARDS + shard


def split_peer(peer: int) -> tuple[int, int]:
    """(Coordinator number, shard) of a remote peer number."""
    return divmod(peer - REMOTE, MAX_SHARDS)


class Peers:
    """This front-end's view of where keys live: shard `index` of `count`
    of Coordinator `cnum`, and the shard counts of the other Coordinators
    it knows (`add_coordinator`)."""

    __slots__ = ("_remote", "_siblings", "base", "cnum", "count", "index")

    def __init__(self, index: int, count: int, cnum: int = 0) -> None:
        if not 0 <= index < count <= MAX_SHARDS:
            raise ValueError(f"shard {index} of {count}: at most {MAX_SHARDS} shards")
        if not 0 <= cnum <= MAX_COORDINATORS:
            raise ValueError(f"Coordinator number {cnum} out of range")
        self.index = index
        self.count = count
        self.cnum = cnum
        #: what every key and offer id of this Coordinator starts from
        self.base = cnum << LOCAL_BITS
        self._remote: dict[int, int] = {}  # Coordinator number -> its shard count
        # With front-end shards in a federation, each shard is a member of
        # its own; its siblings' numbers name shards of this Coordinator.
        self._siblings: dict[int, int] = {}  # member number -> shard index

    def peer_of(self, key: int) -> int:
        """The peer holding connection `key` (or offer id `key`)."""
        c = key >> LOCAL_BITS
        if c == self.cnum:
            return (key & LOCAL_MASK) % self.count
        sibling = self._siblings.get(c)
        if sibling is not None:
            return sibling
        return remote_peer(c, (key & LOCAL_MASK) % self._remote.get(c, 1))

    def is_local(self, key: int) -> bool:
        """Whether connection `key` is this front-end's own."""
        return key >> LOCAL_BITS == self.cnum and (key & LOCAL_MASK) % self.count == self.index

    def is_remote(self, peer: int) -> bool:
        """Whether `peer` is on another Coordinator."""
        return peer >= REMOTE

    def set_sibling(self, cnum: int, index: int) -> None:
        """Shard `index` of this Coordinator is federation member `cnum`."""
        if not 0 <= index < self.count or index == self.index:
            raise ValueError(f"not another shard of this Coordinator: {index}")
        for c, k in list(self._siblings.items()):
            if k == index:
                del self._siblings[c]
        self._siblings[cnum] = index
        self._remote.pop(cnum, None)

    def is_sibling(self, cnum: int) -> bool:
        """Whether member `cnum` is another shard of this Coordinator."""
        return cnum in self._siblings

    def add_coordinator(self, cnum: int, count: int) -> None:
        """Coordinator `cnum` (with `count` shards) joined the federation
        (a sibling shard is reached as a shard, not as a Coordinator)."""
        if cnum == self.cnum or not 1 <= cnum <= MAX_COORDINATORS:
            raise ValueError(f"not another Coordinator's number: {cnum}")
        if not 1 <= count <= MAX_SHARDS:
            raise ValueError(f"a Coordinator with {count} shards")
        if cnum not in self._siblings:
            self._remote[cnum] = count

    def drop_coordinator(self, cnum: int) -> list[int]:
        """Coordinator `cnum` is gone: the peer numbers it had."""
        count = self._remote.pop(cnum, 0)
        return [remote_peer(cnum, k) for k in range(count)]

    def coordinators(self) -> dict[int, int]:
        """The other Coordinators known: number -> shard count."""
        return dict(self._remote)

    def others(self) -> list[int]:
        """Every other peer: this Coordinator's other shards, then every
        shard of every other Coordinator known."""
        out = [k for k in range(self.count) if k != self.index]
        for c, n in self._remote.items():
            out.extend(remote_peer(c, k) for k in range(n))
        return out
