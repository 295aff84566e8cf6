"""A front-end shard: `python -m conec_actors.coord.shard --index K --count N
--fd F --endpoint ipc://@...`, its CURVE keys and `ShardSetup` on stdin.

Started by the Coordinator (`CoordConfig(frontends=N)`, N > 1) with UDP
socket K of its reuseport group as fd F. It terminates QUIC for the clients
the kernel steers to it (`reuseport`: by connection id, and every id this
shard issues names it) with an ordinary `FrontEnd`. Control requests go to
the Coordinator, which holds the workers (`CoordLink`); streams between its
clients and other shards' go straight to those shards over the mesh
(`mesh`, `tunnel`). It exits when told to, or when its parent is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import zmq

from . import ipc, zmqauth
from .worker import _die_with_parent

if TYPE_CHECKING:
    from ..transport import Endpoint
    from .frontend import FrontEnd
    from .metrics import ClientFigures

log = logging.getLogger("conec_actors.coord.shard")

PARENT_CHECK = 0.5


class ShardSetup(msgspec.Struct, array_like=True, frozen=True):
    """What a shard needs of the Coordinator's configuration (via stdin:
    never argv or the environment, which other users can read)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    max_message_size: int
    max_datagram_size: int
    idle_timeout: float
    stateless_retry: bool | str
    routing_workers: int
    broadcast_workers: int
    retry_key: bytes
    log_level: int = logging.INFO
    #: the stateless reset key (`ServerSettings.reset_key`), the same for a restarted shard
    reset_key: bytes | None = None
    #: in a federation (`CoordConfig.cluster`): the NATS servers, the
    #: Coordinator's name, the CA of TLS to NATS and a credentials file
    cluster: list[str] | None = None
    name: str = ""
    cluster_ca: bytes | None = None
    cluster_creds: str | None = None


class CoordLink:
    """The shard's CURVE DEALER to the Coordinator: control requests go to
    the workers through it (`Forward`), and the Coordinator's messages come
    back (`on_message`)."""

    def __init__(self, endpoint: str, keys: tuple[bytes, bytes, bytes],
                 on_message: Callable[[ipc.ToShard], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        zmqauth.curve_client(self._sock, *keys)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)  # control only: bounded by its callers
        self._sock.connect(endpoint)
        self._fd = int(self._sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._on_readable)
        self._on_message = on_message
        self._out: list[ipc.FromWorker] = []
        self._flush_handle: asyncio.Handle | None = None
        self._pending: dict[int, ipc.ReplyCallback | None] = {}
        self._next_req = 1

    def request_for(self, kind: str, key: str, make: ipc.MakeRequest,
                    cb: ipc.ReplyCallback | None) -> int:
        req = self._next_req
        self._next_req += 1
        self._pending[req] = cb
        self.send(ipc.Forward(req, kind, key, make(req)))
        return req

    def send(self, msg: ipc.FromWorker) -> None:
        self._out.append(msg)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._sock.closed or not self._out:
            return
        batch, self._out = self._out, []
        self._sock.send(ipc.encode_batch(batch))
        self._on_readable()  # sending can consume the FD's edge

    def _on_readable(self) -> None:
        sock = self._sock
        while not sock.closed and int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            for msg in ipc.decode_to_shard(data):
                if isinstance(msg, ipc.Forwarded):
                    cb = self._pending.pop(msg.req, None)
                    if cb is not None:
                        try:
                            cb(msg.reply)
                        except Exception:
                            log.exception("error handling a worker's reply")
                else:
                    self._on_message(msg)

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
        self._sock.close(0)
        self._ctx.term()


async def serve(index: int, count: int, fd: int, endpoint: str,
                keys: tuple[bytes, bytes, bytes], setup: ShardSetup, start: int = 0) -> int:
    # Imported here, not at the top: `python -m` start-up stays light
    # until the keys and setup have been read.
    from ..certs import load_pem
    from ..streams import STREAM_WINDOW
    from ..tlsconf import quic_configuration
    from ..transport import Endpoint, ServerSettings
    from . import shard_wire
    from .frontend import FrontEnd
    from .mesh import Mesh
    from .shard_control import CrossShard
    from .tunnel import Tunnels

    loop = asyncio.get_running_loop()
    parent = os.getppid()
    stop = asyncio.Event()
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    qcfg = quic_configuration(
        is_client=False, cert_pem=load_pem(setup.cert), key_pem=load_pem(setup.key),
        idle_timeout=setup.idle_timeout, max_datagram_size=setup.max_datagram_size,
        stream_window=STREAM_WINDOW)
    fed = None
    if setup.cluster:
        # In a federation each shard is a member of its own (`NAME/K`); its
        # number is part of its connection keys, so it joins first.
        from . import federated

        fed = await federated.join(setup.cluster, f"{setup.name}/{index}",
                                   cert=load_pem(setup.cert), key=load_pem(setup.key),
                                   ca=setup.cluster_ca, creds=setup.cluster_creds,
                                   shard=(index, count))
    fe = FrontEnd(client_ca=setup.client_ca, max_message_size=setup.max_message_size,
                  max_datagram_size=setup.max_datagram_size, idle_timeout=setup.idle_timeout,
                  routing_workers=setup.routing_workers,
                  broadcast_workers=setup.broadcast_workers, shard=(index, count),
                  start=start, base=fed.peers.base if fed is not None and fed.peers else 0)
    public, secret = zmq.curve_keypair()
    tunnels: Tunnels | None = None

    def deliver(shard: int, msgs: list[shard_wire.ShardMsg]) -> None:
        assert tunnels is not None
        tunnels.deliver(shard, msgs)

    mesh: Mesh[shard_wire.ShardMsg] = Mesh(index, public, secret, shard_wire.encode,
                                           shard_wire.decode, deliver, log)

    def on_message(msg: ipc.ToShard) -> None:
        if isinstance(msg, ipc.ShardPeers):
            for p in msg.peers:
                peer_up(p)
        elif isinstance(msg, ipc.PeerUp):
            peer_up(msg.peer)
        elif isinstance(msg, ipc.PeerDown):
            mesh.drop_peer(msg.index)
            assert tunnels is not None
            tunnels.shard_down(msg.index)
            cross.shard_down(msg.entries)
        elif isinstance(msg, ipc.StatsRequest):
            link.send(ipc.StatsReply(msg.req, figures(fe, ep), fe.lag.lag))
        elif isinstance(msg, ipc.ClientsRequest):
            link.send(ipc.ClientsReply(msg.req, *(
                msgspec.Raw(msgspec.msgpack.encode(c)) for c in clients_here(fe))))
        elif isinstance(msg, ipc.Shutdown):
            stop.set()

    def peer_up(p: ipc.ShardPeer) -> None:
        mesh.set_peer(p.index, p.endpoint, p.public)
        if fed is not None and fed.peers is not None and p.cnum:
            fed.peers.set_sibling(p.cnum, p.index)

    link = CoordLink(endpoint, keys, on_message)
    fe.requests = link
    if fed is None:
        tunnels = fe.tunnels = fe.relay.tunnels = Tunnels(fe.sessions, fe.relay, index,
                                                         count, mesh.send)
        cross = fe.plane.cross = CrossShard(fe.plane, index, count, mesh.send)
        tunnels.control = cross.deliver
    else:
        from .peers import REMOTE

        federation = fed

        def send(peer: int, msg: shard_wire.ShardMsg) -> None:
            # This Coordinator's shards over the mesh, other hosts over NATS.
            if peer < REMOTE:
                mesh.send(peer, msg)
            else:
                federation.send(peer, msg)

        federated.attach(fe, fed, send)
        tunnels, attached = fe.tunnels, fe.plane.cross
        assert attached is not None
        cross = attached
    settings = ServerSettings(configuration=qcfg, stream_window=STREAM_WINDOW,
                              accept=fe.accept,
                              retry=setup.stateless_retry,  # type: ignore[arg-type]
                              shard=(index, count), retry_key=setup.retry_key,
                              reset_key=setup.reset_key)
    ep = Endpoint(sock, settings)
    fe.endpoint = ep
    link.send(ipc.Ready("frontend", index, os.getpid(), endpoint=mesh.endpoint,
                        public=public, cnum=fed.cnum if fed is not None else 0))

    def check_parent() -> None:
        if os.getppid() != parent:
            stop.set()
        else:
            loop.call_later(PARENT_CHECK, check_parent)

    loop.call_later(PARENT_CHECK, check_parent)
    await stop.wait()
    for conn in list(ep.connections):
        conn.close(0x2, "Coordinator shutting down")  # wire.Code.COORD_SHUTDOWN
    await asyncio.sleep(0.05)  # let the closes reach the wire
    ep.close()
    fe.close()
    if fed is not None:
        await fed.close()
    mesh.close()
    link.close()
    return 0


def clients_here(fe: FrontEnd) -> tuple[list[ClientFigures], list[ClientFigures]]:
    """This shard's clients' figures, and those of the streams of other
    shards' clients carried here (the home shard's `TunnelLeg` counts none
    of it until the stream is over): id, home shard, bytes and messages."""
    from .metrics import ClientFigures

    carried = []
    for rs in fe.tunnels.remote.values() if fe.tunnels is not None else ():
        b_in = m_in = b_out = m_out = 0
        for leg in rs.legs.values():
            bi, mi, bo, mo = leg.figures()
            b_in, m_in, b_out, m_out = b_in + bi, m_in + mi, b_out + bo, m_out + mo
        if b_in or m_in or b_out or m_out:
            carried.append(ClientFigures(rs.core.client_id, "", rs.conn.home, 0.0, 0,
                                         b_in, b_out, m_in, m_out, 0.0))
    return [s.figures() for s in fe.by_id.values()], carried


def figures(fe: FrontEnd, ep: Endpoint) -> dict[str, int]:
    """A shard's figures for the Coordinator's `stats()` and /metrics (CPU
    in ms; `refused.REASON` and `streams.KIND` by reason and kind)."""
    t = os.times()
    out = {
        "clients": fe.num_clients(), "connections": len(ep.connections),
        "half_open": ep.half_open, "retries_sent": ep.retries_sent,
        "junk_dropped": ep.junk_dropped, "resets_sent": ep.resets_sent,
        "resets_limited": ep.resets_limited, "streams": fe.num_streams(),
        "streams_opened": fe.streams_opened, "broadcasts": fe.num_broadcasts(),
        "broadcast_deliveries": fe.hub.deliveries, "watches": len(fe.watches),
        "messages_forwarded": fe.messages_forwarded, "bytes_forwarded": fe.bytes_forwarded,
        "connections_accepted": fe.connections_accepted,
        "writers_paused": fe.writers_paused, "writers_resumed": fe.writers_resumed,
        "cpu_ms": int((t.user + t.system) * 1000),
    }
    for reason, n in fe.refused.items():
        out[f"refused.{reason}"] = n
    if ep.handshakes_refused:
        out["refused.handshake_timeout"] = ep.handshakes_refused
    for kind, n in fe.streams_by_kind().items():
        out[f"streams.{kind}"] = n
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conec_actors.coord.shard")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--start", type=int, default=0,
                   help="where this start's connection keys begin (times --count)")
    p.add_argument("--endpoint", required=True)
    args = p.parse_args(argv)
    _die_with_parent()
    try:
        keys = zmqauth.read_keys(sys.stdin.buffer)
        setup = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=ShardSetup)
    except (ValueError, msgspec.DecodeError) as exc:
        print(f"conec-actors shard: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=setup.log_level,
                        format=f"%(asctime)s shard {args.index} %(levelname)s %(name)s: "
                               "%(message)s")
    # The Coordinator stops us (Shutdown, then SIGKILL after a grace period);
    # a signal sent to the whole process group must not look like a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return asyncio.run(serve(args.index, args.count, args.fd, args.endpoint, keys, setup,
                             args.start))


if __name__ == "__main__":
    sys.exit(main())
