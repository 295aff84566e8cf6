"""Tests for conec_actors.top (``conec-actors top``): snapshots and their
rendering fed by exposition text that prometheus-client itself writes (the
metric names of DESIGN.md section 10), `fetch` and ``top --once`` against a
small HTTP server serving it, and ``top --once`` against a real Coordinator
(once CoordConfig has ``metrics``)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from conec_actors import CoordConfig
from conec_actors.cli import main
from conec_actors.cli_parser import DEFAULT_METRICS_URL, build_parser
from conec_actors.top import (
    Scrape,
    TopError,
    base_url,
    fetch,
    parse_metrics,
    render_text,
    rich_view,
    sections,
    snapshot,
)
from tests.conftest import coordinator


class Metrics:
    """A registry with the Coordinator's metric names, as prometheus-client
    exposes them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.clients = Gauge("conec_clients", "clients", registry=r)
        self.accepted = Counter("conec_connections_accepted", "accepted", registry=r)
        self.refused = Counter("conec_connections_refused", "refused", ["reason"],
                               registry=r)
        self.half_open = Gauge("conec_half_open_handshakes", "half open", registry=r)
        self.streams_open = Gauge("conec_streams_open", "open", ["kind"], registry=r)
        self.opened = Counter("conec_streams_opened", "opened", registry=r)
        self.messages = Counter("conec_messages_forwarded", "messages", registry=r)
        self.bytes = Counter("conec_bytes_forwarded", "bytes", registry=r)
        self.broadcasts = Gauge("conec_broadcasts", "broadcasts", registry=r)
        self.deliveries = Counter("conec_broadcast_deliveries", "deliveries", registry=r)
        self.restarts = Counter("conec_restarts", "restarts", ["kind"], registry=r)
        self.up = Gauge("conec_workers_up", "up", ["kind"], registry=r)
        self.watches = Gauge("conec_watches", "watches", registry=r)
        self.retry = Counter("conec_retry_packets", "retry", registry=r)
        self.junk = Counter("conec_junk_datagrams", "junk", registry=r)
        self.paused = Counter("conec_writers_paused", "paused", registry=r)
        self.resumed = Counter("conec_writers_resumed", "resumed", registry=r)
        self.lag = Gauge("conec_event_loop_lag_seconds", "lag", ["process"], registry=r)
        for kind in ("routing", "broadcast"):
            self.up.labels(kind).set(1)
            self.restarts.labels(kind)
        for proc, lag in (("frontend", 0.0021), ("routing-0", 0.0004),
                          ("broadcast-0", 0.0001)):
            self.lag.labels(proc).set(lag)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def client(cid: str, moved: int, streams: int = 1) -> dict[str, Any]:
    return {"id": cid, "address": f"127.0.0.1:{40000 + len(cid)}", "shard": 0,
            "connected_since": 1.7e9, "streams": streams, "bytes_in": moved // 2,
            "bytes_out": moved - moved // 2, "messages_in": 1, "messages_out": 1,
            "rtt_seconds": 0.0012}


def field(text: str, label: str) -> str:
    """The value on `text`'s ``label: value`` line."""
    found = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.startswith(f"  {label}:")]
    assert len(found) == 1, (label, text)
    return found[0]


@pytest.fixture
def m() -> Metrics:
    return Metrics()


# -- parsing and snapshots -----------------------------------------------------------


def test_parse_metrics_keys_samples_by_name_and_labels(m: Metrics) -> None:
    m.refused.labels("duplicate_id").inc(3)
    m.clients.set(2)
    samples = parse_metrics(m.text())
    assert samples[("conec_connections_refused_total", (("reason", "duplicate_id"),))] == 3
    assert samples[("conec_clients", ())] == 2
    assert samples[("conec_workers_up", (("kind", "routing"),))] == 1


def test_first_snapshot_has_totals_but_no_rates(m: Metrics) -> None:
    m.clients.set(2)
    m.messages.inc(500)
    m.refused.labels("bad_certificate").inc(2)
    m.streams_open.labels("proxied").set(3)
    m.restarts.labels("routing").inc()
    snap = snapshot(Scrape(10.0, parse_metrics(m.text())))
    assert snap.clients == 2 and snap.interval is None
    assert set(snap.rates.values()) == {None}
    assert snap.refusals == {"bad_certificate": (2.0, None)}
    assert snap.workers == {"broadcast": (1.0, 0.0), "routing": (1.0, 1.0)}
    assert snap.loop_lag == {"broadcast-0": 0.0001, "frontend": 0.0021, "routing-0": 0.0004}
    assert snap.streams_open == {"proxied": 3.0}
    assert snap.figures["half-open handshakes"] == 0


def test_rates_are_the_increase_between_two_scrapes(m: Metrics) -> None:
    m.messages.inc(100)
    m.bytes.inc(6400)
    m.refused.labels("duplicate_id").inc(1)
    before = Scrape(10.0, parse_metrics(m.text()))
    m.messages.inc(1000)
    m.bytes.inc(64000)
    m.deliveries.inc(50)
    m.refused.labels("duplicate_id").inc(4)
    m.refused.labels("hello_timeout").inc(2)  # a reason first seen now
    snap = snapshot(Scrape(12.0, parse_metrics(m.text())), before)
    assert snap.interval == 2.0
    assert snap.rates["messages/s"] == 500 and snap.rates["bytes/s"] == 32000
    assert snap.rates["deliveries/s"] == 25 and snap.rates["connections/s"] == 0
    assert snap.rates["refusals/s"] == 3
    assert snap.refusals == {"duplicate_id": (5.0, 2.0), "hello_timeout": (2.0, 1.0)}


def test_a_counter_that_went_down_was_reset() -> None:
    before = Scrape(0.0, {("conec_messages_forwarded_total", ()): 900.0})
    after = Scrape(1.0, {("conec_messages_forwarded_total", ()): 40.0})
    assert snapshot(after, before).rates["messages/s"] == 40


def test_missing_metrics_show_as_absent_not_zero() -> None:
    snap = snapshot(Scrape(1.0, {}), Scrape(0.0, {}))
    assert snap.clients is None and snap.rates["messages/s"] is None
    assert snap.workers == {} and snap.refusals == {} and snap.top_clients == []


def test_top_clients_by_bytes_with_their_rates(m: Metrics) -> None:
    many = [client(f"c{i:02d}", i * 1000) for i in range(15)]
    before = Scrape(0.0, {}, many, 15)
    now = [client(c["id"], c["bytes_in"] + c["bytes_out"]) for c in many]
    now[0] = client("c00", 10**6)  # the quietest becomes the busiest
    now.append(client("new", 500))
    snap = snapshot(Scrape(0.5, {}, now, 16), before)
    ids = [c.id for c in snap.top_clients]
    assert ids == ["c00", "c14", "c13", "c12", "c11", "c10", "c09", "c08", "c07", "c06"]
    assert snap.top_clients[0].bytes_per_s == 2 * 10**6
    assert snap.top_clients[1].bytes_per_s == 0
    assert snap.clients == 16  # from /clients when there is no gauge
    assert snapshot(Scrape(0.5, {}, now, 16)).top_clients[0].bytes_per_s is None
    paged = snapshot(Scrape(0.5, {}, now, 2000))  # /clients gave its first page only
    assert "Top clients by bytes (among the first 16 of 2000)" in render_text(paged, "u")


# -- rendering -----------------------------------------------------------------------


def rich_text(renderable: Any) -> str:
    from rich.console import Console

    console = Console(record=True, width=120, force_terminal=False)
    console.print(renderable)
    return console.export_text()


def busy_snapshot(m: Metrics) -> Any:
    m.clients.set(2)
    before = Scrape(0.0, parse_metrics(m.text()), [client("alice", 0), client("bob", 0)], 2,
                    ("ok", []))
    m.messages.inc(2500)
    m.bytes.inc(2_500_000)
    m.refused.labels("duplicate_id").inc(1)
    m.up.labels("routing").set(0)
    m.restarts.labels("routing").inc()
    m.junk.inc(1200)
    m.paused.inc(3)
    return snapshot(Scrape(1.0, parse_metrics(m.text()),
                           [client("alice", 2_000_000, 2), client("bob", 500_000)], 2,
                           ("down", ["routing worker 0"])), before)


def test_text_view_has_every_section(m: Metrics) -> None:
    text = render_text(busy_snapshot(m), "http://127.0.0.1:9464")
    lines = text.splitlines()
    assert lines[0] == "conec-actors top: http://127.0.0.1:9464"
    assert field(text, "clients") == "2"
    assert field(text, "health") == "down (routing worker 0)"
    assert field(text, "messages/s") == "2.50 k"
    assert field(text, "bytes/s") == "2.50 MB"
    assert field(text, "streams/s") == "0"
    assert field(text, "junk datagrams (total)") == "1.20 k"
    assert field(text, "writers paused (total)") == "3"
    assert any(line.split() == ["routing", "0", "1"] for line in lines)  # down, restarted
    assert any(line.split() == ["frontend", "2.1", "ms"] for line in lines)
    assert any(line.split() == ["duplicate_id", "1", "1"] for line in lines)
    top = lines[lines.index("Top clients by bytes (of 2)") + 1:]
    assert top[0].split() == ["id", "address", "streams", "bytes", "in", "bytes", "out",
                              "bytes/s", "rtt"]
    assert top[1].split()[:3] == ["alice", "127.0.0.1:40005", "2"]
    assert top[1].split()[-4:] == ["2.00", "MB", "1.2", "ms"]
    assert top[2].split()[0] == "bob"


def test_text_view_before_any_traffic(m: Metrics) -> None:
    text = render_text(snapshot(Scrape(0.0, parse_metrics(m.text()))), "u")
    assert "Rates (after the next scrape)" in text
    assert field(text, "messages/s") == "-"
    refusals = text.splitlines().index("Refusals")
    assert text.splitlines()[refusals + 1] == "  (none)"


def test_rich_view_draws_the_same_sections(m: Metrics) -> None:
    pytest.importorskip("rich", reason="the live view needs the 'top' extra (rich)")
    snap = busy_snapshot(m)
    out = rich_text(rich_view(snap, "http://h:1"))
    for sec in sections(snap):
        assert sec.title in out
    assert "routing worker 0" in out and "alice" in out and "2.50 MB" in out


# -- fetching from an HTTP endpoint --------------------------------------------------


class Endpoint:
    """/metrics, /clients and /healthz served from a thread, like the
    Coordinator's endpoint (the contract in DESIGN.md section 10)."""

    def __init__(self, m: Metrics) -> None:
        self.m = m
        self.clients = [client("alice", 4096), client("bob", 1024)]
        self.scrapes = 0
        self.health: tuple[int, dict[str, Any]] = (200, {"status": "ok", "down": []})
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    endpoint.scrapes += 1
                    status, body, ctype = 200, endpoint.m.text().encode(), "text/plain"
                elif path == "/clients":
                    body = json.dumps({"num_clients": len(endpoint.clients),
                                       "clients": endpoint.clients}).encode()
                    status, ctype = 200, "application/json"
                elif path == "/healthz":
                    status, doc = endpoint.health
                    body, ctype = json.dumps(doc).encode(), "application/json"
                else:
                    status, body, ctype = 404, b"not found", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def endpoint(m: Metrics) -> Iterator[Endpoint]:
    e = Endpoint(m)
    try:
        yield e
    finally:
        e.close()


def test_fetch_reads_the_three_endpoints(endpoint: Endpoint, m: Metrics) -> None:
    m.clients.set(2)
    got = fetch(endpoint.url + "/", clock=lambda: 42.0)
    assert got.at == 42.0 and got.num_clients == 2 and got.health == ("ok", [])
    assert [c["id"] for c in got.clients or []] == ["alice", "bob"]
    assert got.samples[("conec_clients", ())] == 2
    endpoint.health = (503, {"status": "down", "down": ["routing worker 0"]})
    assert fetch(endpoint.url).health == ("down", ["routing worker 0"])


def test_fetch_errors_are_one_line(endpoint: Endpoint) -> None:
    with pytest.raises(TopError, match=r"^cannot reach http://127\.0\.0\.1:1: "):
        fetch("127.0.0.1:1")
    with pytest.raises(TopError, match="HTTP 404"):
        fetch(endpoint.url + "/nothing-here")


def test_base_url() -> None:
    assert base_url("127.0.0.1:9464/") == "http://127.0.0.1:9464"
    assert base_url("https://h/x") == "https://h/x"


def test_top_options() -> None:
    args = build_parser().parse_args(["top"])
    assert (args.metrics, args.once, args.interval) == (DEFAULT_METRICS_URL, False, 1.0)
    assert DEFAULT_METRICS_URL == "http://127.0.0.1:9464"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["top", "--interval", "0"])


def top_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conec_actors.cli", "top", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(60)
def test_top_once_prints_a_snapshot_and_exits(endpoint: Endpoint, m: Metrics) -> None:
    m.clients.set(2)
    m.messages.inc(7)
    r = top_cli("--once", "--metrics", endpoint.url, "--interval", "0.1")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == f"conec-actors top: {endpoint.url}"
    assert field(r.stdout, "clients") == "2" and field(r.stdout, "health") == "ok"
    assert field(r.stdout, "messages/s") == "0"  # nothing moved between the two scrapes
    assert any(line.split()[:1] == ["alice"] for line in lines)


@pytest.mark.timeout(60)
def test_top_on_an_unreachable_endpoint_exits_1_with_one_line() -> None:
    for args in (("--once",), ()):
        r = top_cli("--metrics", "http://127.0.0.1:1", *args)
        assert r.returncode == 1
        assert r.stderr.splitlines() == [
            "conec-actors: cannot reach http://127.0.0.1:1: [Errno 111] Connection refused"]
        assert r.stdout == ""


# -- a real Coordinator --------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_top_once_against_a_running_coordinator() -> None:
    if "metrics" not in {f.name for f in dataclasses.fields(CoordConfig)}:
        pytest.skip("CoordConfig has no metrics yet")
    async with coordinator(metrics="127.0.0.1:0") as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _recv = await a.new_proxied_stream("bob")
        incoming = await asyncio.wait_for(anext(b.incoming), 5)
        for _ in range(20):
            await send.send(b"x" * 1000)
        for _ in range(20):
            assert await incoming.recv.recv() == b"x" * 1000
        host, port = h.coord.metrics_address  # type: ignore[attr-defined]
        url = f"http://{host}:{port}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "conec_actors.cli", "top", "--once", "--metrics", url,
            "--interval", "0.2", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    lines = text.splitlines()
    assert lines[0] == f"conec-actors top: {url}"
    assert field(text, "clients") == "2" and field(text, "health") == "ok"
    assert any(line.split() == ["routing", "1", "0"] for line in lines)  # up, no restart
    top = lines[lines.index("Top clients by bytes (of 2)") + 2:]
    assert {row.split()[0] for row in top[:2]} == {"alice", "bob"}


@pytest.mark.timeout(60)
def test_live_view_redraws_until_ctrl_c(endpoint: Endpoint, m: Metrics) -> None:
    pytest.importorskip("rich", reason="the live view needs the 'top' extra (rich)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "conec_actors.cli", "top", "--metrics", endpoint.url,
         "--interval", "0.1"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        m.clients.set(3)
        deadline = time.monotonic() + 30
        while endpoint.scrapes < 3 and time.monotonic() < deadline:  # redrawn twice
            time.sleep(0.05)
        assert endpoint.scrapes >= 3
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "conec-actors top" in out and "Top clients by bytes (of 3)" in out
    assert "alice" in out and "bob" in out
    assert "Traceback" not in err


def test_live_view_without_rich_names_the_extra(
        endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # import fails
    assert main(["top", "--metrics", endpoint.url]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "conec-actors: the live view needs rich: pip install 'conec-actors[top]' "
        "(or use --once)"]
    assert endpoint.scrapes == 0
