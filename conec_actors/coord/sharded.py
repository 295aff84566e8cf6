"""The Coordinator's side of its front-end shards (`CoordConfig(frontends=N)`).

The Coordinator's process holds the N UDP sockets of the reuseport group
(created once, in order, and never closed while it runs: a restarted shard
gets its own socket back, so no other shard's flows move) and the workers;
the shards are children of the same `Supervisor` (kind "frontend"). Control
requests from a shard reach the workers through here (`Forward`); the
replies of those that change a worker's state are applied to a mirror of
that worker, from which a restarted worker is rebuilt (the workers' state
is the sum of all shards', which no single shard could give).
"""

from __future__ import annotations

import logging
import socket

import msgspec

from . import ipc
from .broadcasts import BroadcastBook
from .directory import Directory
from .peers import LOCAL_MASK
from .shard import ShardSetup
from .supervisor import Outgoing, Spawn, Supervisor, _Slot

log = logging.getLogger(__name__)


class ShardControl:
    """Starts the shards, passes their control requests on, keeps the
    workers' mirrors, and tells the shards of each other."""

    def __init__(self, sockets: list[socket.socket], setup: ShardSetup) -> None:
        self.sockets = sockets
        self.count = len(sockets)
        self._setup = msgspec.msgpack.encode(setup)
        self._routing = [Directory() for _ in range(setup.routing_workers)]
        self._books = [BroadcastBook() for _ in range(setup.broadcast_workers)]
        self.supervisor: Supervisor | None = None

    # -- Supervisor hooks ---------------------------------------------------------

    def spawn(self, slot: _Slot) -> Spawn | None:
        if slot.kind != "frontend":
            return None
        fd = self.sockets[slot.index].fileno()
        return Spawn(["-m", "conec_actors.coord.shard", "--index", str(slot.index),
                      "--count", str(self.count), "--fd", str(fd),
                      "--start", str(slot.generation << 32)], (fd,), self._setup)

    def rebuild(self, kind: str, index: int, req: int) -> Outgoing:
        if kind == "routing":
            d = self._routing[index]
            return ipc.Rebuild(req, list(d.entries.values()))
        if kind == "broadcast":
            msg = ipc.RebuildBroadcasts(req, [
                ipc.BroadcastState(name, b.epoch, list(b.senders), list(b.receivers))
                for name, b in self._books[index].broadcasts.items()])
            # The mirror restarts as the worker does, epoch counter included.
            self._books[index] = BroadcastBook()
            self._books[index].handle(msg)
            return msg
        return self._shard_up(index, req)

    def _shard_up(self, index: int, req: int) -> ipc.ShardPeers:
        sup = self.supervisor
        assert sup is not None
        me = _peer(sup.by_kind["frontend"][index])
        peers = []
        for slot in sup.by_kind["frontend"]:
            p = _peer(slot)
            if slot.index == index or p is None or not slot.ready:
                continue
            peers.append(p)
            if me is not None:
                sup.notify(slot, ipc.PeerUp(0, me))
        return ipc.ShardPeers(req, peers)

    def on_message(self, slot: _Slot, msg: ipc.Forward) -> None:
        sup = self.supervisor
        assert sup is not None
        generation = slot.generation
        request = msg.request

        def answered(reply: ipc.WorkerReply) -> None:
            self._mirror(msg.kind, msg.key, request, reply)
            # Only to the process that asked: a successor has its own req ids.
            if slot.generation == generation:
                sup.notify(slot, ipc.Forwarded(msg.req, reply))

        sup.request_for(msg.kind, msg.key,
                        lambda req: msgspec.structs.replace(request, req=req), answered)

    def _mirror(self, kind: str, key: str, request: ipc.ToWorker,
                reply: ipc.WorkerReply) -> None:
        if kind == "routing" and isinstance(request, ipc.Register | ipc.Unregister):
            self._routing[ipc.shard_of(key, len(self._routing))].handle(request)
        elif kind == "broadcast" and isinstance(request, ipc.Join | ipc.Leave):
            self._books[ipc.shard_of(key, len(self._books))].handle(request)

    def on_exit(self, slot: _Slot) -> None:
        """A shard died: the others drop its clients, and so do the workers."""
        if slot.kind != "frontend":
            return
        sup = self.supervisor
        assert sup is not None
        name = f"fe{slot.index}"
        gone = [e for d in self._routing for e in d.entries.values() if e.frontend == name]
        for other in sup.by_kind["frontend"]:
            if other is not slot:
                sup.notify(other, ipc.PeerDown(0, slot.index, gone))
        for e in gone:
            self._forward("routing", e.client_id, ipc.Unregister(
                0, e.client_id, e.frontend, e.conn_key))
        # Its members leave every broadcast; the broadcasts it was the home
        # of are gone with it (their members elsewhere saw their streams reset).
        for book in self._books:
            for bname, b in list(book.broadcasts.items()):
                home = ipc.shard_of(bname, self.count) == slot.index
                for m in b.senders | b.receivers:
                    if home or (m.conn_key & LOCAL_MASK) % self.count == slot.index:
                        self._forward("broadcast", bname, ipc.Leave(
                            0, bname, b.epoch, m, True, True))

    def _forward(self, kind: str, key: str, request: ipc.ToWorker) -> None:
        sup = self.supervisor
        assert sup is not None

        def done(reply: ipc.WorkerReply) -> None:
            self._mirror(kind, key, request, reply)

        sup.request_for(kind, key, lambda req: msgspec.structs.replace(request, req=req),
                        done)

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def _peer(slot: _Slot) -> ipc.ShardPeer | None:
    info = slot.info
    if info is None or not info.endpoint:
        return None
    return ipc.ShardPeer(slot.index, info.endpoint, info.public, info.cnum)

