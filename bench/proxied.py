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

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import naive_relay
from bench._clients import (
    CALIBRATION_S,
    COORD_NAME,
    PING_SIZE,
    PySpy,
    Target,
    count_for,
    parse_stream_bench,
    run_naive,
    run_stream_ping,
    stream_bench_parser,
    stream_receiver_main,
    stream_sender_main,
    stream_summary,
)
from bench._common import (
    MB,
    SIZES,
    STARTUP_TIMEOUT_S,
    Procs,
    alternate,
    emit,
    make_self_signed,
    ping_result,
    ping_summary,
    rates,
    start_coord,
    udp_rcvbuf_errors,
)

IMPL = "conec-actors"
NAIVE = naive_relay.IMPL

_RUN_KEYS = ("msgs_per_s", "mb_per_s", "seconds", "udp_rcvbuf_errors")


# --------------------------------------------------------------------------- runs


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
        procs.start("b", stream_receiver_main, target, "throughput", count)
        procs.expect("ready")
        with PySpy(py_spy if label else None, coord.pid, label):
            procs.start("a", stream_sender_main, target, "proxied", "throughput", size, count)
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
    rtts = run_stream_ping(IMPL, "proxied", n, max_datagram_size,
                           routing_workers=routing_workers)
    return ping_result(IMPL, PING_SIZE, rtts)


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
    cal_count = count_for(size, guess, min(CALIBRATION_S, duration / 2))
    cal_conec = run_conec(size, cal_count, max_datagram_size=mds, routing_workers=routing_workers)
    cal_naive = run_naive(size, cal_count, mds, naive_sockbuf)
    counts = {
        IMPL: count_for(size, cal_conec["msgs_per_s"], duration),
        NAIVE: count_for(size, cal_naive["msgs_per_s"], duration),
    }
    runners: dict[str, Callable[[int], dict[str, Any]]] = {
        IMPL: lambda r: run_conec(
            size, counts[IMPL], max_datagram_size=mds, routing_workers=routing_workers,
            py_spy=py_spy, label=f"coord-{size}-r{r}",
        ),
        NAIVE: lambda r: run_naive(size, counts[NAIVE], mds, naive_sockbuf),
    }
    runs = alternate(runners, rounds)
    conec = stream_summary(runs[IMPL], _RUN_KEYS)
    naive = stream_summary(runs[NAIVE], _RUN_KEYS)
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
    runners: dict[str, Callable[[int], dict[str, Any]]] = {
        IMPL: lambda r: run_conec_ping(n, max_datagram_size=mds,
                                       routing_workers=routing_workers),
        NAIVE: lambda r: naive_relay.run_naive_relay_ping(
            n, max_datagram_size=mds, socket_buffer=naive_sockbuf),
    }
    runs = alternate(runners, rounds)
    conec, naive = ping_summary(runs[IMPL]), ping_summary(runs[NAIVE])
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


def main(argv: list[str] | None = None) -> None:
    p = stream_bench_parser("python -m bench.proxied", __doc__, SIZES,
                            "record the Coordinator front-end with py-spy (raw stacks) into DIR")
    p.add_argument("--routing-workers", type=int, default=1)
    p.add_argument(
        "--naive-socket-buffer", type=int, default=0, metavar="BYTES",
        help="SO_RCVBUF/SO_SNDBUF for the naive relay's sockets (0: OS default; "
        "conec-actors always uses 4 MiB)",
    )
    args = parse_stream_bench(p, argv)
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
