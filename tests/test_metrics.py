"""The Coordinator's HTTP endpoint (/metrics, /healthz, /clients) against
real clients and worker processes; /metrics is read with prometheus-client's
own parser."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conec_actors import Coord, CoordConfig, DuplicateId, IncomingStream
from conec_actors.cli import main
from conec_actors.coord.coord import METRICS_ENDPOINT
from conec_actors.framing import HEADER_SIZE

from .conftest import coord_cert, coordinator, wait_for
from .test_cli import Cli, run_cli

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def get(h: Any, path: str) -> tuple[int, bytes]:
    host, port = h.coord.metrics_address
    return await asyncio.to_thread(_get, f"http://{host}:{port}{path}")


async def get_json(h: Any, path: str) -> tuple[int, Any]:
    status, body = await get(h, path)
    return status, json.loads(body)


async def scrape(h: Any) -> Samples:
    status, body = await get(h, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def next_incoming(client: Any) -> IncomingStream:
    it = client.incoming.__aiter__()
    return await asyncio.wait_for(it.__anext__(), 5)


async def clients_by_id(h: Any) -> dict[str, dict[str, Any]]:
    status, body = await get_json(h, "/clients")
    assert status == 200
    return {c["id"]: c for c in body["clients"]}


async def test_a_proxied_stream_counts_in_metrics_and_clients() -> None:
    async with coordinator(metrics="127.0.0.1:0") as h:
        t0 = time.time()
        a, b = await h.client("alice"), await h.client("bob")
        send, recv = await a.new_proxied_stream("bob")
        for i in range(10):
            await send.send(bytes([i]) * 100)
        inc = await next_incoming(b)
        for _ in range(10):
            assert len(await inc.recv.recv()) == 100
        await inc.send.send(b"ok")
        assert await recv.recv() == b"ok"
        m = await scrape(h)
        assert value(m, "conec_clients") == 2
        assert value(m, "conec_connections_accepted_total") == 2
        assert value(m, "conec_streams_opened_total") == 1
        assert value(m, "conec_streams_open", kind="proxied") == 1
        assert value(m, "conec_streams_open", kind="broadcast") == 0
        assert value(m, "conec_messages_forwarded_total") == 11
        assert value(m, "conec_bytes_forwarded_total") == 10 * (100 + HEADER_SIZE) + 2 + HEADER_SIZE
        assert value(m, "conec_workers_up", kind="routing") == 1
        assert value(m, "conec_restarts_total", kind="routing") == 0

        cl = await clients_by_id(h)
        assert sorted(cl) == ["alice", "bob"]
        alice, bob = cl["alice"], cl["bob"]
        assert (alice["messages_in"], alice["messages_out"]) == (10, 1)
        assert (bob["messages_in"], bob["messages_out"]) == (1, 10)
        assert alice["bytes_in"] == bob["bytes_out"] == 10 * (100 + HEADER_SIZE)
        assert alice["streams"] == bob["streams"] == 1
        assert alice["address"].startswith("127.0.0.1:")
        assert t0 <= alice["connected_since"] <= time.time()
        assert 0 < alice["rtt_seconds"] < 1 and alice["shard"] == 0

        # The stream ends: its figures stay with its clients.
        await send.finish()
        await inc.send.finish()
        assert [m async for m in inc.recv] == []
        assert [m async for m in recv] == []
        await wait_for(lambda: _streams_open(h, "proxied", 0))
        cl = await clients_by_id(h)
        assert (cl["alice"]["messages_in"], cl["alice"]["streams"]) == (10, 0)
        assert cl["bob"]["bytes_out"] == 10 * (100 + HEADER_SIZE)


async def _streams_open(h: Any, kind: str, n: int) -> bool:
    return value(await scrape(h), "conec_streams_open", kind=kind) == n


async def test_a_refused_duplicate_id_is_counted_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conec_actors")
    async with coordinator(metrics="127.0.0.1:0") as h:
        await h.client("alice")
        with pytest.raises(DuplicateId):
            await h.client("alice")
        m = await scrape(h)
        assert value(m, "conec_connections_refused_total", reason="duplicate_id") == 1
        assert value(m, "conec_connections_accepted_total") == 2
        assert value(m, "conec_clients") == 1
    refusals = [r for r in caplog.records if getattr(r, "reason", None) == "duplicate_id"]
    assert len(refusals) == 1
    r = refusals[0]
    assert r.levelno >= logging.INFO and r.client_id == "alice"  # type: ignore[attr-defined]
    assert r.address.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert "alice" in r.getMessage() and "duplicate_id" in r.getMessage()


async def test_broadcast_deliveries_are_counted_per_reader() -> None:
    async with coordinator(metrics="127.0.0.1:0") as h:
        clients = [await h.client(c) for c in ("a", "b", "c")]
        members = [await c.new_broadcast("room") for c in clients]
        await wait_for(lambda: _streams_open(h, "broadcast", 3))
        send = members[0][0]
        for i in range(5):
            await send.send(b"m%d" % i)
        for _, recv in members:
            for _ in range(5):
                await asyncio.wait_for(recv.recv(), 5)
        m = await scrape(h)
        assert value(m, "conec_broadcasts") == 1
        assert value(m, "conec_broadcast_deliveries_total") == 15  # its sender reads too
        assert value(m, "conec_messages_forwarded_total") == 5
        cl = await clients_by_id(h)
        assert cl["a"]["messages_in"] == 5
        assert [cl[c]["messages_out"] for c in "abc"] == [5, 5, 5]


async def test_healthz_names_a_killed_worker_until_it_is_restarted() -> None:
    async with coordinator(metrics="127.0.0.1:0") as h:
        await h.client("alice")
        assert await get_json(h, "/healthz") == (200, {"status": "ok", "down": []})
        (pid,) = [w["pid"] for w in (await h.coord.stats())["workers"]
                  if w["kind"] == "routing"]
        os.kill(pid, signal.SIGKILL)
        seen: list[Any] = []

        async def down() -> bool:
            status, body = await get_json(h, "/healthz")
            if status == 503:
                seen.append(body)
            return status == 503

        await wait_for(down, timeout=10, interval=0.01)
        assert seen[0] == {"status": "down", "down": ["routing worker 0"]}
        await wait_for(lambda: _status(h, "/healthz", 200), timeout=20)
        m = await scrape(h)
        assert value(m, "conec_restarts_total", kind="routing") == 1
        assert value(m, "conec_restarts_total", kind="broadcast") == 0
        assert value(m, "conec_workers_up", kind="routing") == 1
        assert value(m, "conec_clients") == 1
        assert pid not in h.coord.worker_pids()


async def _status(h: Any, path: str, want: int) -> bool:
    return (await get(h, path))[0] == want


async def test_clients_pages_sorted_by_id() -> None:
    async with coordinator(metrics="127.0.0.1:0") as h:
        for c in ("carol", "alice", "bob"):
            await h.client(c)
        status, body = await get_json(h, "/clients")
        assert status == 200 and body["num_clients"] == 3
        assert [c["id"] for c in body["clients"]] == ["alice", "bob", "carol"]
        status, body = await get_json(h, "/clients?limit=1&offset=1")
        assert body["num_clients"] == 3 and [c["id"] for c in body["clients"]] == ["bob"]
        assert (await get(h, "/clients?limit=x"))[0] == 400
        assert (await get(h, "/clients?offset=-1"))[0] == 400
        assert (await get(h, "/nothing"))[0] == 404


async def test_a_reader_that_does_not_read_pauses_the_writer() -> None:
    async with coordinator(metrics="127.0.0.1:0") as h:
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        chunk = b"x" * 16384

        async def flood() -> None:
            while True:
                await send.send(chunk)

        task = asyncio.create_task(flood())
        try:
            inc = await next_incoming(b)
            await wait_for(lambda: _counter_at_least(h, "conec_writers_paused_total", 1),
                           timeout=10)
            assert value(await scrape(h), "conec_writers_resumed_total") == 0
            # bob reads again: what waited drains, the writer goes on.
            reader = asyncio.create_task(_drain(inc))
            await wait_for(lambda: _counter_at_least(h, "conec_writers_resumed_total", 1),
                           timeout=10)
            reader.cancel()
        finally:
            task.cancel()


async def _drain(inc: IncomingStream) -> None:
    async for _ in inc.recv:
        pass


async def _counter_at_least(h: Any, name: str, n: float) -> bool:
    return value(await scrape(h), name) >= n


async def test_event_loop_lag_is_measured_in_every_process() -> None:
    async with coordinator(metrics="127.0.0.1:0", routing_workers=2) as h:
        time.sleep(0.7)  # block the front-end's loop (this one) past a tick
        await asyncio.sleep(0.6)  # the late tick ran
        m = await scrape(h)
        assert value(m, "conec_event_loop_lag_seconds", process="frontend") > 0.1
        procs = {dict(k[1])["process"] for k in m if k[0] == "conec_event_loop_lag_seconds"}
        assert procs == {"frontend", "routing-0", "routing-1", "broadcast-0"}


async def test_a_busy_loop_gives_503_not_a_hang() -> None:
    async with coordinator(metrics="127.0.0.1:0") as h:
        host, port = h.coord.metrics_address
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(
            _get(f"http://{host}:{port}/metrics")[0]))
        t.start()
        # This loop (the Coordinator's) stays blocked until the answer came:
        # the endpoint gives up on it after its 2 s.
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        t.join()
        assert got == [503]
        assert (await get(h, "/metrics"))[0] == 200  # and it answers again after


async def test_the_endpoint_frees_its_port_on_close() -> None:
    async with coordinator(metrics="127.0.0.1:0") as h:
        addr = h.coord.metrics_address
        assert addr is not None and addr[0] == "127.0.0.1" and addr[1] > 0
    with socket.socket() as s:
        s.bind(addr)  # free again
    async with coordinator() as h:
        assert h.coord.metrics_address is None


def test_metrics_address_is_checked() -> None:
    cert = coord_cert()
    for bad in ("localhost", "127.0.0.1:", ":80", "h:99999", "h:x"):
        with pytest.raises(ValueError, match="metrics"):
            CoordConfig(cert.cert_pem, cert.key_pem, metrics=bad)
    CoordConfig(cert.cert_pem, cert.key_pem, metrics="[::1]:0")


@pytest.mark.timeout(90)
def test_the_cli_serves_metrics_where_asked(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg-state"))
    cli = Cli("coord", "--port", "0", "--metrics", "127.0.0.1:0", "--state-dir",
              str(tmp_path / "state"), env=env)
    try:
        m = cli.expect(re.compile(r"^metrics: (http://127\.0\.0\.1:\d+)/metrics "))
        status, body = _get(m.group(1) + "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "down": []})
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.wait(15) == 0, cli.stderr
    finally:
        cli.kill()


def test_the_cli_refuses_a_bad_metrics_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coord", "--metrics", "nowhere"]) == 2
    assert "metrics" in capsys.readouterr().err


@pytest.mark.timeout(90)
async def test_a_busy_metrics_port_names_the_endpoint(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        host, port = busy.getsockname()
        cert = coord_cert()
        cfg = CoordConfig(cert.cert_pem, cert.key_pem, port=0, metrics=f"{host}:{port}")
        with pytest.raises(OSError) as info:
            await Coord.start(cfg)
        assert info.value.filename == METRICS_ENDPOINT
        env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg-state"))
        status = await asyncio.to_thread(
            run_cli, "coord", "--port", "0", "--metrics", f"{host}:{port}", env=env)
        assert status.returncode == 1
        assert f"cannot listen on {host}:{port} (--metrics)" in status.stderr
