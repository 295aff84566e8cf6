"""The federation's id space: which Coordinator holds each client id, and
where each broadcast is homed, in a JetStream key-value bucket
(`conec_ids`), replicated on the cluster's nodes.

Admission creates the id's key (create-if-absent), so `DuplicateId` holds
across hosts; a key whose Coordinator is dead (`Host.alive`) is taken over
with a compare-and-set on its revision. A client that leaves deletes its key
(with its revision: never someone else's), retried while NATS does not
answer. A broadcast's key names the Coordinator its members are fanned out
at, the first to open it while none alive holds it. The bucket's age limit
ends the keys of Coordinators that died for good; live ones refresh theirs
(`refresh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from .. import wire
from ..ids import stable_hash
from . import federation_core as fc
from . import ipc
from .peers import LOCAL_BITS, Peers, remote_peer

log = logging.getLogger(__name__)

#: How long an admission waits for the bucket before it is refused
#: (`Code.FEDERATION_UNAVAILABLE`), and a lookup before it says "no such peer".
ADMIT_WAIT = 2.0
#: How long a write to the bucket may take before the admission goes on
#: without it (`IdSpace._provisional`), and how long it is retried after.
CLAIM_WAIT = 0.75
CLAIM_LATER = 60.0
#: How long a read from the bucket's leader may take before a replica's
#: "no such key" is believed.
LEADER_WAIT = 0.3
_TAKE = -1  # `IdSpace._held`: the key is a dead Coordinator's
_SIBLING = -2  # ... another front-end shard's of this Coordinator
_REPLACE = -3  # ... a live other Coordinator's session of the same client
#: Key prefixes of the homes of broadcasts and of groups in the ids bucket.
BROADCAST = "b."
GROUP = "g."


class Host(Protocol):
    """What the id space needs of its `federation.Federation`."""

    cnum: int
    incarnation: int
    connected: bool
    peers: Peers | None
    members: fc.Members | None

    async def alive(self, cnum: int, incarnation: int) -> bool: ...


class IdSpace:
    """This Coordinator's side of the ids bucket."""

    def __init__(self, host: Host, bucket: Any) -> None:
        self._host = host
        self._bucket = bucket
        # nats-py reads a bucket made with `direct=True` from any replica;
        # a second handle reads from the stream's leader (nats-py keeps the
        # choice in `_direct`, which it set from the stream's config).
        self._leader = bucket
        if getattr(bucket, "_direct", False):
            self._leader = copy.copy(bucket)
            self._leader._direct = False
        self._loop = asyncio.get_running_loop()
        #: ids this Coordinator holds: id -> (connection key, revision, record)
        self._owned: dict[str, tuple[int, int, bytes]] = {}
        self._releases: dict[str, int] = {}  # ids to delete when NATS answers
        #: broadcasts homed here: bucket key -> (revision, record)
        self._homes: dict[str, tuple[int, bytes]] = {}
        #: entries of other shards of this Coordinator taken over by an
        #: admission the local directory has not decided yet: id -> record
        self._displaced: dict[str, bytes] = {}
        #: ids admitted while the bucket took no writes: id -> connection key
        self._claiming: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: called with (id, connection key) when an id admitted during a
        #: leader election turns out to be another Coordinator's
        self.lost: Callable[[str, int], None] | None = None
        #: called with the connection key of another Coordinator's session
        #: that a reconnection of its own client (same certificate) replaced
        self.replaced: Callable[[int], None] | None = None


    def _record(self, entry: ipc.Entry) -> bytes:
        host = self._host
        return msgspec.msgpack.encode(fc.IdRecord(host.cnum, host.incarnation, entry))

    async def admit(self, entry: ipc.Entry) -> int:
        """Claim `entry.client_id` federation-wide: 0, `Code.DUPLICATE_ID`
        (a live Coordinator holds it) or `Code.FEDERATION_UNAVAILABLE`."""
        try:
            return await asyncio.wait_for(self._admit(entry), ADMIT_WAIT)
        except TimeoutError:
            return wire.Code.FEDERATION_UNAVAILABLE

    async def _admit(self, entry: ipc.Entry) -> int:
        import nats

        cid = entry.client_id
        key = fc.id_key(cid)
        value = self._record(entry)
        while True:
            if not self._host.connected:
                await asyncio.sleep(0.05)
                continue
            try:
                try:
                    rev = await asyncio.wait_for(self._bucket.create(key, value), CLAIM_WAIT)
                except nats.js.errors.KeyWrongLastSequenceError:
                    code = await self._held(key, entry.cert)
                    if code is None:
                        continue
                    if code not in (_TAKE, _SIBLING, _REPLACE):
                        return code
                    # A dead Coordinator's, or another shard's of this one
                    # (the local directory decides: a stale session of the
                    # same client is replaced), or another Coordinator's
                    # session of this very client: take it over.
                    cur = await self._bucket.get(key)
                    rev = await self._bucket.update(key, value, last=cur.revision)
                    if code == _SIBLING:
                        self._displaced[cid] = cur.value
                    elif code == _REPLACE and self.replaced is not None:
                        # Its client reconnected here: that session closes,
                        # and is no departure (`ControlPlane.left`).
                        old = msgspec.msgpack.decode(cur.value, type=fc.IdRecord)
                        self.replaced(old.entry.conn_key)
                self._releases.pop(cid, None)
                self._owned[cid] = (entry.conn_key, rev, value)
                return 0
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # raced with another admission: look again
            except (TimeoutError, nats.errors.Error) as exc:
                # Connected, yet the bucket takes no writes: its nodes are
                # electing a leader (the old one died; seconds in nats-server
                # 2.9). Admit on what a replica says, and claim once it can.
                log.debug("admission of %r: %r", cid, exc)
                code = await self._provisional(entry, key, value)
                if code is not None:
                    return code
                await asyncio.sleep(0.1)

    async def _held(self, key: str, cert: bytes | None = None) -> int | None:
        """Who holds `key`: 0 (this Coordinator), `DUPLICATE_ID` (a live
        other), `_REPLACE` (a live other, for a client with certificate
        `cert`: a stale session of the client reconnecting), `_TAKE` (a dead
        one), None (nobody now)."""
        import nats

        try:
            cur = await self._get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        rec = msgspec.msgpack.decode(cur.value, type=fc.IdRecord)
        if (rec.cnum, rec.incarnation) == (self._host.cnum, self._host.incarnation):
            # Ours: the local directory decides (`repoint` follows a
            # same-certificate replacement).
            return 0
        assert self._host.peers is not None
        if self._host.peers.is_sibling(rec.cnum):
            return _SIBLING
        if await self._host.alive(rec.cnum, rec.incarnation):
            return _REPLACE if cert is not None and rec.entry.cert == cert \
                else wire.Code.DUPLICATE_ID
        return _TAKE

    async def _get(self, key: str) -> Any:
        """The bucket's entry of `key`, from any replica (so reads go on
        while the nodes elect a leader), or from the leader when the replica
        has none (a replica may lag a create by moments)."""
        import nats

        try:
            return await self._bucket.get(key)
        except nats.js.errors.KeyNotFoundError:
            if self._leader is self._bucket:
                raise
            try:
                return await asyncio.wait_for(self._leader.get(key), LEADER_WAIT)
            except nats.js.errors.KeyNotFoundError:
                raise
            except (TimeoutError, nats.errors.Error) as exc:
                # No leader to ask (an election): the replica's word stands.
                raise nats.js.errors.KeyNotFoundError from exc

    async def _provisional(self, entry: ipc.Entry, key: str, value: bytes) -> int | None:
        """Admit `entry` on a replica's word while the bucket elects a
        leader; `_claim_later` writes it, or closes the session if another
        Coordinator's admission won meanwhile. None: no replica answered."""
        import nats

        try:
            code = await asyncio.wait_for(self._held(key), CLAIM_WAIT)
        except (TimeoutError, nats.errors.Error) as exc:
            log.debug("no replica says who holds %r: %r", entry.client_id, exc)
            return None
        if code is None or code == _TAKE:
            self._claiming[entry.client_id] = entry.conn_key
            t = self._loop.create_task(self._claim_later(entry, key, value))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
            return 0
        return code

    async def _claim_later(self, entry: ipc.Entry, key: str, value: bytes) -> None:
        import nats

        cid = entry.client_id
        deadline = self._loop.time() + CLAIM_LATER
        while self._claiming.get(cid) == entry.conn_key and self._loop.time() < deadline:
            try:
                try:
                    rev = await asyncio.wait_for(self._bucket.create(key, value), ADMIT_WAIT)
                except nats.js.errors.KeyWrongLastSequenceError:
                    code = await self._held(key)
                    if code == wire.Code.DUPLICATE_ID:
                        del self._claiming[cid]
                        log.warning("%r was admitted elsewhere during a NATS leader "
                                    "election: closing its session here", cid)
                        if self.lost is not None:
                            self.lost(cid, entry.conn_key)
                        return
                    if code == 0 or code is None:
                        continue
                    cur = await self._bucket.get(key)
                    rev = await self._bucket.update(key, value, last=cur.revision)
                del self._claiming[cid]
                self._owned[cid] = (entry.conn_key, rev, value)
                return
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("claiming %r: %r", cid, exc)
                await asyncio.sleep(0.2)
        if self._claiming.get(cid) == entry.conn_key:
            del self._claiming[cid]  # left meanwhile, or NATS never came back

    def release(self, client_id: str, conn_key: int) -> None:
        """Client `client_id` (connection `conn_key`) left: its id is free."""
        if self._claiming.get(client_id) == conn_key:
            del self._claiming[client_id]
        displaced = self._displaced.pop(client_id, None)
        held = self._owned.get(client_id)
        if displaced is not None and held is not None and held[0] == conn_key:
            # Refused here: the other shard's client keeps its entry.
            del self._owned[client_id]
            t = self._loop.create_task(self._restore(client_id, held[1], displaced))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
            return
        held = self._owned.get(client_id)
        if held is None or held[0] != conn_key:
            return
        del self._owned[client_id]
        self._releases[client_id] = held[1]
        self._loop.create_task(self._release(client_id, held[1]))

    async def _restore(self, cid: str, rev: int, value: bytes) -> None:
        import nats

        with contextlib.suppress(TimeoutError, nats.errors.Error):
            await asyncio.wait_for(self._bucket.update(fc.id_key(cid), value, last=rev),
                                   ADMIT_WAIT)

    async def _release(self, cid: str, rev: int) -> None:
        import nats

        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError,
                                 nats.js.errors.KeyNotFoundError):
            try:
                await asyncio.wait_for(self._bucket.delete(fc.id_key(cid), last=rev), ADMIT_WAIT)
            except (TimeoutError, nats.errors.Error):
                return  # `_refreshing` tries again
        if self._releases.get(cid) == rev:
            del self._releases[cid]

    def repoint(self, entry: ipc.Entry) -> None:
        """The local directory gave `entry.client_id` to connection
        `entry.conn_key` (a new one of its own client replaced a stale
        session): the federation's entry follows."""
        self._displaced.pop(entry.client_id, None)
        held = self._owned.get(entry.client_id)
        if held is not None and held[0] != entry.conn_key:
            value = self._record(entry)
            self._owned[entry.client_id] = (entry.conn_key, held[1], value)
            self._loop.create_task(self._repoint(entry.client_id, held[1], value))

    async def _repoint(self, cid: str, rev: int, value: bytes) -> None:
        import nats

        try:
            rev = await asyncio.wait_for(self._bucket.update(fc.id_key(cid), value, last=rev),
                                         ADMIT_WAIT)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("could not move the federation's entry of %r: %r", cid, exc)
            return
        held = self._owned.get(cid)
        if held is not None and held[2] is value:
            self._owned[cid] = (held[0], rev, value)

    async def lookup(self, client_id: str) -> ipc.Entry | None:
        """Where a client of another Coordinator is, or None."""
        try:
            return await asyncio.wait_for(self._lookup(client_id), ADMIT_WAIT)
        except TimeoutError:
            return None

    async def _lookup(self, client_id: str) -> ipc.Entry | None:
        import nats

        if not self._host.connected:
            return None
        try:
            cur = await self._get(fc.id_key(client_id))
        except nats.errors.Error:
            return None
        rec = msgspec.msgpack.decode(cur.value, type=fc.IdRecord)
        if rec.cnum == self._host.cnum or not await self._host.alive(rec.cnum, rec.incarnation):
            return None
        return rec.entry

    # -- broadcasts -----------------------------------------------------------------

    def group_home(self, name: str, cb: Callable[[int | None], None]) -> None:
        """Find (or become) the home of group `name` (its members, their
        loads and its followers are kept there), as `broadcast_home`."""
        self._find(GROUP, name, cb, True)

    def broadcast_home(self, name: str, cb: Callable[[int | None], None],
                       create: bool = True) -> None:
        """Find (or, with `create`, become) the home of broadcast `name`:
        every member's stream is fanned out there, so all hear one order.
        `cb` gets its peer number (this Coordinator's own shard when here),
        or None when the federation does not answer (or, without `create`,
        when no live Coordinator homes it)."""
        self._find(BROADCAST, name, cb, create)

    def _find(self, kind: str, name: str, cb: Callable[[int | None], None],
              create: bool) -> None:
        task = self._loop.create_task(self._home(kind, name, create))

        def done(t: asyncio.Task[int | None]) -> None:
            cb(None if t.cancelled() or t.exception() is not None else t.result())
        task.add_done_callback(done)

    def existing_home(self, name: str, cb: Callable[[int | None], None]) -> None:
        """Where broadcast `name` is homed, if anywhere (for its counts)."""
        self.broadcast_home(name, cb, create=False)

    async def _home(self, kind: str, name: str, create: bool) -> int | None:
        try:
            return await asyncio.wait_for(self._find_home(kind, name, create), ADMIT_WAIT)
        except TimeoutError:
            return None

    async def _find_home(self, kind: str, name: str, create: bool) -> int | None:
        import nats

        host = self._host
        assert host.peers is not None
        key = kind + fc.id_key(name)[2:]
        mine = msgspec.msgpack.encode(fc.HomeRecord(host.cnum, host.incarnation))
        while True:
            if not host.connected:
                await asyncio.sleep(0.05)
                continue
            try:
                try:
                    if not create:
                        raise nats.js.errors.KeyWrongLastSequenceError
                    rev = await self._bucket.create(key, mine)
                except nats.js.errors.KeyWrongLastSequenceError:
                    try:
                        cur = await self._bucket.get(key)
                    except nats.js.errors.KeyNotFoundError:
                        if not create:
                            return None
                        continue
                    rec = msgspec.msgpack.decode(cur.value, type=fc.HomeRecord)
                    if (rec.cnum, rec.incarnation) == (host.cnum, host.incarnation):
                        return host.peers.index
                    if host.peers.is_sibling(rec.cnum):
                        return host.peers.peer_of(rec.cnum << LOCAL_BITS)
                    if await host.alive(rec.cnum, rec.incarnation):
                        assert host.members is not None
                        count = max(1, host.members.count_of(rec.cnum))
                        return remote_peer(rec.cnum, stable_hash(name) % count)
                    if not create:
                        return None
                    rev = await self._bucket.update(key, mine, last=cur.revision)
                self._homes[key] = (rev, mine)
                return host.peers.index
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            except nats.errors.Error as exc:
                log.debug("home of broadcast %r: %r", name, exc)
                await asyncio.sleep(0.1)

    # -- upkeep ---------------------------------------------------------------------

    async def refresh(self, everything: bool) -> None:
        """Delete the keys of clients that left while NATS did not answer;
        with `everything`, also renew every key this Coordinator holds."""
        import nats

        for cid, last in list(self._releases.items()):
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError,
                                     nats.js.errors.KeyNotFoundError):
                await self._bucket.delete(fc.id_key(cid), last=last)
            self._releases.pop(cid, None)
        if not everything:
            return
        for hkey, (rev, value) in list(self._homes.items()):
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                self._homes[hkey] = (await self._bucket.update(hkey, value, last=rev), value)
        for cid, (key, rev, value) in list(self._owned.items()):
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                rev = await self._bucket.update(fc.id_key(cid), value, last=rev)
                if self._owned.get(cid, (0,))[0] == key:
                    self._owned[cid] = (key, rev, value)

    async def close(self) -> None:
        """This Coordinator leaves: its keys go (best effort, briefly)."""
        for t in list(self._tasks):
            t.cancel()
        for cid, (_key, rev, _v) in list(self._owned.items()):
            await asyncio.wait_for(self._bucket.delete(fc.id_key(cid), last=rev), 0.5)
        for hkey, (rev, _v) in list(self._homes.items()):
            await asyncio.wait_for(self._bucket.delete(hkey, last=rev), 0.5)
