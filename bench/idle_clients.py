"""Connection rate and idle memory per client at the Coordinator.

One Coordinator (its own spawned process, plus its routing workers) and ``--procs``
client processes. Each client process makes the certificates of its share of the
``--clients`` clients first (ids ``c{proc}-{i}``; not timed), waits for a common start
signal, then connects them all with at most ``--concurrency`` handshakes in flight
(``keepalive=True``) and keeps them connected until told to stop.

Reported, one JSON line per number of routing workers:

* ``connects_per_s``: clients connected / wall time from the first connect's start to
  the last one's end, across all client processes (``time.monotonic`` is system-wide
  on Linux), with per-connect latency percentiles;
* the Coordinator's resident memory, front-end plus its worker processes (``VmRSS``
  from ``/proc``, children found through ``/proc/<pid>/task/*/children``): before any
  client connects, after all are connected and idle for ``--idle`` seconds, and after
  they have all closed again; ``kib_per_client = (after - before) / clients``.

Design targets (DESIGN.md section 6): <= 150 KiB per client; connects/s is expected to
be flat in the number of routing workers (handshakes run in the front-end).

``python -m bench.idle_clients [--clients 1000] [--procs 4] [--concurrency 50]
[--routing-workers 1 | --workers-list 1,2,4] [--idle 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._clients import COORD_NAME, HOST
from bench._common import (
    MP,
    STARTUP_TIMEOUT_S,
    Ctl,
    Procs,
    Stop,
    emit,
    make_self_signed,
    percentile,
    start_coord,
    tree_cpu_seconds,
    tree_rss_kib,
    wait_event,
)

TARGET_KIB_PER_CLIENT = 150
#: Time the Coordinator gets to settle before the "before" memory reading.
SETTLE_S = 1.0
#: How long to wait, after the clients closed, for the Coordinator to drop them all.
GONE_TIMEOUT_S = 20.0


async def clients_main(
    proc: int,
    n: int,
    target: tuple[int, bytes],
    concurrency: int,
    go: Stop,
    *,
    ctl: Ctl,
    stop: Stop,
) -> None:
    """Connect *n* clients ``c{proc}-{i}`` once *go* is set; hold them until *stop*."""
    from conec_actors import Client, ClientConfig
    from conec_actors.certs import self_signed

    port, ca = target
    configs = []
    for i in range(n):
        cid = f"c{proc}-{i}"
        ck = self_signed([cid])
        configs.append(ClientConfig(cid, COORD_NAME, addr=(HOST, port), ca=ca,
                                    cert=ck.cert_pem, key=ck.key_pem, keepalive=True))
    ctl.put(("prepared", proc))
    await wait_event(go, poll_s=0.002)

    sem = asyncio.Semaphore(concurrency)
    clients: list[Any] = []
    latencies: list[float] = []
    errors: list[str] = []

    async def one(cfg: Any) -> None:
        async with sem:
            t0 = time.monotonic()
            try:
                client = await Client.connect(cfg)
            except Exception as exc:
                errors.append(f"{cfg.id}: {type(exc).__name__}: {exc}")
                return
            latencies.append(time.monotonic() - t0)
            clients.append(client)

    t_start = time.monotonic()
    try:
        await asyncio.gather(*(one(cfg) for cfg in configs))
        t_end = time.monotonic()
        ctl.put(("connected", {
            "proc": proc, "ok": len(clients), "failed": len(errors), "errors": errors[:5],
            "t_start": t_start, "t_end": t_end, "latencies": latencies,
        }))
        await wait_event(stop)
    finally:
        for client in clients:
            await client.close()


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_idle(
    *, clients: int, procs: int, concurrency: int, routing_workers: int, idle: float
) -> dict[str, Any]:
    """Connect *clients* idle clients to a fresh Coordinator; connects/s and memory."""
    cert, key = make_self_signed(COORD_NAME)
    shares = [s for s in _shares(clients, procs) if s > 0]
    with Procs("idle-clients") as group:
        coord = start_coord(group, cert, key, routing_workers=routing_workers)
        time.sleep(SETTLE_S)
        before, before_each = tree_rss_kib(coord.pid)
        go = MP.Event()
        names = []
        for p, share in enumerate(shares):
            names.append(f"clients{p}")
            group.start(names[-1], clients_main, p, share, (coord.port, cert), concurrency, go)
        group.expect_n("prepared", len(shares), timeout=STARTUP_TIMEOUT_S + clients * 0.05)
        cpu_before = tree_cpu_seconds(coord.pid)
        go.set()
        reports = group.expect_n("connected", len(shares), timeout=STARTUP_TIMEOUT_S + clients)
        cpu_connect = tree_cpu_seconds(coord.pid) - cpu_before
        time.sleep(idle)
        after, after_each = tree_rss_kib(coord.pid)
        stats = coord.stats()
        for name in names:
            group.stop(name)
        t_closed = time.monotonic()
        left_after_idle: int | None = None
        gone_after: float | None = None
        while (waited := time.monotonic() - t_closed) < GONE_TIMEOUT_S:
            left = coord.stats()["clients"]
            if left_after_idle is None and waited >= idle:
                left_after_idle = left
            if not left:
                gone_after = waited
                break
            time.sleep(0.25)
        closed, _ = tree_rss_kib(coord.pid)

    ok = sum(r["ok"] for r in reports)
    wall = max(r["t_end"] for r in reports) - min(r["t_start"] for r in reports)
    latencies = [x for r in reports for x in r["latencies"]]
    errors = [e for r in reports for e in r["errors"]]
    fe = coord.pid
    return {
        "bench": "idle-clients",
        "clients": clients,
        "connected": ok,
        "failed": clients - ok,
        "errors": errors[:5],
        "procs": len(shares),
        "concurrency": concurrency,
        "routing_workers": routing_workers,
        "connect_wall_s": wall,
        "connects_per_s": ok / wall if wall > 0 else 0.0,
        "connect_latency_ms": {
            "p50": percentile(latencies, 50) * 1000 if latencies else None,
            "p99": percentile(latencies, 99) * 1000 if latencies else None,
        },
        "coord_cpu_s_connecting": cpu_connect,
        "coord_cpu_ms_per_connect": cpu_connect * 1000 / ok if ok else None,
        "coord_clients": stats["clients"],
        "coord_clients_left_after_idle": left_after_idle or 0,
        "coord_all_clients_gone_after_s": gone_after,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_after_close_kib": closed,
        "rss_frontend_kib": {"before": before_each.get(fe, 0), "after": after_each.get(fe, 0)},
        "rss_workers_kib": {
            "before": before - before_each.get(fe, 0),
            "after": after - after_each.get(fe, 0),
        },
        "coord_processes": len(after_each),
        "kib_per_client": (after - before) / ok if ok else None,
        "target_kib_per_client": TARGET_KIB_PER_CLIENT,
    }


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.idle_clients",
                                description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--concurrency", type=int, default=50,
                   help="handshakes in flight per client process")
    p.add_argument("--routing-workers", type=int, default=1)
    p.add_argument("--workers-list", type=_ints, default=None, metavar="R1,R2,...",
                   help="one run per number of routing workers (overrides --routing-workers)")
    p.add_argument("--idle", type=float, default=2.0, help="idle seconds before measuring")
    args = p.parse_args(argv)
    if args.clients < 1 or args.procs < 1 or args.concurrency < 1:
        p.error("--clients, --procs and --concurrency must be >= 1")
    for r in args.workers_list or [args.routing_workers]:
        emit(run_idle(clients=args.clients, procs=args.procs, concurrency=args.concurrency,
                      routing_workers=r, idle=args.idle))


if __name__ == "__main__":
    main()
