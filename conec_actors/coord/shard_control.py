"""The control plane between front-end shards: introductions, watches,
groups and stale sessions for clients on different shards.

Each fact stays where it was with one front-end, and messages (`shard_wire`)
reach the shard that holds the other party:

- A channel introduction lives on the opener's shard. Offer ids name that
  shard (`id % n`), so the target's shard sends the answer back to it (`Answer`).
  An offer whose target is not where the directory said comes back as `NoPeer`.
- A watch lives on the watcher's shard. The target's own shard says whether it
  is connected (`WatchAsk`/`WatchState`). Its departure (`Left`, sent to every
  shard) comes after that answer on the same ordered link, so none is missed.
- A group lives on its home shard (`stable_hash(name) % n`, as broadcasts).
  Requests (`GroupOp`) and members' load reports (`Load`) go there; replies
  and views come back as `Control`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from .. import wire
from ..ids import stable_hash
from . import ipc
from . import shard_wire as sw
from .intros import Introductions, Offer
from .peers import Peers
from .session import SessionCore, State
from .watches import Reason

Send = Callable[[int, sw.ShardMsg], None]

#: The watcher and request of a `WatchAsk` that re-checks, after lost
#: messages, whether a client of another Coordinator is still connected.
RECHECK = -1
#: The request number of a join (or follow) asked again of a group's new
#: home: no client waits for its reply.
REJOIN = -1


class Client(Protocol):
    """A session, as the control plane uses it."""

    core: SessionCore

    @property
    def client_id(self) -> str | None: ...

    def send_control(self, msg: wire.Control) -> None: ...


class Host(Protocol):
    """What the control plane needs of its shard's `FrontEnd`."""

    @property
    def sessions(self) -> Mapping[int, Client]: ...

    @property
    def by_id(self) -> Mapping[str, Client]: ...

    @property
    def intros(self) -> Introductions: ...

    def intro_failed(self, offer: Offer, code: int, reason: str) -> None: ...

    def answered(self, offer_id: int, target: int, code: int) -> None: ...

    def watch_known(self, watcher: int, req: int, peer: str, connected: bool) -> None: ...

    def group_op(self, conn: int, member: str, op: str, name: str, req: int) -> None: ...

    def load(self, member: str, asks: int, tells: int) -> None: ...

    def gone_elsewhere(self, conn: int, client_id: str, reason: Reason) -> None: ...

    def replace_stale(self, key: int) -> None: ...

    def count_here(self, name: str, cb: Callable[[int, int, int], None]) -> None: ...

    def counted(self, conn: int, req: int, code: int, senders: int, receivers: int) -> None: ...


class CrossShard:
    """One shard's side of the control plane between shards."""

    def __init__(self, host: Host, index: int, count: int, send: Send,
                 peers: Peers | None = None) -> None:
        self.host = host
        self.index = index
        self.count = count
        self._send = send
        #: where keys live; `send` addresses its peer numbers (other shards, other hosts)
        self.peers = peers if peers is not None else Peers(index, count)
        #: per local connection key: the shards homing groups it joined
        self._group_homes: dict[int, set[int]] = {}
        #: clients of other Coordinators watched or offered channels from here:
        #: id -> (connection key or -1, peer), so their Coordinator's death is
        #: their departure (`coordinator_down`)
        self._remote: dict[str, tuple[int, int]] = {}
        #: watches asked of other Coordinators, not answered yet
        self._asked: dict[tuple[int, int], tuple[str, int]] = {}
        #: broadcast counts asked of other Coordinators: (conn, req) -> peer
        self._counting: dict[tuple[int, int], int] = {}
        #: in a federation: finds (or becomes) a group's home, one per
        #: federation (`federation_ids.IdSpace.home`); None: by hash, per Coordinator
        self.find_group_home: Callable[[str, Callable[[int | None], None]], None] | None = None
        self._homes: dict[str, int] = {}  # group -> the peer homing it
        #: in a federation, per local connection: groups it joined or follows
        #: (name -> (id, op)), asked again of a new home if theirs dies
        self._joined: dict[int, dict[str, tuple[str, str]]] = {}
        #: group requests sent to another Coordinator, not answered yet
        self._group_asked: dict[tuple[int, int], tuple[int, str, wire.GroupRequest]] = {}
        self._homing: dict[str, list[Callable[[int], None]]] = {}

    def shard_of(self, key: int) -> int:
        return self.peers.peer_of(key)

    def home_of_group(self, name: str) -> int:
        return stable_hash(name) % self.count

    def is_local(self, key: int) -> bool:
        return self.peers.is_local(key)

    # -- outgoing ----------------------------------------------------------------------

    def control(self, conn: int, msg: wire.Control) -> None:
        """Send `msg` to connection `conn` of another shard."""
        self._send(self.peers.peer_of(conn), sw.Control(conn, wire.encode(msg)))

    def offer(self, entry: ipc.Entry, offer_id: int, msg: wire.ChannelOffer) -> None:
        peer = self.peers.peer_of(entry.conn_key)
        if self.peers.is_remote(peer):
            self._remote[entry.client_id] = (entry.conn_key, peer)
        self._send(peer,
                   sw.Offer(entry.conn_key, entry.client_id, offer_id, wire.encode(msg)))

    def answer(self, offer_id: int, target: int, code: int) -> None:
        self._send(self.peers.peer_of(offer_id), sw.Answer(offer_id, target, code))

    def watch_ask(self, shard: int, watcher: int, req: int, peer: str) -> None:
        if self.peers.is_remote(shard):
            self._remote.setdefault(peer, (-1, shard))
            self._asked[watcher, req] = (peer, shard)
        self._send(shard, sw.WatchAsk(watcher, req, peer))

    def count_ask(self, peer: int, conn: int, req: int, name: str) -> None:
        """Ask peer `peer` (a broadcast's home) for its member counts."""
        self._counting[conn, req] = peer
        self._send(peer, sw.CountAsk(conn, req, name))

    def group_op(self, conn: int, member: str, msg: wire.GroupRequest) -> bool:
        """Send a group request to its group's home shard: False if that is here."""
        if self.find_group_home is not None:
            if msg.op in ("join", "follow"):
                self._joined.setdefault(conn, {})[msg.name] = (member, msg.op)
            elif msg.op == "leave" and msg.name in self._joined.get(conn, {}):
                del self._joined[conn][msg.name]
            self._at_home(msg.name, lambda home: self._group_op_at(home, conn, member, msg))
            return True
        home = self.home_of_group(msg.name)
        if home == self.index:
            return False
        self._group_op_at(home, conn, member, msg)
        return True

    def _group_op_at(self, home: int, conn: int, member: str, msg: wire.GroupRequest) -> None:
        if home == self.index:
            self.host.group_op(conn, member, msg.op, msg.name, msg.req)
            return
        if msg.op == "join":
            self._group_homes.setdefault(conn, set()).add(home)
        if self.find_group_home is not None and msg.req != REJOIN:
            self._group_asked[conn, msg.req] = (home, member, msg)
        self._send(home, sw.GroupOp(conn, member, msg.op, msg.name, msg.req))

    def _at_home(self, name: str, then: Callable[[int], None]) -> None:
        """Call `then` with the peer homing group `name` (in a federation,
        found once in the id space, `find_group_home`), requests of one
        group in the order they came."""
        home = self._homes.get(name)
        if home is not None:
            then(home)
            return
        waiting = self._homing.get(name)
        if waiting is not None:
            waiting.append(then)
            return
        self._homing[name] = [then]

        def found(peer: int | None) -> None:
            # No answer from the federation: the group is this shard's own.
            home = self.index if peer is None else peer
            if peer is not None:
                self._homes[name] = home
            for f in self._homing.pop(name, []):
                f(home)

        assert self.find_group_home is not None
        self.find_group_home(name, found)

    def load(self, conn: int, member: str, msg: wire.LoadReport) -> None:
        for home in self._group_homes.get(conn, ()):
            self._send(home, sw.Load(member, msg.asks, msg.tells))

    def left(self, conn: int, client_id: str | None, reason: Reason) -> None:
        """A client of this shard left: every other shard hears of it."""
        self._group_homes.pop(conn, None)
        self._joined.pop(conn, None)
        for key in [k for k in self._group_asked if k[0] == conn]:
            del self._group_asked[key]
        if client_id is None:
            return
        for k in self.peers.others():
            self._send(k, sw.Left(conn, client_id, reason))

    def replace(self, conn: int) -> None:
        self._send(self.peers.peer_of(conn), sw.Replace(conn))

    # -- incoming ----------------------------------------------------------------------

    def deliver(self, shard: int, msg: sw.ControlMsg) -> None:
        host = self.host
        if isinstance(msg, sw.Control):
            s = host.sessions.get(msg.conn)
            if s is not None:
                control = wire.decode(msg.msg)
                if isinstance(control, wire.GroupReply) and self._group_asked:
                    self._group_asked.pop((msg.conn, control.req), None)
                s.send_control(control)
        elif isinstance(msg, sw.Offer):
            s = host.sessions.get(msg.conn)
            if s is None or s.core.state is not State.READY or s.client_id != msg.client_id:
                self._send(shard, sw.NoPeer(msg.offer))
            else:
                s.send_control(wire.decode(msg.msg))
        elif isinstance(msg, sw.NoPeer):
            offer = host.intros.cancel(msg.offer)
            if offer is not None:
                host.intro_failed(offer, wire.Code.NO_SUCH_PEER,
                                  f"no client {wire.quote(offer.target.client_id)} is connected")
        elif isinstance(msg, sw.Answer):
            host.answered(msg.offer, msg.conn, msg.code)
        elif isinstance(msg, sw.WatchAsk):
            t = host.by_id.get(msg.peer)
            connected = t is not None and t.core.state is State.READY
            self._send(shard, sw.WatchState(msg.conn, msg.req, msg.peer, connected))
        elif isinstance(msg, sw.WatchState):
            if msg.conn == RECHECK:
                known = self._remote.get(msg.peer)
                if known is not None and not msg.connected:
                    del self._remote[msg.peer]
                    host.gone_elsewhere(known[0], msg.peer, "vanished")
                return
            self._asked.pop((msg.conn, msg.req), None)
            host.watch_known(msg.conn, msg.req, msg.peer, msg.connected)
        elif isinstance(msg, sw.GroupOp):
            if self.peers.is_remote(shard):
                self._remote.setdefault(msg.client_id, (msg.conn, shard))
            host.group_op(msg.conn, msg.client_id, msg.op, msg.name, msg.req)
        elif isinstance(msg, sw.Load):
            host.load(msg.client_id, msg.asks, msg.tells)
        elif isinstance(msg, sw.Left):
            self._remote.pop(msg.client_id, None)
            host.gone_elsewhere(msg.conn, msg.client_id,
                                "left" if msg.reason == "left" else "vanished")
        elif isinstance(msg, sw.Replace):
            host.replace_stale(msg.conn)
        elif isinstance(msg, sw.CountAsk):
            conn, req = msg.conn, msg.req
            host.count_here(msg.name, lambda code, senders, receivers: self._send(
                shard, sw.Counted(conn, req, code, senders, receivers)))
        elif isinstance(msg, sw.Counted):
            if self._counting.pop((msg.conn, msg.req), None) is not None:
                host.counted(msg.conn, msg.req, msg.code, msg.senders, msg.receivers)

    def _unanswered(self, down: set[int]) -> None:
        for (conn, req), peer in list(self._counting.items()):
            if peer in down:
                del self._counting[conn, req]
                self.host.counted(conn, req, wire.Code.NO_SUCH_BROADCAST, 0, 0)

    def links_cut(self, peers: list[int]) -> None:
        """What was sent to or from `peers` (another Coordinator's shards)
        may be lost: counts asked there fail, watches asked there are asked
        again, and whether each client of theirs known here is still
        connected is asked again (a departure may have been lost)."""
        down = set(peers)
        self._unanswered(down)
        for (conn, _req), (home, member, msg) in self._group_asked.items():
            if home in down:
                self._group_op_at(home, conn, member, msg)
        for (watcher, req), (peer, shard) in self._asked.items():
            if shard in down:
                self._send(shard, sw.WatchAsk(watcher, req, peer))
        for cid, (_conn, shard) in self._remote.items():
            if shard in down:
                self._send(shard, sw.WatchAsk(RECHECK, RECHECK, cid))

    def _rejoin(self, conn: int, member: str, msg: wire.GroupRequest) -> Callable[[int], None]:
        return lambda home: self._group_op_at(home, conn, member, msg)

    def coordinator_down(self, peers: list[int]) -> None:
        """Another Coordinator (its shards: `peers`) died: its clients this
        one knows of are gone, as if each had vanished; watches it was asked
        about are of peers not connected."""
        down = set(peers)
        self._unanswered(down)
        lost = {g for g, home in self._homes.items() if home in down}
        for name in lost:
            del self._homes[name]  # its next request finds (or becomes) a new home
        # Requests it did not answer are asked of the new home; members and
        # followers here join (follow) again there (their clients never
        # asked, so those replies go nowhere).
        asked = set()
        for (conn, req), (home, member, msg) in list(self._group_asked.items()):
            if home in down:
                del self._group_asked[conn, req]
                asked.add((conn, msg.name))
                self._at_home(msg.name, self._rejoin(conn, member, msg))
        for conn, groups in self._joined.items():
            for name, (member, op) in groups.items():
                if name in lost and (conn, name) not in asked:
                    self._at_home(name, self._rejoin(conn, member,
                                                     wire.GroupRequest(REJOIN, op, name)))

        for (watcher, req), (peer, shard) in list(self._asked.items()):
            if shard in down:
                del self._asked[watcher, req]
                self.host.watch_known(watcher, req, peer, False)
        for cid, (conn, shard) in list(self._remote.items()):
            if shard in down:
                del self._remote[cid]
                self.host.gone_elsewhere(conn, cid, "vanished")

    def shard_down(self, entries: list[ipc.Entry]) -> None:
        """A shard died: its clients are gone, as if each had vanished."""
        for e in entries:
            self.host.gone_elsewhere(e.conn_key, e.client_id, "vanished")
