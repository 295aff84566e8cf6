"""``conec-actors top``: a live view of a running Coordinator, read from its
metrics endpoint (``/metrics``, ``/clients``, ``/healthz``; DESIGN.md
section 10).

The work is split so that most of it is plain functions: `fetch` reads the
endpoint into a `Scrape`, `snapshot` turns two successive scrapes into a
`Snapshot` (rates are the counters' increase between them), `sections`
lays a snapshot out as titled rows, and `render_text` / `rich_view` draw
those rows as plain text (``--once``) or as rich tables (the live view,
extra ``top``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = [
    "ClientRow",
    "Scrape",
    "Section",
    "ShardRow",
    "Snapshot",
    "TopError",
    "fetch",
    "parse_metrics",
    "render_text",
    "rich_view",
    "run_live",
    "run_once",
    "sections",
    "snapshot",
]

#: Clients listed by bytes moved.
TOP_CLIENTS = 10

#: Seconds an HTTP request to the endpoint may take.
HTTP_TIMEOUT = 5.0

#: The counters shown as rates: label on screen -> metric (its ``_total`` sample).
RATES: tuple[tuple[str, str], ...] = (
    ("messages/s", "conec_messages_forwarded_total"),
    ("bytes/s", "conec_bytes_forwarded_total"),
    ("deliveries/s", "conec_broadcast_deliveries_total"),
    ("connections/s", "conec_connections_accepted_total"),
    ("refusals/s", "conec_connections_refused_total"),
    ("streams/s", "conec_streams_opened_total"),
)

#: A sample's key: its name and its labels, sorted.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class TopError(Exception):
    """The endpoint cannot be read (one line, for the command line)."""


# -- scrapes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """What one visit to the endpoint read, at monotonic time `at`."""

    at: float
    samples: Mapping[SampleKey, float]
    #: ``/clients``' entries (None when the endpoint has no ``/clients``).
    clients: Sequence[Mapping[str, Any]] | None = None
    num_clients: int | None = None
    #: ``/healthz``: ``(status, down)``; None when there is none.
    health: tuple[str, Sequence[str]] | None = None


def parse_metrics(text: str) -> dict[SampleKey, float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    out: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _sum(samples: Mapping[SampleKey, float], name: str) -> float | None:
    values = [v for (n, _labels), v in samples.items() if n == name]
    return sum(values) if values else None


def _by_label(samples: Mapping[SampleKey, float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def _increase(now: float | None, before: float | None) -> float | None:
    if now is None or before is None:
        return None
    # A counter that went down was reset (the Coordinator restarted): like
    # Prometheus' rate(), count from zero.
    return now - before if now >= before else now


# -- snapshots -----------------------------------------------------------------------


@dataclass(frozen=True)
class ClientRow:
    """One client in the list of the busiest."""

    id: str
    address: str
    streams: int
    bytes_in: int
    bytes_out: int
    #: Bytes per second both ways since the previous scrape (None: first seen).
    bytes_per_s: float | None
    rtt_seconds: float
    #: The front-end shard holding it (None: not said).
    shard: int | None = None


@dataclass(frozen=True)
class ShardRow:
    """One front-end shard (the ``shard`` label of ``conec_shard_*``)."""

    shard: str
    clients: float
    #: Per second since the previous scrape (None: no previous scrape).
    messages_per_s: float | None
    bytes_per_s: float | None
    #: CPU seconds per second (1.0: one core busy), None as for the rates.
    cpu: float | None
    loop_lag: float | None


@dataclass(frozen=True)
class Snapshot:
    """What ``top`` shows at one moment (rates need a previous scrape)."""

    clients: int | None
    health: tuple[str, Sequence[str]] | None
    #: Screen label -> per second, None without a previous scrape or metric.
    rates: dict[str, float | None]
    #: reason -> (total, per second or None).
    refusals: dict[str, tuple[float, float | None]]
    #: kind -> (up, restarts).
    workers: dict[str, tuple[float, float]]
    #: process -> seconds.
    loop_lag: dict[str, float]
    #: kind -> streams open.
    streams_open: dict[str, float]
    #: name on screen -> value: gauges now, counters since the start.
    figures: dict[str, float]
    top_clients: list[ClientRow] = field(default_factory=list)
    #: The interval the rates are over (seconds), None without a previous scrape.
    interval: float | None = None
    #: ``/clients``: how many it listed (its first page: by id, up to 1024)
    #: and how many it said there are.
    listed: tuple[int, int] | None = None
    #: The front-end shards, by number.
    shards: list[ShardRow] = field(default_factory=list)
    #: The busiest shard's clients over the mean (``conec_frontends_imbalance``).
    imbalance: float | None = None


#: Figures shown as they are: label on screen -> metric.
_FIGURES: tuple[tuple[str, str], ...] = (
    ("half-open handshakes", "conec_half_open_handshakes"),
    ("broadcasts", "conec_broadcasts"),
    ("watches", "conec_watches"),
    ("writers paused (total)", "conec_writers_paused_total"),
    ("writers resumed (total)", "conec_writers_resumed_total"),
    ("retry packets (total)", "conec_retry_packets_total"),
    ("junk datagrams (total)", "conec_junk_datagrams_total"),
)


def snapshot(cur: Scrape, prev: Scrape | None = None) -> Snapshot:
    """The view of `cur`, with rates over the time since `prev` (if any)."""
    s = cur.samples
    dt = cur.at - prev.at if prev is not None and cur.at > prev.at else None

    def rate(now: float | None, before: float | None) -> float | None:
        if before is None and prev is not None:
            before = 0.0  # a labelled series that appeared since
        inc = _increase(now, before)
        return None if inc is None or dt is None else inc / dt

    p = prev.samples if prev is not None else {}
    rates = {label: rate(_sum(s, name), _sum(p, name)) for label, name in RATES}
    refused = _by_label(s, "conec_connections_refused_total", "reason")
    refused_before = _by_label(p, "conec_connections_refused_total", "reason")
    refusals = {reason: (total, rate(total, refused_before.get(reason)))
                for reason, total in sorted(refused.items(), key=lambda kv: -kv[1])}
    up = _by_label(s, "conec_workers_up", "kind")
    restarts = _by_label(s, "conec_restarts_total", "kind")
    workers = {kind: (up.get(kind, 0.0), restarts.get(kind, 0.0))
               for kind in sorted(up.keys() | restarts.keys())}
    figures = {label: v for label, name in _FIGURES if (v := _sum(s, name)) is not None}
    clients_gauge = _sum(s, "conec_clients")
    n_clients = int(clients_gauge) if clients_gauge is not None else cur.num_clients
    return Snapshot(
        clients=n_clients, health=cur.health, rates=rates, refusals=refusals,
        workers=workers,
        loop_lag=dict(sorted(_by_label(s, "conec_event_loop_lag_seconds", "process").items())),
        streams_open=dict(sorted(_by_label(s, "conec_streams_open", "kind").items())),
        figures=figures, top_clients=_top_clients(cur, prev, dt), interval=dt,
        listed=None if cur.clients is None or cur.num_clients is None
        else (len(cur.clients), cur.num_clients),
        shards=_shards(s, p, rate), imbalance=_sum(s, "conec_frontends_imbalance"))


def _shards(s: Mapping[SampleKey, float], p: Mapping[SampleKey, float],
            rate: Callable[[float | None, float | None], float | None]) -> list[ShardRow]:
    def by_shard(samples: Mapping[SampleKey, float], name: str) -> dict[str, float]:
        return _by_label(samples, name, "shard")

    clients = by_shard(s, "conec_shard_clients")
    per_s = [(by_shard(s, name), by_shard(p, name)) for name in (
        "conec_shard_messages_forwarded_total", "conec_shard_bytes_forwarded_total",
        "conec_shard_cpu_seconds_total")]
    lag = by_shard(s, "conec_shard_event_loop_lag_seconds")
    rows = []
    for shard in sorted(clients, key=lambda k: (len(k), k)):  # numerically
        msgs, nbytes, cpu = (rate(now.get(shard), before.get(shard)) for now, before in per_s)
        rows.append(ShardRow(shard, clients[shard], msgs, nbytes, cpu, lag.get(shard)))
    return rows


def _moved(c: Mapping[str, Any]) -> int:
    return int(c.get("bytes_in", 0)) + int(c.get("bytes_out", 0))


def _top_clients(cur: Scrape, prev: Scrape | None, dt: float | None) -> list[ClientRow]:
    if not cur.clients:
        return []
    before = {str(c.get("id")): _moved(c) for c in (prev.clients or [])} \
        if prev is not None else {}
    busiest = sorted(cur.clients, key=lambda c: (-_moved(c), str(c.get("id"))))[:TOP_CLIENTS]
    rows = []
    for c in busiest:
        cid = str(c.get("id"))
        was = before.get(cid)
        inc = _increase(float(_moved(c)), None if was is None else float(was))
        rows.append(ClientRow(
            id=cid, address=str(c.get("address", "")), streams=int(c.get("streams", 0)),
            bytes_in=int(c.get("bytes_in", 0)), bytes_out=int(c.get("bytes_out", 0)),
            bytes_per_s=None if inc is None or dt is None else inc / dt,
            rtt_seconds=float(c.get("rtt_seconds", 0.0)),
            shard=None if c.get("shard") is None else int(c["shard"])))
    return rows


# -- layout --------------------------------------------------------------------------


def _si(value: float | None, unit: str = "") -> str:
    """``1234567`` -> ``"1.23 M"`` (decimal prefixes); ``-`` for None."""
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    text = f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{text} {unit}" if unit else text


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


@dataclass(frozen=True)
class Section:
    """A titled table: a header row (empty for label/value lists) and rows."""

    title: str
    header: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    #: Leading columns of text (left-aligned); the others are figures.
    text_columns: int = 1


def sections(snap: Snapshot) -> list[Section]:
    """`snap` laid out as the tables both views draw."""
    overview: list[tuple[str, ...]] = [("clients", _si(snap.clients))]
    if snap.health is not None:
        status, down = snap.health
        overview.append(("health", status + (f" ({', '.join(down)})" if down else "")))
    if snap.streams_open:
        overview.append(("streams open", ", ".join(
            f"{kind} {_si(v)}" for kind, v in snap.streams_open.items())))
    if snap.imbalance is not None and len(snap.shards) > 1:
        overview.append(("shard imbalance", f"{snap.imbalance:.2f} (busiest / mean)"))
    overview.extend((label, _si(v)) for label, v in snap.figures.items())
    unit = {"bytes/s": "B"}
    rates = [(label, _si(v, unit.get(label, ""))) for label, v in snap.rates.items()]
    out = [Section("Coordinator", (), overview),
           Section("Rates" + ("" if snap.interval is not None else " (after the next scrape)"),
                   (), rates)]
    if snap.shards:
        out.append(Section("Front-end shards", (
            "shard", "clients", "msgs/s", "bytes/s", "cpu", "lag"), [
            (r.shard, _si(r.clients), _si(r.messages_per_s), _si(r.bytes_per_s, "B"),
             "-" if r.cpu is None else f"{r.cpu * 100:.0f}%",
             "-" if r.loop_lag is None else _ms(r.loop_lag)) for r in snap.shards]))
    if snap.workers:
        out.append(Section("Workers", ("kind", "up", "restarts"), [
            (kind, _si(up), _si(restarts)) for kind, (up, restarts) in snap.workers.items()]))
    if snap.loop_lag:
        out.append(Section("Event loop lag", ("process", "lag"), [
            (proc, _ms(lag)) for proc, lag in snap.loop_lag.items()]))
    out.append(Section("Refusals", ("reason", "total", "per s"), [
        (reason, _si(total), _si(r)) for reason, (total, r) in snap.refusals.items()]))
    among = f"of {_si(snap.clients)}"
    if snap.listed is not None and snap.listed[0] < snap.listed[1]:
        among = f"among the first {snap.listed[0]} of {snap.listed[1]}"
    header: tuple[str, ...] = ("id", "address", "streams", "bytes in", "bytes out", "bytes/s",
                               "rtt")
    rows: list[tuple[str, ...]] = [
        (c.id, c.address, str(c.streams), _si(c.bytes_in, "B"), _si(c.bytes_out, "B"),
         _si(c.bytes_per_s, "B"), _ms(c.rtt_seconds)) for c in snap.top_clients]
    if len(snap.shards) > 1:  # which shard holds each one
        header = (*header[:2], "shard", *header[2:])
        rows = [(*r[:2], "-" if c.shard is None else str(c.shard), *r[2:])
                for r, c in zip(rows, snap.top_clients, strict=True)]
    out.append(Section(f"Top clients by bytes ({among})", header, rows, text_columns=2))
    return out


def render_text(snap: Snapshot, url: str) -> str:
    """Plain text of `snap` (what ``--once`` prints)."""
    lines = [f"conec-actors top: {url}"]
    for sec in sections(snap):
        lines.append("")
        lines.append(sec.title)
        if not sec.rows:
            lines.append("  (none)")
            continue
        if not sec.header:  # label: value
            width = max(len(label) for label, *_ in sec.rows) + 1
            lines.extend(f"  {(label + ':').ljust(width)} {' '.join(rest)}"
                         for label, *rest in sec.rows)
            continue
        rows = [sec.header, *sec.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            cells = [c.ljust(w) if i < sec.text_columns else c.rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths, strict=True))]
            lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def rich_view(snap: Snapshot, url: str) -> RenderableType:
    """`snap` as rich tables (the live view; needs the ``top`` extra)."""
    from rich.columns import Columns
    from rich.console import Group
    from rich.table import Table

    tables: list[Table] = []
    for sec in sections(snap):
        t = Table(title=sec.title, title_justify="left", show_header=bool(sec.header),
                  expand=False)
        for i, name in enumerate(sec.header or ("", "")):
            t.add_column(name, justify="left" if i < sec.text_columns else "right")
        for r in sec.rows:
            t.add_row(*r)
        tables.append(t)
    # The small tables side by side, the clients below: one screen.
    return Group(f"[bold]conec-actors top[/bold]: {url}   (Ctrl-C to quit)",
                 Columns(tables[:-1]), tables[-1])


# -- I/O -----------------------------------------------------------------------------


def base_url(url: str) -> str:
    """`url` with a scheme (``http://`` by default) and no trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:  # 503 from /healthz still has a body
        with exc:
            return exc.code, exc.read()


def fetch(url: str, *, timeout: float = HTTP_TIMEOUT,
          clock: Callable[[], float] = time.monotonic) -> Scrape:
    """Read ``/metrics``, ``/clients`` and ``/healthz`` under `url`; raises
    `TopError` when ``/metrics`` cannot be read or parsed."""
    url = base_url(url)
    try:
        status, body = _get(f"{url}/metrics", timeout)
        at = clock()
        if status != 200:
            raise TopError(f"{url}/metrics answered HTTP {status}")
        samples = parse_metrics(body.decode())
        clients = num = health = None
        status, body = _get(f"{url}/clients", timeout)
        if status == 200:
            doc = json.loads(body)
            clients, num = list(doc.get("clients", [])), doc.get("num_clients")
        status, body = _get(f"{url}/healthz", timeout)
        if status in (200, 503):
            doc = json.loads(body)
            health = (str(doc.get("status", "?")), [str(d) for d in doc.get("down", [])])
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TopError(f"cannot reach {url}: {reason}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TopError(f"{url} did not answer like a conec-actors metrics endpoint: {exc}"
                       ) from None
    return Scrape(at, samples, clients, num, health)


def run_once(url: str, interval: float, out: TextIO,
             sleep: Callable[[float], None] = time.sleep) -> None:
    """Print one plain-text snapshot, with rates over `interval` seconds
    (two scrapes); raises `TopError`."""
    first = fetch(url)
    sleep(interval)
    out.write(render_text(snapshot(fetch(url), first), base_url(url)))
    out.flush()


def run_live(url: str, interval: float) -> None:
    """Redraw the view every `interval` seconds until Ctrl-C (KeyboardInterrupt
    propagates); raises `TopError` if the first scrape fails. A scrape that
    fails later is shown and retried."""
    from rich.live import Live
    from rich.text import Text

    shown = base_url(url)
    prev = fetch(url)
    with Live(rich_view(snapshot(prev), shown), auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            try:
                cur = fetch(url)
            except TopError as exc:
                live.update(Text(f"conec-actors top: {exc} (retrying)"), refresh=True)
                continue
            live.update(rich_view(snapshot(cur, prev), shown), refresh=True)
            prev = cur
