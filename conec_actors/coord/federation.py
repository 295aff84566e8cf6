"""Coordinators on several hosts as one federation, over a NATS cluster
(`CoordConfig(cluster=..., name=...)`; nats-py, the `cluster` extra).

- **One id space**: a JetStream key-value bucket (`conec_ids`, replicated on
  three nodes when the cluster has them) maps each client id to the
  Coordinator holding it (`IdRecord`). Admission is create-if-absent, so
  `DuplicateId` holds across hosts; an entry whose Coordinator is dead
  (`federation_core.Members`, or its record gone from `conec_coords`) is
  taken over with a compare-and-set. Entries also lapse with the bucket's
  age limit unless their Coordinator refreshes them.
- **Coordinator numbers**: each Coordinator claims a number (create-if-absent
  in `conec_coords`, refreshed each second, lapsing in `COORD_TTL`); its
  connection keys carry it (`peers`), so a key names its host and shard.
- **Payload** between Coordinators: `tunnel` and `shard_control` messages to
  a remote peer are batched per loop turn onto the subject of that
  Coordinator's shard (`conec.d.CNUM.SHARD`), numbered per link so that a
  loss ends the streams concerned (`federation_core`). Flow control is the
  streams' own credit, end to end: NATS never holds more than the streams'
  windows for us, so it has no reason to call us a slow consumer.
- **Liveness**: heartbeats on `conec.hb` each second; a Coordinator silent
  for 3 s is dead: its ids are free, streams with its clients end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import FederationError
from . import federation_core as fc
from . import nats_fast
from . import shard_wire as sw
from .federation_ids import IdSpace
from .peers import MAX_COORDINATORS, Peers, remote_peer, split_peer

if TYPE_CHECKING:
    from .shard_control import CrossShard
    from .tunnel import Tunnels

log = logging.getLogger(__name__)

IDS_BUCKET = "conec_ids"
COORDS_BUCKET = "conec_coords"
HEARTBEATS = "conec.hb"
#: Seconds an id entry lives unless its Coordinator refreshes it (it does,
#: every `IDS_REFRESH`): only entries of dead Coordinators lapse.
IDS_TTL = 3600.0
IDS_REFRESH = 900.0
#: Seconds a Coordinator's number stays claimed without a refresh.
COORD_TTL = 10.0
#: How long `start` waits for a first connection to the cluster.
CONNECT_WAIT = 5.0
#: A batch is split so that no NATS message exceeds this (servers default to 1 MiB).
MAX_BATCH = 256 * 1024
#: How long a credit or drain report may wait for a batch to ride with.
LAZY_DELAY = 0.005
_LAZY = frozenset((sw.Consumed, sw.Drained))


def payload_subject(cnum: int, shard: int) -> str:
    return f"conec.d.{cnum}.{shard}"


class Federation:
    """This Coordinator's membership of a federation."""

    def __init__(self, servers: list[str], name: str, *, count: int = 1,
                 tls: ssl.SSLContext | None = None, creds: str | None = None,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.servers = servers
        self.name = name
        self.count = count
        #: this member's place among its Coordinator's front-end shards: with
        #: `frontends=N` each shard is a member of its own (`count` 1), and
        #: its connection keys are still shard `shard[0]` of `shard[1]`'s
        self.shard = shard
        self._tls = tls
        self._creds = creds
        self.incarnation = secrets.randbits(62)
        self.cnum = 0
        self.peers: Peers | None = None
        self.members: fc.Members | None = None
        self.tunnels: Tunnels | None = None
        self.cross: CrossShard | None = None
        self._loop = asyncio.get_running_loop()
        self._nc: Any = None
        self._coords: Any = None
        self._coord_rev = 0
        self._out: dict[int, list[sw.ShardMsg]] = {}
        self._seq: dict[int, int] = {}  # per remote peer: the next batch number
        self._epoch = 0  # the epoch `_seq` counts in
        self._flush_handle: asyncio.Handle | None = None
        #: credit and drain reports waiting (`send`), per peer, latest per stream
        self._lazy: dict[int, dict[tuple[type, int, int], sw.ShardMsg]] = {}
        self._lazy_handle: asyncio.TimerHandle | None = None
        self._publish: deque[tuple[str, bytes]] = deque()
        self._publisher: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: the id space (`federation_ids`), once joined
        self.ids: IdSpace | None = None
        self._closed = False
        self.connected = False
        self.cuts = 0  # times streams with another Coordinator were ended
        self.batches_sent = 0
        self.batches_received = 0

    # -- joining ------------------------------------------------------------------------

    async def start(self) -> None:
        import nats
        from nats.js.api import KeyValueConfig

        opts: dict[str, Any] = {
            "servers": self.servers, "name": f"conec-coord-{self.name}",
            "allow_reconnect": True, "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25, "connect_timeout": 2,
            "disconnected_cb": self._disconnected, "reconnected_cb": self._reconnected,
            "error_cb": self._error, "ping_interval": 5, "max_outstanding_pings": 3,
        }
        if self._tls is not None:
            opts["tls"] = self._tls
        if self._creds is not None:
            opts["user_credentials"] = self._creds
        try:
            self._nc = await asyncio.wait_for(nats.connect(**opts), CONNECT_WAIT)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise FederationError(f"no NATS server of {','.join(self.servers)} "
                                  f"answered: {exc!r}") from exc
        self.connected = True
        js = self._nc.jetstream()
        try:
            self.ids = IdSpace(self, await self._bucket(js, KeyValueConfig, IDS_BUCKET,
                                                        IDS_TTL))
            self._coords = await self._bucket(js, KeyValueConfig, COORDS_BUCKET, COORD_TTL)
            await self._claim_number()
        except BaseException:
            await self._nc.close()
            raise
        self.peers = Peers(self.shard[0], self.shard[1], self.cnum)
        self.members = fc.Members(self.cnum, self.incarnation)
        await self._nc.subscribe(HEARTBEATS, cb=self._on_heartbeat)
        for shard in range(self.count):
            sub = await self._nc.subscribe(payload_subject(self.cnum, shard))
            nats_fast.Inline.install(sub, self._payload)
        await self._beat()
        self._tasks = [self._loop.create_task(self._beating()),
                       self._loop.create_task(self._refreshing())]
        log.info("joined the federation as %r (number %d) over %s", self.name, self.cnum,
                 ",".join(self.servers))

    async def _bucket(self, js: Any, config: Any, name: str, ttl: float) -> Any:
        """Bind to bucket `name`, making it if needed: replicated on 3 nodes
        (on 1 when the cluster has fewer)."""
        import nats

        try:
            return await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            pass
        last: Exception | None = None
        for replicas in (3, 1):
            try:
                return await js.create_key_value(config(bucket=name, history=1, ttl=ttl,
                                                        replicas=replicas, direct=True))
            except nats.js.errors.APIError as exc:
                last = exc
                try:  # another Coordinator made it meanwhile
                    return await js.key_value(name)
                except nats.js.errors.BucketNotFoundError:
                    continue
        raise FederationError(f"cannot make the bucket {name}: {last}")

    async def _claim_number(self) -> None:
        import nats

        value = msgspec.msgpack.encode(fc.CoordRecord(self.name, self.incarnation, self.count))
        deadline = self._loop.time() + CONNECT_WAIT * 2
        taken = 0
        while taken < 64:
            cnum = secrets.randbelow(MAX_COORDINATORS) + 1
            try:
                self._coord_rev = await self._coords.create(fc.coord_key(cnum), value)
            except nats.js.errors.KeyWrongLastSequenceError:
                taken += 1
                continue
            except (TimeoutError, nats.errors.Error) as exc:
                # A bucket just made (by another Coordinator or shard at the
                # same moment) has no leader yet, or one is being elected.
                if self._loop.time() > deadline:
                    raise FederationError(f"the bucket {COORDS_BUCKET} takes no writes: "
                                          f"{exc!r}") from exc
                await asyncio.sleep(0.2)
                continue
            self.cnum = cnum
            return
        raise FederationError("no free Coordinator number in the federation")

    def attach(self, tunnels: Tunnels, cross: CrossShard) -> None:
        """Carry `tunnels`' and `cross`' messages to other Coordinators."""
        self.tunnels = tunnels
        self.cross = cross

    def figures(self) -> dict[str, Any]:
        """This member's name and number, whether NATS is connected, the
        other members it knows, and its links' figures."""
        members = self.members.names() if self.members is not None else {}
        return {"name": self.name, "number": self.cnum, "connected": self.connected,
                "members": len(members), "epoch": self.members.epoch if self.members else 0,
                "cuts": self.cuts, "batches_sent": self.batches_sent,
                "batches_received": self.batches_received}

    # -- liveness -----------------------------------------------------------------------

    def _heartbeat(self, leaving: bool = False) -> bytes:
        assert self.members is not None
        return msgspec.msgpack.encode(fc.Heartbeat(self.cnum, self.incarnation, self.name,
                                                   self.count, self.members.epoch, leaving))

    async def _beat(self) -> None:
        if self.connected:
            with contextlib.suppress(Exception):
                await self._nc.publish(HEARTBEATS, self._heartbeat())

    async def _beating(self) -> None:
        assert self.members is not None
        while True:
            await asyncio.sleep(fc.HEARTBEAT / 2)
            self._apply(self.members.expire(self._loop.time()))
            await self._beat()

    async def _refreshing(self) -> None:
        """Keep this Coordinator's number claimed, its ids' entries alive,
        and delete the entries of clients that left while NATS did not answer."""
        import nats

        ids_at = self._loop.time()
        while True:
            await asyncio.sleep(fc.HEARTBEAT)
            assert self.members is not None
            record = msgspec.msgpack.encode(fc.CoordRecord(
                self.name, self.incarnation, self.count, self.members.epoch))
            try:
                try:
                    self._coord_rev = await self._coords.update(
                        fc.coord_key(self.cnum), record, last=self._coord_rev)
                except (nats.js.errors.KeyWrongLastSequenceError,
                        nats.js.errors.KeyNotFoundError):
                    # Lapsed while NATS was away: claim it again.
                    self._coord_rev = await self._coords.create(fc.coord_key(self.cnum),
                                                                record)
                due = self._loop.time() - ids_at > IDS_REFRESH
                if due:
                    ids_at = self._loop.time()
                assert self.ids is not None
                await self.ids.refresh(due)
            except nats.js.errors.KeyWrongLastSequenceError:
                log.error("Coordinator number %d was claimed by another Coordinator while "
                          "NATS was unreachable", self.cnum)
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("federation refresh failed: %r", exc)

    async def _on_heartbeat(self, msg: Any) -> None:
        assert self.members is not None
        try:
            hb = msgspec.msgpack.decode(msg.data, type=fc.Heartbeat)
        except msgspec.DecodeError:
            return
        self._apply(self.members.heard(hb, self._loop.time()))

    def _apply(self, events: list[fc.Event]) -> None:
        assert self.peers is not None
        for ev in events:
            if isinstance(ev, fc.Joined):
                self.peers.add_coordinator(ev.cnum, ev.count)
                for k in range(ev.count):
                    self._seq[remote_peer(ev.cnum, k)] = 0
                log.info("Coordinator number %d joined the federation", ev.cnum)
            elif isinstance(ev, fc.Died):
                dropped = self.peers.drop_coordinator(ev.cnum)
                for p in dropped:
                    self._seq.pop(p, None)
                    self._out.pop(p, None)
                self._cut(dropped, down=True)
                if self.cross is not None:
                    self.cross.coordinator_down(dropped)
                log.warning("Coordinator number %d left the federation or died", ev.cnum)
            elif isinstance(ev, fc.Cut):
                count = self.peers.coordinators().get(ev.cnum, 0)
                self._cut([remote_peer(ev.cnum, k) for k in range(count)])

    def _cut(self, peers: list[int], down: bool = False) -> None:
        if self.tunnels is not None and peers:
            self.cuts += 1
            for p in peers:
                self.tunnels.shard_down(p)
        if self.cross is not None and peers and not down:
            self.cross.links_cut(peers)

    def _lost(self) -> None:
        """Our connection to NATS broke (or came back): anything between may
        be lost. Streams between hosts end; links number from 0 again."""
        if self.members is None:
            return
        self._apply(self.members.lost_connection())
        self._out.clear()
        self._lazy.clear()
        self._publish.clear()

    async def _disconnected(self) -> None:
        self.connected = False
        if not self._closed:
            log.warning("lost the connection to NATS; streams to other hosts end")
            self._lost()

    async def _reconnected(self) -> None:
        self.connected = True
        url = getattr(self._nc, "connected_url", None)
        log.info("reconnected to NATS at %s", getattr(url, "netloc", url))
        self._lost()
        await self._beat()

    async def _error(self, exc: Exception) -> None:
        log.debug("NATS: %r", exc)

    # -- payload --------------------------------------------------------------------------

    def send(self, peer: int, msg: sw.ShardMsg) -> None:
        """Queue `msg` for remote peer `peer` (sent at the end of this turn;
        credit reports, `_LAZY`, may wait up to `LAZY_DELAY`)."""
        if type(msg) in _LAZY:
            if peer not in self._seq:
                return
            # Credit and drain reports carry absolute offsets: the latest of
            # a stream's says all. They wait for the next batch to `peer`
            # (and go first in it, so nothing sent after them overtakes
            # them) or `LAZY_DELAY`: fewer messages between hosts, and none
            # waking both Coordinators while an ask's answer is on its way.
            lazy = self._lazy.get(peer)
            if lazy is None:
                lazy = self._lazy[peer] = {}
            lazy[type(msg), msg.conn, msg.stream] = msg  # type: ignore[union-attr]
            if self._lazy_handle is None:
                self._lazy_handle = self._loop.call_later(LAZY_DELAY, self._flush_lazy)
            return
        out = self._out.get(peer)
        if out is None:
            if peer not in self._seq:
                return  # not (or no longer) a member: its streams were cut
            out = self._out[peer] = []
        out.append(msg)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush_lazy(self) -> None:
        self._lazy_handle = None
        for peer in self._lazy:
            self._out.setdefault(peer, [])
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()

    def _flush(self) -> None:
        self._flush_handle = None
        assert self.members is not None
        outs, self._out = self._out, {}
        if not self.connected:
            return  # the streams were cut when the connection broke
        if self.members.epoch != self._epoch:
            # A new epoch here (lost connection, or a gap seen): every link
            # numbers from 0 again, which tells its receiver so.
            self._epoch = self.members.epoch
            for p in self._seq:
                self._seq[p] = 0
        for peer, msgs in outs.items():
            seq = self._seq.get(peer)
            if seq is None:
                continue
            lazy = self._lazy.pop(peer, None)
            if lazy:
                msgs = [*lazy.values(), *msgs]
            if not msgs:
                continue
            cnum, shard = split_peer(peer)
            subject = payload_subject(cnum, shard)
            for chunk in _chunks(msgs):
                head = fc.pack_head(self.cnum, 0, self.count, self.incarnation,
                                    self.members.epoch, seq)
                seq += 1
                self._publish.append((subject, head + sw.encode(chunk)))
            self._seq[peer] = seq
        # Most batches go out now, in this turn (see `_publish_now`).
        while self._publish and self._publisher is None and \
                self._publish_now(*self._publish[0]):
            self._publish.popleft()
        if self._publish and self._publisher is None:
            self._publisher = self._loop.create_task(self._publishing())

    def _publish_now(self, subject: str, data: bytes) -> bool:
        """Write a batch at once (`nats_fast.write_now`): False when it must
        go through nats-py's `publish` (`_publishing`)."""
        if nats_fast.write_now(self._nc, subject, data):
            self.batches_sent += 1
            return True
        return False

    async def _publishing(self) -> None:
        try:
            while self._publish:
                subject, data = self._publish.popleft()
                try:
                    await self._nc.publish(subject, data)
                    self.batches_sent += 1
                except Exception as exc:
                    # Lost: if no later batch shows the gap, a new epoch
                    # does (and the streams it may have carried end here).
                    log.warning("a batch to another Coordinator was lost: %r", exc)
                    self._lost()
        finally:
            self._publisher = None

    def _payload(self, msg: Any) -> None:
        members, tunnels = self.members, self.tunnels
        if members is None or tunnels is None:
            return
        data = msg.data
        try:
            cnum, shard, count, inc, epoch, seq = fc.unpack_head(data)
            msgs = sw.decode(data[fc.HEAD_SIZE:])
        except (fc.BadBatch, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("dropped a malformed batch from the federation: %s", exc)
            return
        ok, events = members.batch(cnum, shard, count, inc, epoch, seq, self._loop.time())
        self._apply(events)
        if ok:
            self.batches_received += 1
            tunnels.deliver(remote_peer(cnum, shard), msgs)

    async def alive(self, cnum: int, incarnation: int) -> bool:
        """Whether Coordinator (`cnum`, `incarnation`) is alive: as its
        heartbeats tell, else as the coordinators bucket does."""
        import nats

        assert self.members is not None
        verdict = self.members.verdict(cnum, incarnation)
        if verdict is not None:
            return verdict
        try:
            cur = await self._coords.get(fc.coord_key(cnum))
        except nats.js.errors.KeyNotFoundError:
            return False
        rec = msgspec.msgpack.decode(cur.value, type=fc.CoordRecord)
        if rec.incarnation != incarnation:
            return False
        self._apply(self.members.known(cnum, incarnation, rec.count, rec.name,
                                       self._loop.time(), rec.epoch))
        return True

    # -- leaving ----------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for handle in (self._flush_handle, self._lazy_handle):
            if handle is not None:
                handle.cancel()
        nc = self._nc
        if nc is None:
            return
        with contextlib.suppress(Exception):
            if self.connected and self.members is not None:
                await nc.publish(HEARTBEATS, self._heartbeat(leaving=True))
                if self.ids is not None:
                    await self.ids.close()
                await asyncio.wait_for(self._coords.delete(fc.coord_key(self.cnum)), 0.5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2.0)
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t


def _chunks(msgs: list[sw.ShardMsg]) -> list[list[sw.ShardMsg]]:
    """`msgs` in runs whose data stays under `MAX_BATCH` bytes."""
    out: list[list[sw.ShardMsg]] = []
    run: list[sw.ShardMsg] = []
    size = 0
    for m in msgs:
        n = len(m.data) if isinstance(m, sw.Data) else 64
        if run and size + n > MAX_BATCH:
            out.append(run)
            run, size = [], 0
        run.append(m)
        size += n
    if run:
        out.append(run)
    return out

