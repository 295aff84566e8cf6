"""The Coordinator: front-end in this process, workers as child processes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import msgspec

from .. import reuseport, wire
from .._quic import RetryGate
from .._util import AwaitableContext
from ..certs import load_pem
from ..config import CoordConfig, cluster_urls, parse_host_port
from ..endpoint_rules import StatelessResets, unmap_address
from ..errors import CoordinatorFailed
from ..streams import STREAM_WINDOW
from ..tlsconf import quic_configuration
from ..transport import Endpoint, ServerSettings
from ..udp import SOCKET_BUFFER
from . import federated, ipc
from .federation import Federation
from .frontend import FrontEnd
from .metrics import (
    ClientFigures,
    ShardCounters,
    ShardFigures,
    Snapshot,
    WorkerFigures,
    imbalance,
)
from .metrics_http import MetricsServer, Sources
from .shard import ShardSetup, figures
from .sharded import ShardControl
from .supervisor import Outgoing, Supervisor, _Slot

log = logging.getLogger(__name__)

#: The `filename` of the OSError `Coord.start` raises when the metrics
#: endpoint cannot listen (its address is `CoordConfig.metrics`).
METRICS_ENDPOINT = "metrics endpoint"


class Coord:
    """A running Coordinator. Start it with `await Coord.start(cfg)` or
    `async with Coord.start(cfg) as coord:`."""

    def __init__(self, cfg: CoordConfig, fe: FrontEnd | None, endpoint: Endpoint | None,
                 supervisor: Supervisor, control: ShardControl | None = None) -> None:
        self._cfg = cfg
        # One of the two: the front-end here, or shards as child processes.
        self._fe_here = fe
        self._endpoint_here = endpoint
        self._control = control
        self._supervisor = supervisor
        self._closed = asyncio.Event()
        self._failure: CoordinatorFailed | None = None
        self._closing: asyncio.Task[None] | None = None
        self._metrics: MetricsServer | None = None
        # /metrics' totals carry the counts of shards' previous processes.
        self._shard_counters = ShardCounters()
        #: this Coordinator's membership of a federation (`CoordConfig.cluster`)
        self.federation: Federation | None = None
        supervisor.failed.add_done_callback(self._on_failed)

    @classmethod
    def start(cls, cfg: CoordConfig) -> AwaitableContext[Coord]:
        """Start the front-end here and the workers as child processes."""
        return AwaitableContext(lambda: cls._start(cfg))

    @classmethod
    async def _start(cls, cfg: CoordConfig) -> Coord:
        cert_pem, key_pem = load_pem(cfg.cert), load_pem(cfg.key)
        client_ca = load_pem(cfg.client_ca) if cfg.client_ca is not None else None
        if cfg.frontends > 1:
            return await cls._with_metrics(cfg, await cls._start_sharded(
                cfg, cert_pem, key_pem, client_ca))
        qcfg = quic_configuration(
            is_client=False, cert_pem=cert_pem, key_pem=key_pem,
            idle_timeout=cfg.idle_timeout, max_datagram_size=cfg.max_datagram_size,
            stream_window=STREAM_WINDOW)
        # In a federation, the Coordinator's number (claimed on joining) is
        # part of every connection key: join before the front-end exists.
        fed = await federated.join_config(cfg) if cfg.cluster is not None else None
        fe = FrontEnd(client_ca=client_ca, max_message_size=cfg.max_message_size,
                      max_datagram_size=cfg.max_datagram_size,
                      idle_timeout=cfg.idle_timeout, routing_workers=cfg.routing_workers,
                      broadcast_workers=cfg.broadcast_workers,
                      base=fed.peers.base if fed is not None and fed.peers else 0)
        supervisor = Supervisor({"routing": cfg.routing_workers,
                                 "broadcast": cfg.broadcast_workers}, fe.rebuild)
        fe.requests = supervisor
        if fed is not None:
            federated.attach(fe, fed)
        try:
            await supervisor.start()
            settings = ServerSettings(configuration=qcfg, stream_window=STREAM_WINDOW,
                                      accept=fe.accept, retry=cfg.stateless_retry,
                                      reset_key=StatelessResets.new_key())
            endpoint = await Endpoint.bind(cfg.host, cfg.port, settings)
        except BaseException:
            await supervisor.close()
            if fed is not None:
                await fed.close()
            raise
        fe.endpoint = endpoint
        coord = cls(cfg, fe, endpoint, supervisor)
        coord.federation = fed
        return await cls._with_metrics(cfg, coord)

    @classmethod
    async def _start_sharded(cls, cfg: CoordConfig, cert_pem: bytes, key_pem: bytes,
                             client_ca: bytes | None) -> Coord:
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sockets = reuseport.steered_group(cfg.host, cfg.port, cfg.frontends, family=family,
                                          buffer_size=SOCKET_BUFFER)
        control = ShardControl(sockets, ShardSetup(
            cert_pem, key_pem, client_ca, cfg.max_message_size, cfg.max_datagram_size,
            cfg.idle_timeout, cfg.stateless_retry, cfg.routing_workers,
            cfg.broadcast_workers, RetryGate.new_key(), logging.getLogger().getEffectiveLevel(),
            reset_key=StatelessResets.new_key(),
            # In a federation each shard joins the NATS cluster itself.
            cluster=cluster_urls(cfg.cluster) if cfg.cluster is not None else None,
            name=cfg.name or federated.default_name(cfg),
            cluster_ca=load_pem(cfg.cluster_ca) if cfg.cluster_ca is not None else None,
            cluster_creds=cfg.cluster_creds))
        supervisor = Supervisor({"routing": cfg.routing_workers,
                                 "broadcast": cfg.broadcast_workers,
                                 "frontend": cfg.frontends}, control.rebuild,
                                spawn=control.spawn, on_message=control.on_message,
                                on_exit=control.on_exit)
        control.supervisor = supervisor
        try:
            await supervisor.start()
        except BaseException:
            await supervisor.close()
            control.close()
            raise
        return cls(cfg, None, None, supervisor, control)

    @classmethod
    async def _with_metrics(cls, cfg: CoordConfig, coord: Coord) -> Coord:
        if cfg.metrics is not None:
            host, port = parse_host_port(cfg.metrics)
            try:
                coord._metrics = MetricsServer(asyncio.get_running_loop(), host, port, Sources(
                    coord._snapshot, coord._workers, coord._clients))
            except OSError as exc:
                await coord.close()
                # Named as the metrics endpoint's, not the UDP port's.
                raise OSError(exc.errno, exc.strerror, METRICS_ENDPOINT) from exc
            except BaseException:
                await coord.close()
                raise
        return coord

    # -- properties ------------------------------------------------------------

    @property
    def _fe(self) -> FrontEnd:
        assert self._fe_here is not None, "the front-end runs in shard processes"
        return self._fe_here

    @property
    def _endpoint(self) -> Endpoint:
        assert self._endpoint_here is not None, "the front-end runs in shard processes"
        return self._endpoint_here

    @property
    def port(self) -> int:
        """The bound UDP port (real even when configured with port 0)."""
        return self.address[1]

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the Coordinator listens on."""
        if self._control is not None:
            return unmap_address(self._control.sockets[0].getsockname())
        return self._endpoint.local_address

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) the HTTP endpoint (/metrics, /healthz, /clients)
        listens on, None without `CoordConfig.metrics`."""
        return self._metrics.address if self._metrics is not None else None

    @property
    def config(self) -> CoordConfig:
        return self._cfg

    def worker_pids(self, kind: str | None = None) -> list[int]:
        """Process ids of the child processes, all or of one kind ("routing",
        "broadcast", "frontend": the front-end shards), for supervision and tests."""
        return self._supervisor.pids(kind)

    async def num_clients(self) -> int:
        """Clients connected and admitted."""
        if self._control is not None:
            return int((await self._sharded_stats())["clients"])
        return self._fe.num_clients()

    async def num_broadcasts(self) -> int:
        """Broadcasts that exist."""
        if self._control is not None:
            return int((await self._sharded_stats())["broadcasts"])
        return self._fe.num_broadcasts()

    async def stats(self) -> dict[str, Any]:
        """A snapshot: clients, streams, broadcasts, forwarded figures, workers,
        each front-end shard's figures (`frontends`) and how unevenly the
        shards are filled (`frontends_imbalance`: the busiest one's clients
        over the mean, 1.0 when even); in a federation with one front-end,
        `federation` (`Federation.figures`)."""
        slots = self._supervisor.slots()
        workers = self._supervisor.figures()
        replies = await self._ask(slots, timeout=2.0)
        for w, r in zip(workers, replies, strict=True):
            if r is not None:
                w.update(r.figures)
                w["loop_lag"] = r.loop_lag
        workers = [w for w, slot in zip(workers, slots, strict=True) if slot.kind != "frontend"]
        if self._control is not None:
            out = _shard_totals([_shard_reply(slot, r) for slot, r in
                                 zip(slots, replies, strict=True) if slot.kind == "frontend"])
            out["workers"] = workers
            return out
        # The front-end here: its figures as a shard's would be.
        here: dict[str, Any] = {"shard": 0, "pid": os.getpid(), "ready": True,
                                "restarts": 0}
        out = _shard_totals([(here, figures(self._fe, self._endpoint), self._fe.lag.lag)])
        out["workers"] = workers
        if self.federation is not None:
            out["federation"] = self.federation.figures()
        return out

    async def _sharded_stats(self) -> dict[str, Any]:
        """The shards' figures, summed, and `frontends`: each shard's."""
        shards = self._supervisor.by_kind["frontend"]
        replies = await self._ask(shards, timeout=2.0)
        return _shard_totals([_shard_reply(s, r) for s, r in zip(shards, replies, strict=True)])

    # -- the HTTP endpoint's figures (run on this loop, asked by its threads) -------

    async def _workers(self) -> list[WorkerFigures]:
        return [WorkerFigures(s.kind, s.index, s.proc.pid if s.proc else None, s.ready,
                              s.restarts) for s in self._supervisor.slots()]

    async def _snapshot(self) -> Snapshot:
        """Every figure at once: the front-end's now (or each shard up's, as
        they answer), then each worker up's loop lag (a worker or shard down
        or too slow to answer within a second is left out)."""
        if self._control is not None:
            return await self._sharded_snapshot()
        fe, ep = self._fe, self._endpoint
        refused = dict(fe.refused)
        if ep.handshakes_refused:
            refused["handshake_timeout"] = ep.handshakes_refused
        t = os.times()
        snap = Snapshot(
            clients=fe.num_clients(), connections_accepted=fe.connections_accepted,
            refused=refused, half_open=ep.half_open, retry_packets=ep.retries_sent,
            junk_datagrams=ep.junk_dropped, streams_open=fe.streams_by_kind(),
            streams_opened=fe.streams_opened, messages_forwarded=fe.messages_forwarded,
            bytes_forwarded=fe.bytes_forwarded, broadcasts=fe.num_broadcasts(),
            broadcast_deliveries=fe.hub.deliveries, writers_paused=fe.writers_paused,
            writers_resumed=fe.writers_resumed, watches=len(fe.watches),
            frontend_lag=fe.lag.lag, workers=await self._workers(),
            shards=[ShardFigures(0, fe.num_clients(), fe.messages_forwarded,
                                 fe.bytes_forwarded, t.user + t.system, fe.lag.lag)])
        replies = await self._ask_workers(timeout=1.0, only_ready=True)
        return dataclasses.replace(snap, workers=[
            w if r is None else dataclasses.replace(w, loop_lag=r.loop_lag)
            for w, r in zip(snap.workers, replies, strict=True)])

    async def _sharded_snapshot(self) -> Snapshot:
        """The shards' figures summed (counters with what their previous
        processes counted: they never go down), and each one's."""
        slots = self._supervisor.slots()
        replies = await self._ask(slots, timeout=1.0, only_ready=True)
        workers = [WorkerFigures(s.kind, s.index, s.proc.pid if s.proc else None, s.ready,
                                 s.restarts, None if r is None else r.loop_lag)
                   for s, r in zip(slots, replies, strict=True)]
        shards = [(s, r) for s, r in zip(slots, replies, strict=True) if s.kind == "frontend"]
        t = _shard_totals([_shard_reply(s, r) for s, r in shards])
        for s, r in shards:
            if r is not None:
                self._shard_counters.seen(s.index, s.generation, r.figures)
        for k, v in self._shard_counters.carried().items():
            if k.startswith("refused."):
                t["refused"][k[8:]] = t["refused"].get(k[8:], 0) + v
            else:
                t[k] += v
        streams_open: dict[str, int] = {}
        for _, r in shards:
            for k, v in (r.figures if r is not None else {}).items():
                if k.startswith("streams."):
                    streams_open[k[8:]] = streams_open.get(k[8:], 0) + v
        return Snapshot(
            clients=t["clients"], connections_accepted=t["connections_accepted"],
            refused=t["refused"], half_open=t["half_open"], retry_packets=t["retries_sent"],
            junk_datagrams=t["junk_dropped"], streams_open=streams_open,
            streams_opened=t["streams_opened"], messages_forwarded=t["messages_forwarded"],
            bytes_forwarded=t["bytes_forwarded"], broadcasts=t["broadcasts"],
            broadcast_deliveries=t["broadcast_deliveries"],
            writers_paused=t["writers_paused"], writers_resumed=t["writers_resumed"],
            watches=t["watches"], frontend_lag=None, workers=workers,
            shards=[ShardFigures(f["shard"], f["clients"], f["messages_forwarded"],
                                 f["bytes_forwarded"], f["cpu_seconds"], f["loop_lag"])
                    for f in t["frontends"] if f["loop_lag"] is not None],
            frontends_imbalance=t["frontends_imbalance"])

    async def _clients(self) -> list[ClientFigures]:
        if self._control is None:
            return [s.figures() for s in self._fe.by_id.values()]
        # Every shard up's clients (a shard too slow to answer is left out),
        # with what their streams carried at other shards so far.
        replies = [r for r in await self._replies(
            self._supervisor.by_kind["frontend"], ipc.ClientsRequest, timeout=1.0,
            only_ready=True) if isinstance(r, ipc.ClientsReply)]
        out = {(c.id, c.shard): c for r in replies for c in _CLIENTS.decode(r.clients)}
        for r in replies:
            for far in _CLIENTS.decode(r.carried):
                c = out.get((far.id, far.shard))
                if c is not None:
                    out[far.id, far.shard] = dataclasses.replace(
                        c, bytes_in=c.bytes_in + far.bytes_in,
                        bytes_out=c.bytes_out + far.bytes_out,
                        messages_in=c.messages_in + far.messages_in,
                        messages_out=c.messages_out + far.messages_out)
        return list(out.values())

    async def _ask_workers(self, timeout: float, only_ready: bool = False
                           ) -> list[ipc.StatsReply | None]:
        """Each worker slot's StatsReply, None where none came in time."""
        return await self._ask(self._supervisor.slots(), timeout, only_ready)

    async def _ask(self, slots: list[_Slot], timeout: float, only_ready: bool = False
                   ) -> list[ipc.StatsReply | None]:
        """Each slot's StatsReply, None where none came in time."""
        return [r if isinstance(r, ipc.StatsReply) else None
                for r in await self._replies(slots, ipc.StatsRequest, timeout, only_ready)]

    async def _replies(self, slots: list[_Slot], make: Callable[[int], Outgoing],
                       timeout: float, only_ready: bool = False
                       ) -> list[ipc.WorkerReply | None]:
        """Each slot's reply to `make(req)`, None where none came in time."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[ipc.WorkerReply] | None] = []
        for slot in slots:
            if only_ready and not slot.ready:
                futs.append(None)
                continue
            fut: asyncio.Future[ipc.WorkerReply] = loop.create_future()
            futs.append(fut)
            self._supervisor.request(slot, make, _resolver(fut))
        # asyncio.wait, not wait_for: a worker too slow to answer (stopped,
        # restarting) must leave its figures out, not cancel the others.
        waiting = [f for f in futs if f is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        return [f.result() if f is not None and f.done() else None for f in futs]

    # -- shutdown ----------------------------------------------------------------

    def _on_failed(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, CoordinatorFailed):
            log.error("%s", exc)
            self._failure = exc
            if self._closing is None:
                self._closing = asyncio.get_running_loop().create_task(self._shutdown(
                    wire.Code.COORD_FAILED, str(exc)))

    async def close(self) -> None:
        """Stop everything, workers included; leaves no process or socket."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._shutdown(wire.Code.COORD_SHUTDOWN, "Coordinator shutting down"))
        await asyncio.shield(self._closing)

    async def _shutdown(self, code: int, reason: str) -> None:
        try:
            if self._metrics is not None:
                await self._metrics.close()
            if self._control is None:
                for conn in list(self._endpoint.connections):
                    conn.close(code, reason)
                await asyncio.sleep(0.05)  # let the closes reach the wire
                self._endpoint.close()
                self._fe.close()
            if self.federation is not None:
                await self.federation.close()
            await self._supervisor.close()
            if self._control is not None:
                self._control.close()
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until the Coordinator has stopped; raises `CoordinatorFailed`
        if it shut itself down."""
        await self._closed.wait()
        if self._failure is not None:
            raise self._failure


_CLIENTS = msgspec.msgpack.Decoder(list[ClientFigures])

#: Figures of the shards that `stats()` sums.
_SUMMED = ("clients", "connections", "half_open", "retries_sent", "junk_dropped",
           "resets_sent", "resets_limited", "streams",
           "streams_opened", "broadcasts", "broadcast_deliveries", "watches",
           "messages_forwarded", "bytes_forwarded", "connections_accepted",
           "writers_paused", "writers_resumed")


#: One front-end's place, figures (`shard.figures`; None: it did not answer)
#: and loop lag.
_Front = tuple[dict[str, Any], dict[str, int] | None, float | None]


def _shard_reply(slot: _Slot, r: ipc.StatsReply | None) -> _Front:
    return ({"shard": slot.index, "pid": slot.proc.pid if slot.proc else None,
             "ready": slot.ready, "restarts": slot.restarts},
            r.figures if r is not None else None, r.loop_lag if r is not None else None)


def _shard_totals(shards: list[_Front]) -> dict[str, Any]:
    """`stats()` of the front-ends' figures (a shard that did not answer is
    counted with 0 clients): summed, each one's (`frontends`), and
    `frontends_imbalance`."""
    totals: dict[str, Any] = {k: 0 for k in _SUMMED}
    refused: dict[str, int] = {}
    frontends: list[dict[str, Any]] = []
    lag = 0.0
    for place, fig, loop_lag in sorted(shards, key=lambda s: int(s[0]["shard"])):
        fig = fig or {}
        for k in _SUMMED:
            totals[k] += fig.get(k, 0)
        for k, v in fig.items():
            if k.startswith("refused."):
                refused[k[8:]] = refused.get(k[8:], 0) + v
        lag = max(lag, loop_lag or 0.0)
        frontends.append({
            **place, "clients": fig.get("clients", 0),
            "messages_forwarded": fig.get("messages_forwarded", 0),
            "bytes_forwarded": fig.get("bytes_forwarded", 0),
            "cpu_seconds": fig.get("cpu_ms", 0) / 1000, "loop_lag": loop_lag})
    totals["refused"] = refused
    totals["loop_lag"] = lag
    totals["frontends"] = frontends
    totals["frontends_imbalance"] = imbalance(f["clients"] for f in frontends)
    return totals


def _resolver(fut: asyncio.Future[ipc.WorkerReply]
              ) -> Callable[[ipc.WorkerReply], None]:
    def resolve(reply: ipc.WorkerReply) -> None:
        if not fut.done():
            fut.set_result(reply)
    return resolve
