"""What the Coordinator's HTTP endpoint serves, without I/O.

The front-end's figures are taken at once, on its event loop, into a
`Snapshot` (workers' and front-end shards' figures come in it, over
ZeroMQ); `families` turns one
into Prometheus metric families, `SnapshotCollector` gives them to a
prometheus-client registry (its own, never the global one), `health` and
`clients_page` build the JSON of /healthz and /clients. `metrics_http`
serves them. No label ever takes a client id: one series per client would
grow without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: /clients paging (like NATS's /connz): entries per page by default, at most.
CLIENTS_LIMIT = 1024
CLIENTS_LIMIT_MAX = 1 << 20
#: The kinds of streams the front-end carries (the `kind` label).
STREAM_KINDS = ("proxied", "broadcast")


@dataclass(frozen=True, slots=True)
class WorkerFigures:
    """One worker slot as the supervisor sees it, with the worker's own
    event loop lag if it answered."""

    kind: str
    slot: int
    pid: int | None
    up: bool
    restarts: int
    loop_lag: float | None = None

    @property
    def process(self) -> str:
        """The `process` label: `routing-0`, `broadcast-1`..."""
        return f"{self.kind}-{self.slot}"


@dataclass(frozen=True, slots=True)
class ShardFigures:
    """One front-end shard that answered (`stats()["frontends"]`' figures);
    with `frontends=1`, the Coordinator's own front-end as shard 0."""

    shard: int
    clients: int
    messages_forwarded: int
    bytes_forwarded: int
    cpu_seconds: float
    loop_lag: float


def imbalance(clients: Iterable[int]) -> float:
    """The busiest shard's clients over the mean of all shards': 1.0 when
    they are even, for one shard, and for no clients at all."""
    counts = list(clients)
    total = sum(counts)
    if not counts or total == 0:
        return 1.0
    return max(counts) * len(counts) / total


#: The shards' figures (`shard.figures` keys) that are counters: totals
#: that must not go down when a shard restarts (`ShardCounters`).
SHARD_COUNTERS = ("connections_accepted", "retries_sent", "junk_dropped", "streams_opened",
                  "messages_forwarded", "bytes_forwarded", "broadcast_deliveries",
                  "writers_paused", "writers_resumed")


class ShardCounters:
    """Keeps the counters summed over shards from going down when a shard
    restarts (its new process counts from 0; Prometheus would read the drop
    of the sum as a reset of all of it): what each shard's previous
    processes counted, as last seen, is carried into the totals. Counts
    between a shard's last answer and its death are lost."""

    def __init__(self) -> None:
        #: shard -> (generation, its counters as last seen)
        self._seen: dict[int, tuple[int, dict[str, int]]] = {}
        self._carried: dict[str, int] = {}

    def seen(self, shard: int, generation: int, figures: dict[str, int]) -> None:
        """Shard `shard`'s process of `generation` (one per start) answered."""
        counters = {k: v for k, v in figures.items()
                    if k in SHARD_COUNTERS or k.startswith("refused.")}
        last = self._seen.get(shard)
        if last is not None and last[0] != generation:
            for k, v in last[1].items():
                self._carried[k] = self._carried.get(k, 0) + v
        self._seen[shard] = (generation, counters)

    def carried(self) -> dict[str, int]:
        """What previous processes of the shards counted (`figures` keys)."""
        return dict(self._carried)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The Coordinator's figures at one moment."""

    clients: int = 0
    connections_accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    half_open: int = 0
    retry_packets: int = 0
    junk_datagrams: int = 0
    streams_open: dict[str, int] = field(default_factory=dict)
    streams_opened: int = 0
    messages_forwarded: int = 0
    bytes_forwarded: int = 0
    broadcasts: int = 0
    broadcast_deliveries: int = 0
    writers_paused: int = 0
    writers_resumed: int = 0
    watches: int = 0
    #: the in-process front-end's loop lag; None when it runs in shards,
    #: whose lag is their `WorkerFigures.loop_lag` (process `frontend-K`)
    frontend_lag: float | None = 0.0
    workers: list[WorkerFigures] = field(default_factory=list)
    #: the shards that answered
    shards: list[ShardFigures] = field(default_factory=list)
    #: `imbalance` over every shard, those that did not answer as 0 clients
    frontends_imbalance: float = 1.0


@dataclass(frozen=True, slots=True)
class ClientFigures:
    """One admitted client, as /clients lists it."""

    id: str
    address: str
    shard: int
    connected_since: float
    streams: int
    bytes_in: int
    bytes_out: int
    messages_in: int
    messages_out: int
    rtt_seconds: float

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "address": self.address, "shard": self.shard,
                "connected_since": self.connected_since, "streams": self.streams,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "messages_in": self.messages_in, "messages_out": self.messages_out,
                "rtt_seconds": self.rtt_seconds}


def format_address(host: str, port: int) -> str:
    """"host:port", with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by_label(family: CounterMetricFamily | GaugeMetricFamily,
              values: Iterable[tuple[str, float]]) -> CounterMetricFamily | GaugeMetricFamily:
    for label, value in values:
        family.add_metric([label], value)
    return family


def families(s: Snapshot) -> list[Metric]:
    """Every metric of the endpoint, from one snapshot."""
    kinds = sorted({w.kind for w in s.workers})
    lag = [] if s.frontend_lag is None else [("frontend", s.frontend_lag)]
    lag += [(w.process, w.loop_lag) for w in s.workers if w.loop_lag is not None]
    return [
        _gauge("conec_clients", "Clients connected and admitted.", s.clients),
        _counter("conec_connections_accepted",
                 "QUIC connections accepted (a valid first packet).", s.connections_accepted),
        _by_label(CounterMetricFamily(
            "conec_connections_refused", "Connections refused before admission, by reason.",
            labels=["reason"]), sorted(s.refused.items())),
        _gauge("conec_half_open_handshakes", "QUIC handshakes under way.", s.half_open),
        _counter("conec_retry_packets", "QUIC Retry packets sent (address validation).",
                 s.retry_packets),
        _counter("conec_junk_datagrams",
                 "Datagrams that looked like a first packet but were not valid.",
                 s.junk_datagrams),
        _by_label(GaugeMetricFamily("conec_streams_open", "Streams carried now, by kind.",
                                    labels=["kind"]),
                  ((k, s.streams_open.get(k, 0)) for k in STREAM_KINDS)),
        _counter("conec_streams_opened", "Proxied streams opened.", s.streams_opened),
        _counter("conec_messages_forwarded",
                 "Messages forwarded on proxied streams and broadcasts.", s.messages_forwarded),
        _counter("conec_bytes_forwarded",
                 "Bytes forwarded on proxied streams and broadcasts.", s.bytes_forwarded),
        _gauge("conec_broadcasts", "Broadcasts that exist.", s.broadcasts),
        _counter("conec_broadcast_deliveries",
                 "Broadcast messages delivered, one per reader.", s.broadcast_deliveries),
        _counter("conec_writers_paused",
                 "Times writers were held back because a reader did not keep up.",
                 s.writers_paused),
        _counter("conec_writers_resumed",
                 "Times writers held back by a slow reader could go on.", s.writers_resumed),
        _by_label(CounterMetricFamily("conec_restarts",
                                      "Worker and front-end shard restarts, by kind.",
                                      labels=["kind"]),
                  ((k, sum(w.restarts for w in s.workers if w.kind == k)) for k in kinds)),
        _by_label(GaugeMetricFamily("conec_workers_up",
                                    "Workers and front-end shards up, by kind.",
                                    labels=["kind"]),
                  ((k, sum(w.up for w in s.workers if w.kind == k)) for k in kinds)),
        _gauge("conec_watches", "Death watches held.", s.watches),
        _by_label(GaugeMetricFamily(
            "conec_event_loop_lag_seconds",
            "Worst lateness of a periodic timer in the last seconds, by process.",
            labels=["process"]), lag),
        *_shard_families(s),
    ]


def _shard_families(s: Snapshot) -> list[Metric]:
    """Per front-end shard (`shard` label), and how evenly they are filled
    (while any shard answered)."""
    def per_shard(family: CounterMetricFamily | GaugeMetricFamily, attr: str
                  ) -> CounterMetricFamily | GaugeMetricFamily:
        return _by_label(family, ((str(f.shard), getattr(f, attr)) for f in s.shards))

    out: list[Metric] = [
        per_shard(GaugeMetricFamily("conec_shard_clients", "Clients held, by front-end shard.",
                                    labels=["shard"]), "clients"),
        per_shard(CounterMetricFamily(
            "conec_shard_messages_forwarded",
            "Messages forwarded, by front-end shard (since its last start).",
            labels=["shard"]), "messages_forwarded"),
        per_shard(CounterMetricFamily(
            "conec_shard_bytes_forwarded",
            "Bytes forwarded, by front-end shard (since its last start).",
            labels=["shard"]), "bytes_forwarded"),
        per_shard(CounterMetricFamily(
            "conec_shard_cpu_seconds", "CPU time used, by front-end shard process.",
            labels=["shard"]), "cpu_seconds"),
        per_shard(GaugeMetricFamily(
            "conec_shard_event_loop_lag_seconds",
            "Worst lateness of a periodic timer in the last seconds, by front-end shard.",
            labels=["shard"]), "loop_lag"),
    ]
    if s.shards:
        out.append(_gauge("conec_frontends_imbalance",
                          "The busiest front-end shard's clients over the mean (1: even).",
                          s.frontends_imbalance))
    return out


class SnapshotCollector(Collector):
    """A prometheus-client collector building every metric from one
    `take()` per scrape (it may raise: the scrape fails, nothing is
    served half)."""

    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self._take = take

    def collect(self) -> Iterator[Metric]:
        return iter(families(self._take()))


def health(workers: Iterable[WorkerFigures]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /healthz: 200 while every worker and front-end
    shard (kind "frontend") is up, else 503 naming those down."""
    down = [f"frontend shard {w.slot}" if w.kind == "frontend" else f"{w.kind} worker {w.slot}"
            for w in workers if not w.up]
    if down:
        return 503, {"status": "down", "down": down}
    return 200, {"status": "ok", "down": []}


def page_bounds(query: str) -> tuple[int, int]:
    """(limit, offset) of a /clients query string; ValueError if not numbers
    in range."""
    params = parse_qs(query)
    try:
        limit = int(params.get("limit", [CLIENTS_LIMIT])[-1])
        offset = int(params.get("offset", [0])[-1])
    except ValueError:
        raise ValueError("limit and offset must be integers") from None
    if not 0 <= limit <= CLIENTS_LIMIT_MAX or offset < 0:
        raise ValueError(f"limit must be in [0, {CLIENTS_LIMIT_MAX}] and offset at least 0")
    return limit, offset


def clients_page(clients: Iterable[ClientFigures], limit: int, offset: int
                 ) -> dict[str, Any]:
    """The body of /clients: every client's figures sorted by id, one page."""
    ordered = sorted(clients, key=lambda c: c.id)
    return {"num_clients": len(ordered), "offset": offset, "limit": limit,
            "clients": [c.json() for c in ordered[offset:offset + limit]]}
