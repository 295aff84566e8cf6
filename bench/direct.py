"""Direct-stream throughput and ping: conec-actors against a plain aioquic connection.

Every conec-actors run uses three processes (plus the Coordinator's routing workers):

* the **Coordinator**: ``Coord.start(CoordConfig(..., port=0))`` in a spawned process of
  its own (:func:`bench._common.coord_main`). It only introduces the two clients; no
  stream byte may pass through it (its ``bytes_forwarded`` is read before A starts and
  after B has everything, and a run fails if it grew);
* the **receiver B**: ``Client`` ``"b"``, which takes the first stream from
  ``client.incoming`` (it must be a direct one: ``stream_id.kind == "direct"``) and
  times its messages from the first to the last (throughput mode) or echoes every
  message on the stream's send half (ping mode);
* the **sender A**: ``Client`` ``"a"``, which calls ``new_channel("b")`` then
  ``new_direct_stream("b")`` and sends ``N`` messages of ``size`` bytes with
  ``await send.send(...)`` (throughput) or one 64-byte message at a time, waiting for
  its echo (ping).

The baseline is one plain aioquic connection between two processes: a client that
writes length-prefixed frames (:func:`bench._common.frame`) on one stream with
``send_stream_data`` + ``transmit()``, pausing while more than
:data:`bench.naive_relay.SEND_LIMIT` bytes are unsent (the naive relay's sender), and a
server that counts complete frames (:class:`bench._common.FrameCounter`) and times them
from the first to the last, or echoes everything back (ping). It runs in the same
invocation: for every size, a short calibration run of each implementation sizes ``N``
so a run lasts about ``--duration`` seconds, then ``--rounds`` measured runs alternate
between the two (the order flips every round). One JSON line per size gives both
medians, the ratio conec/plain and every run's figures; a last line does the same for
the ping's p50/p99.

``python -m bench.direct [--rounds 3] [--sizes 64,1024,65536] [--duration 2]
[--max-datagram-size 1200] [--ping-n 200] [--plain-socket-buffer BYTES]
[--py-spy DIR]``

As the naive relay's sender, the baseline's client calls ``transmit()`` after every
message (one datagram per message while the congestion window allows), whereas
conec-actors coalesces its transmits to one per event-loop turn: expect conec-actors
well ahead at 64 B for that reason alone; 64 KiB messages fill whole datagrams either
way and compare the two stacks more evenly.

``--max-datagram-size`` applies to both implementations (``CoordConfig`` and both
``ClientConfig`` for conec-actors, both ``QuicConfiguration`` of the baseline).
conec-actors always enlarges its UDP socket buffers to 4 MiB, so by default the
baseline's sockets get 4 MiB too (``--plain-socket-buffer``, alias
``--naive-socket-buffer`` as in ``bench.proxied``; 0 keeps the OS default).
``--py-spy DIR`` records the clients A and B during every measured conec run (py-spy's
"raw" collapsed-stack format, one file per process and run).

Design target (DESIGN.md section 6): msgs/s ratio >= 0.9 for every size; the ping's
p50/p99 ratio is reported against the actors' target of <= 1.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StreamDataReceived

from bench import naive_relay
from bench._clients import (
    CALIBRATION_S,
    COORD_NAME,
    PING_SIZE,
    PySpy,
    Target,
    count_for,
    parse_stream_bench,
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
    Ctl,
    FrameCounter,
    Procs,
    Stop,
    alternate,
    emit,
    frame,
    make_self_signed,
    ping_result,
    ping_summary,
    rates,
    start_coord,
    tree_cpu_seconds,
    udp_rcvbuf_errors,
    wait_event,
)

IMPL = "conec-actors"
PLAIN = "plain-aioquic"

#: UDP socket buffers conec-actors always asks for (``conec_actors.transport``).
CONEC_SOCKET_BUFFER = 4 * 1024 * 1024
SOCKET_NOTE = ("conec-actors always uses 4 MiB UDP socket buffers; the plain aioquic "
               "sockets use plain_socket_buffer (default: the same 4 MiB; 0 = OS default)")

#: Rough msgs/s of one plain aioquic connection on a 2-core box; only sizes calibration.
GUESS_RATE: dict[int, float] = {64: 60_000.0, 1024: 12_000.0, 65536: 250.0}


# --------------------------------------------------------------------------- plain aioquic


class PlainServerProtocol(QuicConnectionProtocol):
    """Server side of the baseline connection: count frames (throughput) or echo (ping)."""

    def __init__(
        self, quic: QuicConnection, stream_handler: Any = None, *, mode: str, count: int,
        done: asyncio.Future[dict[str, Any]],
    ) -> None:
        super().__init__(quic, stream_handler)
        self._mode = mode
        self._count = count
        self._done = done
        self._counter = FrameCounter()
        self._t_first = 0.0

    def quic_event_received(self, event: QuicEvent) -> None:
        """Count or echo every stream chunk (the protocol transmits after each datagram)."""
        if not isinstance(event, StreamDataReceived):
            return
        if self._mode == "ping":
            self._quic.send_stream_data(event.stream_id, event.data)
            return
        counter = self._counter
        if counter.feed(event.data):
            now = time.perf_counter()
            if not self._t_first:
                self._t_first = now
            if counter.count >= self._count and not self._done.done():
                self._done.set_result({"seconds": now - self._t_first,
                                       "payload_bytes": counter.payload_bytes})


async def plain_server_main(
    cert_pem: bytes, key_pem: bytes, net: naive_relay.Net, mode: str, count: int,
    *, ctl: Ctl, stop: Stop,
) -> None:
    """The baseline's receiver: one aioquic server; reports its port, then the result."""
    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    server, port = await naive_relay.start_server(
        cert_pem, key_pem, net,
        functools.partial(PlainServerProtocol, mode=mode, count=count, done=done),
    )
    try:
        ctl.put(("port", port))
        if mode != "ping":
            ctl.put(("result", await done))
        await wait_event(stop)
    finally:
        server.close()


async def plain_client_main(
    port: int, cert_pem: bytes, net: naive_relay.Net, mode: str, size: int, count: int,
    *, ctl: Ctl, stop: Stop,
) -> None:
    """The baseline's sender: frames on one stream with the naive relay's limiter, or ping."""
    async with naive_relay.open_client(port, cert_pem, net) as proto:
        stream_id: int = proto._quic.get_next_available_stream_id()
        if mode == "ping":
            message = frame(bytes(PING_SIZE))
            ctl.put(("ping", await naive_relay.ping(proto, stream_id, message, count)))
        else:
            message = frame(bytes(size))
            for i in range(count):
                proto.send(stream_id, message)  # the first send creates the stream
                while i + 1 < count and proto.unsent(stream_id) > naive_relay.SEND_LIMIT:
                    await proto.wait_progress()
            ctl.put(("sent", count))
        # Keep the connection up until the server has everything and the parent says stop.
        await wait_event(stop)


# --------------------------------------------------------------------------- runs


def run_conec(
    size: int,
    count: int,
    *,
    max_datagram_size: int = 1200,
    py_spy: Path | None = None,
    label: str = "",
) -> dict[str, Any]:
    """One conec-actors throughput run: *count* messages of *size* bytes A -> B, direct."""
    cert, key = make_self_signed(COORD_NAME)
    errors_before = udp_rcvbuf_errors()
    with Procs(IMPL) as procs:
        coord = start_coord(procs, cert, key, max_datagram_size=max_datagram_size)
        target: Target = (coord.port, cert, max_datagram_size)
        procs.start("b", stream_receiver_main, target, "throughput", count, "direct")
        procs.expect("ready")
        before = coord.stats()
        coord_cpu = tree_cpu_seconds(coord.pid)
        with contextlib.ExitStack() as spies:
            if py_spy is not None and label:
                spies.enter_context(PySpy(py_spy, procs.pid("b"), f"b-{label}"))
            procs.start("a", stream_sender_main, target, "direct", "throughput", size, count)
            if py_spy is not None and label:
                spies.enter_context(PySpy(py_spy, procs.pid("a"), f"a-{label}"))
            result = procs.expect("result", timeout=STARTUP_TIMEOUT_S + 120)
        coord_cpu = tree_cpu_seconds(coord.pid) - coord_cpu
        after = coord.stats()
    seconds = float(result["seconds"])
    if result["payload_bytes"] != size * count:
        raise RuntimeError(f"{IMPL}: B got {result['payload_bytes']} payload bytes")
    forwarded = after["bytes_forwarded"] - before["bytes_forwarded"]
    if forwarded:
        raise RuntimeError(f"{IMPL}: the Coordinator forwarded {forwarded} bytes of a "
                           "direct stream")
    return {
        "impl": IMPL,
        "size": size,
        "msgs": count,
        "seconds": seconds,
        "stream_kind": result["kind"],
        "coord_bytes_forwarded": forwarded,
        "coord_cpu_s": round(coord_cpu, 3),
        "udp_rcvbuf_errors": udp_rcvbuf_errors() - errors_before,
        **rates(size, count, seconds),
    }


def run_plain(
    size: int,
    count: int,
    *,
    max_datagram_size: int = 1200,
    socket_buffer: int = CONEC_SOCKET_BUFFER,
) -> dict[str, Any]:
    """One baseline run: *count* framed messages of *size* bytes over one aioquic stream."""
    cert, key = make_self_signed(COORD_NAME)
    net = naive_relay.Net(max_datagram_size, socket_buffer)
    errors_before = udp_rcvbuf_errors()
    with Procs(PLAIN) as procs:
        procs.start("server", plain_server_main, cert, key, net, "throughput", count)
        port = procs.expect("port")
        procs.start("client", plain_client_main, port, cert, net, "throughput", size, count)
        result = procs.expect("result", timeout=STARTUP_TIMEOUT_S + 120)
    seconds = float(result["seconds"])
    if result["payload_bytes"] != size * count:
        raise RuntimeError(f"{PLAIN}: the server got {result['payload_bytes']} payload bytes")
    return {
        "impl": PLAIN,
        "size": size,
        "msgs": count,
        "seconds": seconds,
        "udp_rcvbuf_errors": udp_rcvbuf_errors() - errors_before,
        **rates(size, count, seconds),
    }


def run_conec_ping(n: int = 200, *, max_datagram_size: int = 1200) -> dict[str, Any]:
    """Round trips of one 64-byte message A -> B -> A over a direct stream, one at a time."""
    return ping_result(IMPL, PING_SIZE, run_stream_ping(IMPL, "direct", n, max_datagram_size))


def run_plain_ping(
    n: int = 200, *, max_datagram_size: int = 1200, socket_buffer: int = CONEC_SOCKET_BUFFER
) -> dict[str, Any]:
    """Round trips of one framed 64-byte message client -> server -> client, one at a time."""
    cert, key = make_self_signed(COORD_NAME)
    net = naive_relay.Net(max_datagram_size, socket_buffer)
    with Procs(PLAIN) as procs:
        procs.start("server", plain_server_main, cert, key, net, "ping", n)
        port = procs.expect("port")
        procs.start("client", plain_client_main, port, cert, net, "ping", PING_SIZE, n)
        rtts: list[float] = procs.expect("ping", timeout=STARTUP_TIMEOUT_S + 60)
    return ping_result(PLAIN, PING_SIZE, rtts)


_RUN_KEYS = ("msgs_per_s", "mb_per_s", "seconds", "udp_rcvbuf_errors",
             "coord_bytes_forwarded", "coord_cpu_s")


def bench_size(
    size: int,
    *,
    rounds: int,
    duration: float,
    mds: int,
    py_spy: Path | None,
    plain_sockbuf: int = CONEC_SOCKET_BUFFER,
) -> dict[str, Any]:
    """Calibrate, then alternate *rounds* conec and plain runs of *size*; one result."""
    guess = GUESS_RATE.get(size) or 5 * MB / max(size, 1)
    cal_count = count_for(size, guess, min(CALIBRATION_S, duration / 2))
    cal_conec = run_conec(size, cal_count, max_datagram_size=mds)
    cal_plain = run_plain(size, cal_count, max_datagram_size=mds, socket_buffer=plain_sockbuf)
    counts = {
        IMPL: count_for(size, cal_conec["msgs_per_s"], duration),
        PLAIN: count_for(size, cal_plain["msgs_per_s"], duration),
    }
    runners: dict[str, Callable[[int], dict[str, Any]]] = {
        IMPL: lambda r: run_conec(
            size, counts[IMPL], max_datagram_size=mds, py_spy=py_spy, label=f"{size}-r{r}"
        ),
        PLAIN: lambda r: run_plain(
            size, counts[PLAIN], max_datagram_size=mds, socket_buffer=plain_sockbuf
        ),
    }
    runs = alternate(runners, rounds)
    conec, plain = stream_summary(runs[IMPL], _RUN_KEYS), stream_summary(runs[PLAIN], _RUN_KEYS)
    return {
        "bench": "direct",
        "size": size,
        "rounds": rounds,
        "max_datagram_size": mds,
        "conec_socket_buffer": CONEC_SOCKET_BUFFER,
        "plain_socket_buffer": plain_sockbuf,
        "note": SOCKET_NOTE,
        "conec": conec,
        "plain": plain,
        "coord_bytes_forwarded": max(r["coord_bytes_forwarded"] for r in runs[IMPL]),
        "ratio_msgs_per_s": conec["msgs_per_s"] / plain["msgs_per_s"],
        "ratio_mb_per_s": conec["mb_per_s"] / plain["mb_per_s"],
        "target_ratio": ">= 0.9",
        "calibration_msgs_per_s": {
            "conec": cal_conec["msgs_per_s"], "plain": cal_plain["msgs_per_s"]},
    }


def bench_ping(
    *, rounds: int, n: int, mds: int, plain_sockbuf: int = CONEC_SOCKET_BUFFER
) -> dict[str, Any]:
    """Alternate *rounds* conec and plain ping runs; medians of their p50 and p99."""
    runners: dict[str, Callable[[int], dict[str, Any]]] = {
        IMPL: lambda r: run_conec_ping(n, max_datagram_size=mds),
        PLAIN: lambda r: run_plain_ping(n, max_datagram_size=mds, socket_buffer=plain_sockbuf),
    }
    runs = alternate(runners, rounds)
    conec, plain = ping_summary(runs[IMPL]), ping_summary(runs[PLAIN])
    return {
        "bench": "direct-ping",
        "size": PING_SIZE,
        "n": n,
        "rounds": rounds,
        "max_datagram_size": mds,
        "conec_socket_buffer": CONEC_SOCKET_BUFFER,
        "plain_socket_buffer": plain_sockbuf,
        "note": SOCKET_NOTE,
        "conec": conec,
        "plain": plain,
        "ratio_p50": conec["p50_us"] / plain["p50_us"],
        "ratio_p99": conec["p99_us"] / plain["p99_us"],
        "target_ratio": "<= 1.2",
    }


def main(argv: list[str] | None = None) -> None:
    p = stream_bench_parser("python -m bench.direct", __doc__, SIZES,
                            "record clients A and B with py-spy (raw stacks) into DIR")
    p.add_argument(
        "--plain-socket-buffer", "--naive-socket-buffer", dest="plain_socket_buffer",
        type=int, default=CONEC_SOCKET_BUFFER, metavar="BYTES",
        help="SO_RCVBUF/SO_SNDBUF for the plain aioquic sockets (default 4 MiB, what "
        "conec-actors always uses; 0: OS default)",
    )
    args = parse_stream_bench(p, argv)
    for size in args.sizes:
        emit(
            bench_size(
                size, rounds=args.rounds, duration=args.duration, mds=args.max_datagram_size,
                py_spy=args.py_spy, plain_sockbuf=args.plain_socket_buffer,
            )
        )
    if args.ping_n > 0:
        emit(
            bench_ping(
                rounds=args.rounds, n=args.ping_n, mds=args.max_datagram_size,
                plain_sockbuf=args.plain_socket_buffer,
            )
        )


if __name__ == "__main__":
    main()
