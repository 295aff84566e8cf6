"""A front-end in a federation: its control requests consult the
federation's id space (`federation.Federation`) as well as its own workers,
and its streams to other Coordinators' clients go over NATS.

- `Register`: the id is claimed federation-wide first (create-if-absent);
  only then does the local routing worker decide (same-certificate
  replacement, `DuplicateId` among this Coordinator's own clients).
- `Unregister`: the federation's entry goes too.
- `Lookup`: the local directory first; a miss asks the federation, whose
  entry names another Coordinator's connection (`peers`), where the stream
  is then carried (`tunnel`), as to another shard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Coroutine

from .. import wire
from ..certs import load_pem
from ..config import CoordConfig, cluster_urls
from ..errors import FederationError
from . import ipc
from .federation import Federation
from .frontend import FrontEnd, Requests
from .shard_control import CrossShard
from .tunnel import Send, Tunnels

log = logging.getLogger(__name__)


class FederatedRequests:
    """`Requests` of a federated front-end: its workers' (`inner`), with
    admissions and lookups through the federation's id space."""

    def __init__(self, inner: Requests, fed: Federation) -> None:
        self.inner = inner
        self.fed = fed
        assert fed.ids is not None, "the federation is joined"
        self._ids = fed.ids
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        t = self._loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def request_for(self, kind: str, key: str, make: ipc.MakeRequest,
                    cb: ipc.ReplyCallback | None) -> int:
        if kind != "routing":
            return self.inner.request_for(kind, key, make, cb)
        probe = make(0)
        if isinstance(probe, ipc.Register):
            self._spawn(self._register(key, make, probe.entry, cb))
            return 0
        if isinstance(probe, ipc.Unregister):
            self._ids.release(probe.client_id, probe.conn_key)
        elif isinstance(probe, ipc.Lookup) and cb is not None:
            dst, answer = probe.dst, cb

            def local(reply: ipc.WorkerReply) -> None:
                if isinstance(reply, ipc.Reply) and reply.code == wire.Code.NO_SUCH_PEER:
                    self._spawn(self._lookup(dst, reply, answer))
                else:
                    answer(reply)
            return self.inner.request_for(kind, key, make, local)
        return self.inner.request_for(kind, key, make, cb)

    async def _register(self, key: str, make: ipc.MakeRequest, entry: ipc.Entry,
                        cb: ipc.ReplyCallback | None) -> None:
        code = await self._ids.admit(entry)
        if code != 0:
            if cb is not None:
                cb(ipc.Reply(0, code))
            return

        def registered(reply: ipc.WorkerReply) -> None:
            if isinstance(reply, ipc.Reply):
                if reply.code != 0:
                    self._ids.release(entry.client_id, entry.conn_key)
                else:
                    self._ids.repoint(entry)
            if cb is not None:
                cb(reply)
        self.inner.request_for("routing", key, make, registered)

    async def _lookup(self, dst: str, miss: ipc.Reply, cb: ipc.ReplyCallback) -> None:
        entry = await self._ids.lookup(dst)
        cb(ipc.Reply(miss.req, 0, entry) if entry is not None else miss)


def cluster_tls(cert: bytes, key: bytes, ca: bytes | None) -> ssl.SSLContext | None:
    """TLS to the NATS servers: their certificates checked against `ca`,
    the Coordinator's own certificate (`cert`, `key`: PEM) presented."""
    if ca is None:
        return None
    ctx = ssl.create_default_context(cadata=ca.decode())
    # ssl loads a certificate chain from files only: a private temporary
    # directory, gone once loaded.
    with tempfile.TemporaryDirectory() as d:
        cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert)
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(key)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def default_name(cfg: CoordConfig) -> str:
    return f"{socket.gethostname()}:{cfg.port}"


async def join(servers: list[str], name: str, *, cert: bytes, key: bytes,
               ca: bytes | None = None, creds: str | None = None,
               shard: tuple[int, int] = (0, 1)) -> Federation:
    """Join the federation of the NATS cluster `servers` as `name` (before
    the front-end exists: its connection keys carry the member number
    claimed here). With front-end shards each shard joins, as
    `NAME/K`, and is shard `shard` of its Coordinator."""
    try:
        import nats  # noqa: F401
    except ImportError as exc:
        raise FederationError("cluster= needs nats-py: pip install "
                              "'conec-actors[cluster]'") from exc
    fed = Federation(servers, name, tls=cluster_tls(cert, key, ca), creds=creds, shard=shard)
    await fed.start()
    return fed


async def join_config(cfg: CoordConfig) -> Federation:
    """`join` as `cfg` says (`CoordConfig.cluster`, one front-end)."""
    assert cfg.cluster is not None
    return await join(cluster_urls(cfg.cluster), cfg.name or default_name(cfg),
                      cert=load_pem(cfg.cert), key=load_pem(cfg.key),
                      ca=load_pem(cfg.cluster_ca) if cfg.cluster_ca is not None else None,
                      creds=cfg.cluster_creds)


def attach(fe: FrontEnd, fed: Federation, send: Send | None = None) -> None:
    """Carry `fe`'s streams and control messages to other Coordinators
    (`send`: to any peer, this Coordinator's other shards included; by
    default, `fed.send`: only other Coordinators)."""
    peers = fed.peers
    assert peers is not None and fe.requests is not None and fed.ids is not None
    send = send or fed.send
    tunnels = fe.tunnels = fe.relay.tunnels = Tunnels(
        fe.sessions, fe.relay, peers.index, peers.count, send, peers)
    cross = fe.plane.cross = CrossShard(fe.plane, peers.index, peers.count, send, peers)
    tunnels.control = cross.deliver
    fe.requests = FederatedRequests(fe.requests, fed)

    def lost(client_id: str, conn_key: int) -> None:
        # Admitted during a NATS leader election, but another Coordinator's
        # admission of the same id won: this one gives way.
        s = fe.sessions.get(conn_key)
        if s is not None and s.client_id == client_id:
            s.execute(s.core.close(wire.Code.DUPLICATE_ID, f"a client with id "
                                   f"{wire.quote(client_id)} is already connected"))
    fed.ids.lost = lost
    fed.ids.replaced = cross.replace
    fe.relay.broadcast_home = fed.ids.broadcast_home
    fe.plane.broadcast_home = fed.ids.existing_home
    cross.find_group_home = fed.ids.group_home
    fed.attach(tunnels, cross)
