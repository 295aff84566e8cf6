"""What the HTTP endpoint serves, without a Coordinator (coord/metrics.py):
snapshots in, metric families and JSON bodies out."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conec_actors.coord.metrics import (
    CLIENTS_LIMIT,
    ClientFigures,
    Snapshot,
    SnapshotCollector,
    WorkerFigures,
    clients_page,
    format_address,
    health,
    page_bounds,
)

WORKERS = [WorkerFigures("routing", 0, 11, True, 2, 0.003),
           WorkerFigures("routing", 1, 12, False, 1, None),
           WorkerFigures("broadcast", 0, 13, True, 0, 0.0)]


def exposed(snap: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The text a registry holding one collector of `snap` serves, parsed."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snap))
    text = generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_figure_of_a_snapshot_is_exposed_under_its_name() -> None:
    m = exposed(Snapshot(
        clients=3, connections_accepted=5, refused={"duplicate_id": 1, "hello_timeout": 1},
        half_open=1, retry_packets=4, junk_datagrams=6,
        streams_open={"proxied": 2, "broadcast": 7}, streams_opened=9,
        messages_forwarded=100, bytes_forwarded=4000, broadcasts=1, broadcast_deliveries=21,
        writers_paused=2, writers_resumed=1, watches=8, frontend_lag=0.01, workers=WORKERS))
    assert m == {
        ("conec_clients", ()): 3,
        ("conec_connections_accepted_total", ()): 5,
        ("conec_connections_refused_total", (("reason", "duplicate_id"),)): 1,
        ("conec_connections_refused_total", (("reason", "hello_timeout"),)): 1,
        ("conec_half_open_handshakes", ()): 1,
        ("conec_retry_packets_total", ()): 4,
        ("conec_junk_datagrams_total", ()): 6,
        ("conec_streams_open", (("kind", "proxied"),)): 2,
        ("conec_streams_open", (("kind", "broadcast"),)): 7,
        ("conec_streams_opened_total", ()): 9,
        ("conec_messages_forwarded_total", ()): 100,
        ("conec_bytes_forwarded_total", ()): 4000,
        ("conec_broadcasts", ()): 1,
        ("conec_broadcast_deliveries_total", ()): 21,
        ("conec_writers_paused_total", ()): 2,
        ("conec_writers_resumed_total", ()): 1,
        ("conec_restarts_total", (("kind", "broadcast"),)): 0,
        ("conec_restarts_total", (("kind", "routing"),)): 3,
        ("conec_workers_up", (("kind", "broadcast"),)): 1,
        ("conec_workers_up", (("kind", "routing"),)): 1,
        ("conec_watches", ()): 8,
        ("conec_event_loop_lag_seconds", (("process", "frontend"),)): 0.01,
        ("conec_event_loop_lag_seconds", (("process", "routing-0"),)): 0.003,
        ("conec_event_loop_lag_seconds", (("process", "broadcast-0"),)): 0.0,
    }  # (routing-1 did not answer: no lag of its own)


def test_each_scrape_takes_one_snapshot() -> None:
    taken: list[int] = []

    def take() -> Snapshot:
        taken.append(1)
        return Snapshot(clients=len(taken))

    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(take))
    assert taken == []  # registering does not take one
    assert b"conec_clients 1.0" in generate_latest(reg)
    assert b"conec_clients 2.0" in generate_latest(reg)


def test_a_snapshot_that_fails_fails_the_scrape() -> None:
    def take() -> Snapshot:
        raise TimeoutError

    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(take))
    with pytest.raises(TimeoutError):
        generate_latest(reg)


def test_health_is_ok_while_every_worker_is_up() -> None:
    assert health([w for w in WORKERS if w.up]) == (200, {"status": "ok", "down": []})
    assert health(WORKERS) == (503, {"status": "down", "down": ["routing worker 1"]})


def _client(cid: str) -> ClientFigures:
    return ClientFigures(cid, "127.0.0.1:1", 0, 1.5, 1, 10, 20, 1, 2, 0.001)


def test_clients_are_sorted_by_id_and_paged() -> None:
    clients = [_client(c) for c in ("carol", "alice", "bob")]
    page = clients_page(clients, CLIENTS_LIMIT, 0)
    assert page["num_clients"] == 3
    assert [c["id"] for c in page["clients"]] == ["alice", "bob", "carol"]
    assert page["clients"][0] == {
        "id": "alice", "address": "127.0.0.1:1", "shard": 0, "connected_since": 1.5,
        "streams": 1, "bytes_in": 10, "bytes_out": 20, "messages_in": 1, "messages_out": 2,
        "rtt_seconds": 0.001}
    assert [c["id"] for c in clients_page(clients, 1, 2)["clients"]] == ["carol"]
    assert clients_page(clients, 5, 9)["clients"] == []


def test_page_bounds_default_and_checked() -> None:
    assert page_bounds("") == (CLIENTS_LIMIT, 0)
    assert page_bounds("limit=5&offset=10") == (5, 10)
    for bad in ("limit=x", "offset=-1", "limit=-2", f"limit={1 << 30}"):
        with pytest.raises(ValueError):
            page_bounds(bad)


def test_addresses_are_host_port() -> None:
    assert format_address("192.0.2.1", 80) == "192.0.2.1:80"
    assert format_address("::1", 80) == "[::1]:80"
