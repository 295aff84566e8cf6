"""Proxied-stream throughput and ping: conec-actors against the naive aioquic relay.

Every conec-actors run uses four processes (plus the Coordinator's routing workers):

* the **Coordinator**: ``Coord.start(CoordConfig(..., port=0, routing_workers=R))`` in a
  spawned process of its own (:func:`bench._common.coord_main`); it starts its workers;
* the **receiver B**: ``Client`` ``"b"``, which takes the first stream from
  ``client.incoming`` and times its messages from the first to the last (throughput
  mode) or echoes every message on the stream's send half (ping mode);
* the **sender A**: ``Client`` ``"a"``, which opens ``new_proxied_stream("b")`` and
  sends ``N`` messages of ``size`` bytes with ``await send.send(...)`` (throughput) or
  one 64-byte message at a time, waiting for its echo (ping).

The baseline is :func:`bench.naive_relay.run_naive_relay` / ``run_naive_relay_ping``
(same process layout, no workers), run in the same invocation: for every size, a short
calibration run of each implementation sizes ``N`` so a run lasts about ``--duration``
seconds, then ``--rounds`` measured runs alternate between the two (the order flips
every round). One JSON line per size gives both medians, the ratio conec/naive and
every run's figures; a last line does the same for the ping's p50/p99.

``python -m bench.proxied [--rounds 3] [--sizes 64,1024,65536] [--duration 2]
[--max-datagram-size 1200] [--routing-workers 1] [--ping-n 200]
[--naive-socket-buffer BYTES] [--py-spy DIR]``

``--max-datagram-size`` applies to both implementations (``CoordConfig`` and
``ClientConfig`` for conec-actors, every ``QuicConfiguration`` of the relay).
conec-actors always enlarges its UDP socket buffers to 4 MiB while the stock relay keeps
the OS default (about 208 KiB), under which it loses packets at full speed (see
``udp_rcvbuf_errors`` in each run, a system-wide counter);
``--naive-socket-buffer 4194304`` gives the relay the same buffers. ``--py-spy DIR``
records the Coordinator's front-end during every measured conec run (py-spy's "raw"
collapsed-stack format, one file per run).

Design targets (DESIGN.md section 6): msgs/s ratio >= 1.0 for every size, ping
p50/p99 ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import naive_relay
from bench._common import (
    MB,
    SIZES,
    STARTUP_TIMEOUT_S,
    Ctl,
    Procs,
    Stop,
    emit,
    make_self_signed,
    median,
    percentile,
    rates,
    start_coord,
    udp_rcvbuf_errors,
    wait_event,
)

IMPL = "conec-actors"
NAIVE = naive_relay.IMPL
COORD_NAME = "localhost"
HOST = "127.0.0.1"

PING_SIZE = 64
PING_WARMUP = 20
#: Length of the calibration runs that size ``N`` (seconds at the guessed rate; at most
#: half of ``--duration``).
CALIBRATION_S = 1.0
MIN_COUNT = 200
#: Every run moves at least this many payload bytes, so that the buffers on the path
#: (a few 256 KiB windows) do not dominate the figures.
MIN_PAYLOAD = 2 * MB

#: What a client process needs to reach the Coordinator: (port, CA PEM, datagram size).
Target = tuple[int, bytes, int]


# --------------------------------------------------------------------------- clients


async def _connect(client_id: str, target: Target) -> Any:
    from conec_actors import Client, ClientConfig

    port, ca, mds = target
    cfg = ClientConfig(client_id, COORD_NAME, addr=(HOST, port), ca=ca, max_datagram_size=mds)
    return await Client.connect(cfg)


async def receiver_main(target: Target, mode: str, count: int, *, ctl: Ctl, stop: Stop) -> None:
    """Client B: count *count* messages on the first incoming stream, or echo (ping)."""
    client = await _connect("b", target)
    try:
        ctl.put(("ready", "b"))
        incoming = await anext(aiter(client.incoming))
        recv = incoming.recv
        if mode == "ping":
            send = incoming.send

            async def echo() -> None:
                async for message in recv:
                    await send.send(message)

            task = asyncio.create_task(echo())
            await wait_event(stop)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return
        received = 0
        payload_bytes = 0
        t_first = 0.0
        while received < count:
            message = await recv.recv()
            if not received:
                t_first = time.perf_counter()
            received += 1
            payload_bytes += len(message)
        seconds = time.perf_counter() - t_first
        ctl.put(("result", {"seconds": seconds, "payload_bytes": payload_bytes}))
        await wait_event(stop)
    finally:
        await client.close()


async def sender_main(
    target: Target, mode: str, size: int, count: int, *, ctl: Ctl, stop: Stop
) -> None:
    """Client A: open a proxied stream to B and send *count* messages (or ping)."""
    client = await _connect("a", target)
    try:
        send, recv = await client.new_proxied_stream("b")
        if mode == "ping":
            message = bytes(PING_SIZE)
            rtts: list[float] = []
            for i in range(PING_WARMUP + count):
                t0 = time.perf_counter_ns()
                await send.send(message)
                # asyncio.timeout, not wait_for: wait_for runs recv() in a task
                # of its own, which adds loop turns to every round trip.
                async with asyncio.timeout(STARTUP_TIMEOUT_S):
                    await recv.recv()
                if i >= PING_WARMUP:
                    rtts.append((time.perf_counter_ns() - t0) / 1000)
            ctl.put(("ping", rtts))
        else:
            payload = bytes(size)
            for _ in range(count):
                await send.send(payload)
            ctl.put(("sent", count))
        await wait_event(stop)
    finally:
        await client.close()


# --------------------------------------------------------------------------- runs


class PySpy:
    """``py-spy record`` attached to one process for the length of a ``with`` block."""

    def __init__(self, out: Path | None, pid: int, label: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        exe = shutil.which("py-spy")
        if out is None or exe is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
             "--nonblocking", "--output", str(out / f"{label}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # let it attach before the measured part starts

    def __enter__(self) -> PySpy:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_conec(
    size: int,
    count: int,
    *,
    max_datagram_size: int = 1200,
    routing_workers: int = 1,
    py_spy: Path | None = None,
    label: str = "",
) -> dict[str, Any]:
    """One conec-actors throughput run: *count* messages of *size* bytes A -> coord -> B."""
    cert, key = make_self_signed(COORD_NAME)
    errors_before = udp_rcvbuf_errors()
    with Procs(IMPL) as procs:
        coord = start_coord(
            procs, cert, key, routing_workers=routing_workers, max_datagram_size=max_datagram_size
        )
        target: Target = (coord.port, cert, max_datagram_size)
        procs.start("b", receiver_main, target, "throughput", count)
        procs.expect("ready")
        with PySpy(py_spy if label else None, coord.pid, label):
            procs.start("a", sender_main, target, "throughput", size, count)
            result = procs.expect("result", timeout=STARTUP_TIMEOUT_S + 120)
        stats = coord.stats()
    seconds = float(result["seconds"])
    if result["payload_bytes"] != size * count:
        raise RuntimeError(f"{IMPL}: B got {result['payload_bytes']} payload bytes")
    if stats["messages_forwarded"] != count:
        raise RuntimeError(f"{IMPL}: Coordinator forwarded {stats['messages_forwarded']}")
    return {
        "impl": IMPL,
        "size": size,
        "msgs": count,
        "seconds": seconds,
        "udp_rcvbuf_errors": udp_rcvbuf_errors() - errors_before,
        **rates(size, count, seconds),
    }


def run_conec_ping(
    n: int = 200, *, max_datagram_size: int = 1200, routing_workers: int = 1
) -> dict[str, Any]:
    """Round trips of one 64-byte message A -> coord -> B -> coord -> A, one at a time."""
    cert, key = make_self_signed(COORD_NAME)
    with Procs(IMPL) as procs:
        coord = start_coord(
            procs, cert, key, routing_workers=routing_workers, max_datagram_size=max_datagram_size
        )
        target: Target = (coord.port, cert, max_datagram_size)
        procs.start("b", receiver_main, target, "ping", n)
        procs.expect("ready")
        procs.start("a", sender_main, target, "ping", PING_SIZE, n)
        rtts: list[float] = procs.expect("ping", timeout=STARTUP_TIMEOUT_S + 60)
    return {
        "impl": IMPL,
        "kind": "ping",
        "size": PING_SIZE,
        "n": len(rtts),
        "p50_us": percentile(rtts, 50),
        "p99_us": percentile(rtts, 99),
    }


def _naive(size: int, count: int, mds: int, sockbuf: int) -> dict[str, Any]:
    errors_before = udp_rcvbuf_errors()
    result = naive_relay.run_naive_relay(
        size, count=count, max_datagram_size=mds, socket_buffer=sockbuf
    )
    result["udp_rcvbuf_errors"] = udp_rcvbuf_errors() - errors_before
    return result


def _count_for(size: int, rate: float, duration: float) -> int:
    return max(MIN_COUNT, MIN_PAYLOAD // max(size, 1), int(rate * duration))


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "msgs_per_s": median(r["msgs_per_s"] for r in runs),
        "mb_per_s": median(r["mb_per_s"] for r in runs),
        "msgs": runs[0]["msgs"],
        "runs": [
            {k: r[k] for k in ("msgs_per_s", "mb_per_s", "seconds", "udp_rcvbuf_errors")}
            for r in runs
        ],
    }


def bench_size(
    size: int,
    *,
    rounds: int,
    duration: float,
    mds: int,
    routing_workers: int,
    py_spy: Path | None,
    naive_sockbuf: int = 0,
) -> dict[str, Any]:
    """Calibrate, then alternate *rounds* conec and naive runs of *size*; one result."""
    guess = naive_relay.TARGET_RATE.get(size) or 5 * MB / max(size, 1)
    cal_count = _count_for(size, guess, min(CALIBRATION_S, duration / 2))
    cal_conec = run_conec(size, cal_count, max_datagram_size=mds, routing_workers=routing_workers)
    cal_naive = _naive(size, cal_count, mds, naive_sockbuf)
    counts = {
        IMPL: _count_for(size, cal_conec["msgs_per_s"], duration),
        NAIVE: _count_for(size, cal_naive["msgs_per_s"], duration),
    }
    runners: dict[str, Callable[[int], dict[str, Any]]] = {
        NAIVE: lambda r: _naive(size, counts[NAIVE], mds, naive_sockbuf),
        IMPL: lambda r: run_conec(
            size, counts[IMPL], max_datagram_size=mds, routing_workers=routing_workers,
            py_spy=py_spy, label=f"coord-{size}-r{r}",
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {IMPL: [], NAIVE: []}
    for r in range(rounds):
        order = (IMPL, NAIVE) if r % 2 == 0 else (NAIVE, IMPL)
        for impl in order:
            runs[impl].append(runners[impl](r))
    conec, naive = _summary(runs[IMPL]), _summary(runs[NAIVE])
    return {
        "bench": "proxied",
        "size": size,
        "rounds": rounds,
        "max_datagram_size": mds,
        "routing_workers": routing_workers,
        "naive_socket_buffer": naive_sockbuf,
        "conec": conec,
        "naive": naive,
        "ratio_msgs_per_s": conec["msgs_per_s"] / naive["msgs_per_s"],
        "ratio_mb_per_s": conec["mb_per_s"] / naive["mb_per_s"],
        "target_ratio": ">= 1.0",
        "calibration_msgs_per_s": {
            "conec": cal_conec["msgs_per_s"], "naive": cal_naive["msgs_per_s"]},
    }


def bench_ping(
    *, rounds: int, n: int, mds: int, routing_workers: int, naive_sockbuf: int = 0
) -> dict[str, Any]:
    """Alternate *rounds* conec and naive ping runs; medians of their p50 and p99."""
    runs: dict[str, list[dict[str, Any]]] = {IMPL: [], NAIVE: []}
    for r in range(rounds):
        order = (IMPL, NAIVE) if r % 2 == 0 else (NAIVE, IMPL)
        for impl in order:
            if impl == IMPL:
                result = run_conec_ping(
                    n, max_datagram_size=mds, routing_workers=routing_workers
                )
            else:
                result = naive_relay.run_naive_relay_ping(
                    n, max_datagram_size=mds, socket_buffer=naive_sockbuf
                )
            runs[impl].append(result)

    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "p50_us": median(x["p50_us"] for x in rs),
            "p99_us": median(x["p99_us"] for x in rs),
            "runs": [{"p50_us": x["p50_us"], "p99_us": x["p99_us"]} for x in rs],
        }

    conec, naive = summary(runs[IMPL]), summary(runs[NAIVE])
    return {
        "bench": "proxied-ping",
        "size": PING_SIZE,
        "n": n,
        "rounds": rounds,
        "max_datagram_size": mds,
        "routing_workers": routing_workers,
        "naive_socket_buffer": naive_sockbuf,
        "conec": conec,
        "naive": naive,
        "ratio_p50": conec["p50_us"] / naive["p50_us"],
        "ratio_p99": conec["p99_us"] / naive["p99_us"],
        "target_ratio": "<= 1.2",
    }


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.proxied", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="measured runs per implementation")
    p.add_argument("--sizes", type=_sizes, default=list(SIZES), help="comma-separated bytes")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per run (about)")
    p.add_argument("--max-datagram-size", type=int, default=1200)
    p.add_argument("--routing-workers", type=int, default=1)
    p.add_argument(
        "--naive-socket-buffer", type=int, default=0, metavar="BYTES",
        help="SO_RCVBUF/SO_SNDBUF for the naive relay's sockets (0: OS default; "
        "conec-actors always uses 4 MiB)",
    )
    p.add_argument("--ping-n", type=int, default=200, help="round trips per ping run (0: none)")
    p.add_argument(
        "--py-spy", type=Path, default=None, metavar="DIR",
        help="record the Coordinator front-end with py-spy (raw stacks) into DIR",
    )
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")
    if args.py_spy is not None and shutil.which("py-spy") is None:
        p.error("--py-spy needs the py-spy executable (pip install py-spy)")
    for size in args.sizes:
        emit(
            bench_size(
                size, rounds=args.rounds, duration=args.duration, mds=args.max_datagram_size,
                routing_workers=args.routing_workers, py_spy=args.py_spy,
                naive_sockbuf=args.naive_socket_buffer,
            )
        )
    if args.ping_n > 0:
        emit(
            bench_ping(
                rounds=args.rounds, n=args.ping_n, mds=args.max_datagram_size,
                routing_workers=args.routing_workers, naive_sockbuf=args.naive_socket_buffer,
            )
        )


if __name__ == "__main__":
    main()
