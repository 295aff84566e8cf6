"""What the metrics endpoint costs proxied throughput: metrics off against on.

The process layout of ``bench.proxied`` (a Coordinator process with its workers, a
receiver B, a sender A sending ``N`` messages of ``size`` bytes on one proxied
stream). In "on" runs the Coordinator has ``CoordConfig(metrics="127.0.0.1:PORT")``
and a thread of this (parent) process GETs ``/metrics`` every ``--scrape-interval``
seconds while A sends, as a Prometheus server would (every scrape makes the
front-end take a snapshot and ask each worker for its figures over ZeroMQ).

For every size a calibration run sizes ``N`` so a run lasts about ``--duration``
seconds, then ``--rounds`` rounds alternate an "off" and an "on" run (the order flips
every round). One JSON line per size gives both medians of msgs/s, the median of the
per-round ratios on/off, the cost (1 - that ratio) and every run's figures. After
every "on" run, CPU_SCRAPES back-to-back scrapes with no traffic measure the CPU one
scrape costs the Coordinator's processes (``scrape_cpu_ms``; over the interval, the
share of a core it takes: ``scrape_cpu_share``), a figure less at the mercy of a
loaded machine than the throughput ratio.

``python -m bench.metrics_cost [--rounds 5] [--sizes 64,1024,65536] [--duration 3]
[--scrape-interval 1]``

Target (DESIGN.md section 10): metrics on cost <= 3% of proxied throughput.
"""

from __future__ import annotations

import argparse
import socket
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

from bench._clients import (
    CALIBRATION_S,
    COORD_NAME,
    Target,
    count_for,
    stream_receiver_main,
    stream_sender_main,
)
from bench._common import (
    MB,
    STARTUP_TIMEOUT_S,
    Procs,
    alternate,
    emit,
    int_list,
    make_self_signed,
    median,
    rates,
    start_coord,
    tree_cpu_seconds,
)

IMPL = "conec-actors"
MDS = 1200
#: Back-to-back scrapes after an "on" run, to measure what one costs.
CPU_SCRAPES = 50


class Scraper:
    """GETs a URL every `interval` seconds in a thread until stopped."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.ok = self.errors = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.bytes += len(r.read())
                self.ok += 1
            except OSError:
                self.errors += 1
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return {"scrapes": self.ok, "scrape_errors": self.errors, "scrape_bytes": self.bytes}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_cpu_ms(url: str, pid: int) -> float:
    """CPU milliseconds the Coordinator's processes (front-end and workers)
    spend per scrape, from CPU_SCRAPES back-to-back scrapes with no traffic."""
    before = tree_cpu_seconds(pid)
    for _ in range(CPU_SCRAPES):
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
    return (tree_cpu_seconds(pid) - before) * 1000 / CPU_SCRAPES


def run(size: int, count: int, *, metrics: bool, scrape_interval: float) -> dict[str, Any]:
    """One throughput run of *count* messages of *size* bytes, metrics on or off."""
    cert, key = make_self_signed(COORD_NAME)
    options: dict[str, Any] = {"max_datagram_size": MDS}
    url = ""
    if metrics:
        port = _free_port()
        options["metrics"] = f"127.0.0.1:{port}"
        url = f"http://127.0.0.1:{port}/metrics"
    scraped: dict[str, int] = {}
    with Procs(IMPL) as procs:
        coord = start_coord(procs, cert, key, **options)
        target: Target = (coord.port, cert, MDS)
        procs.start("b", stream_receiver_main, target, "throughput", count)
        procs.expect("ready")
        scraper = Scraper(url, scrape_interval) if metrics else None
        try:
            procs.start("a", stream_sender_main, target, "proxied", "throughput", size, count)
            result = procs.expect("result", timeout=STARTUP_TIMEOUT_S + 120)
        finally:
            if scraper is not None:
                scraped = scraper.stop()
        if metrics:
            scraped["scrape_cpu_ms"] = scrape_cpu_ms(url, coord.pid)
        stats = coord.stats()
    if result["payload_bytes"] != size * count or stats["messages_forwarded"] != count:
        raise RuntimeError(f"{IMPL}: messages lost (metrics {'on' if metrics else 'off'})")
    seconds = float(result["seconds"])
    return {"metrics": metrics, "size": size, "msgs": count, "seconds": seconds, **scraped,
            **rates(size, count, seconds)}


def bench_size(size: int, *, rounds: int, duration: float, scrape_interval: float
               ) -> dict[str, Any]:
    """Calibrate, then alternate *rounds* off and on runs of *size*; one result."""
    cal = run(size, count_for(size, 5 * MB / max(size, 1), CALIBRATION_S),
              metrics=False, scrape_interval=scrape_interval)
    count = count_for(size, cal["msgs_per_s"], duration)
    runners: dict[str, Callable[[int], dict[str, Any]]] = {
        "off": lambda r: run(size, count, metrics=False, scrape_interval=scrape_interval),
        "on": lambda r: run(size, count, metrics=True, scrape_interval=scrape_interval),
    }
    runs = alternate(runners, rounds, progress=f"metrics_cost {size}")
    ratios = [on["msgs_per_s"] / off["msgs_per_s"]
              for off, on in zip(runs["off"], runs["on"], strict=True)]
    ratio = median(ratios)
    return {
        "bench": "metrics_cost",
        "size": size,
        "msgs": count,
        "rounds": rounds,
        "scrape_interval": scrape_interval,
        "off_msgs_per_s": median(r["msgs_per_s"] for r in runs["off"]),
        "on_msgs_per_s": median(r["msgs_per_s"] for r in runs["on"]),
        "ratio_on_off": ratio,
        "round_ratios": ratios,
        "cost": 1.0 - ratio,
        # One scrape's CPU over the interval: its share of one core.
        "scrape_cpu_ms": median(r["scrape_cpu_ms"] for r in runs["on"]),
        "scrape_cpu_share": median(r["scrape_cpu_ms"] for r in runs["on"])
        / (1000 * scrape_interval),
        "target_cost": "<= 0.03",
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_cost",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="off/on pairs of runs")
    p.add_argument("--sizes", type=int_list, default=[64, 1024, 65536],
                   help="comma-separated bytes")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per run (about)")
    p.add_argument("--scrape-interval", type=float, default=1.0, metavar="S")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.scrape_interval <= 0:
        p.error("--rounds must be >= 1, --duration and --scrape-interval > 0")
    for size in args.sizes:
        emit(bench_size(size, rounds=args.rounds, duration=args.duration,
                        scrape_interval=args.scrape_interval))


if __name__ == "__main__":
    main()
