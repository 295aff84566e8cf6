"""Client-process scaffolding shared by the conec-actors benchmarks.

* :func:`connect` and the stream client mains of ``bench.proxied`` and ``bench.direct``
  (:func:`stream_receiver_main`, :func:`stream_sender_main`, :func:`stream_ping`,
  :func:`run_stream_ping`) with the settings that size their runs (:func:`count_for`,
  :func:`stream_summary`);
* :func:`run_naive` (the naive relay plus the UDP receive-buffer error count);
* :class:`PySpy` and :func:`check_py_spy`;
* :class:`NatsServer`, :func:`nats_missing` and :func:`want_nats` for the NATS baselines.

Like :mod:`bench._common`, this module imports ``conec_actors`` only inside the client
mains, when they run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import naive_relay
from bench._common import (
    MB,
    STARTUP_TIMEOUT_S,
    Ctl,
    Procs,
    Stop,
    emit,
    int_list,
    make_self_signed,
    median,
    percentile,
    start_coord,
    udp_rcvbuf_errors,
    wait_event,
)

COORD_NAME = "localhost"
HOST = "127.0.0.1"

#: What a client process needs to reach the Coordinator: (port, CA PEM, datagram size).
Target = tuple[int, bytes, int]

PING_SIZE = 64
PING_WARMUP = 20
#: Length of the calibration runs that size ``N`` (seconds at the guessed rate; at most
#: half of ``--duration``).
CALIBRATION_S = 1.0
MIN_COUNT = 200
#: Every run moves at least this many payload bytes, so that the buffers on the path
#: (a few 256 KiB windows) do not dominate the figures.
MIN_PAYLOAD = 2 * MB


# --------------------------------------------------------------------------- conec clients


async def connect(client_id: str, target: Target) -> Any:
    """``Client.connect`` as *client_id* to the Coordinator described by *target*."""
    from conec_actors import Client, ClientConfig

    port, ca, mds = target
    cfg = ClientConfig(client_id, COORD_NAME, addr=(HOST, port), ca=ca, max_datagram_size=mds)
    return await Client.connect(cfg)


async def stream_ping(
    send: Any, recv: Any, message: bytes, n: int, *, warmup: int, timeout: float,
    check: bool = False,
) -> list[float]:
    """Send *message* and wait for its echo, *warmup* + *n* times; the last *n* RTTs (us).

    With *check*, a reply that differs from *message* raises.
    """
    rtts: list[float] = []
    for i in range(warmup + n):
        t0 = time.perf_counter_ns()
        # asyncio.timeout, not wait_for: wait_for would wrap recv() in a Task of its
        # own (extra event-loop turns on every round trip).
        async with asyncio.timeout(timeout):
            await send.send(message)
            reply = await recv.recv()
        if i >= warmup:
            rtts.append((time.perf_counter_ns() - t0) / 1000)
        if check and reply != message:
            raise RuntimeError("B's stream echo differs")
    return rtts


async def ask_pings(client: Any, peer: str, body: Any, n: int, *, warmup: int,
                    timeout: float) -> list[float]:
    """Ask *peer* *body* and wait for its answer (the same body), *warmup* +
    *n* times; the last *n* round trips (us)."""
    rtts: list[float] = []
    ask = client.ask
    for i in range(warmup + n):
        t0 = time.perf_counter_ns()
        reply = await ask(peer, body, timeout=timeout)
        if i >= warmup:
            rtts.append((time.perf_counter_ns() - t0) / 1000)
        if reply != body:
            raise RuntimeError("B's answer differs from the ask")
    return rtts


def rtt_figures(rtts: list[float]) -> dict[str, Any]:
    """n, p50 and p99 (us) of round trips."""
    return {"n": len(rtts), "p50_us": percentile(rtts, 50), "p99_us": percentile(rtts, 99)}


async def stream_receiver_main(
    target: Target, mode: str, count: int, kind: str | None = None, *, ctl: Ctl, stop: Stop
) -> None:
    """Client B: count *count* messages on the first incoming stream, or echo (ping).

    With *kind*, the stream must be of that kind (``stream_id.kind``). The result
    reports ``seconds`` (first to last message), ``payload_bytes`` and ``kind``.
    """
    client = await connect("b", target)
    try:
        ctl.put(("ready", "b"))
        incoming = await anext(aiter(client.incoming))
        if kind is not None and incoming.stream_id.kind != kind:
            raise RuntimeError(f"B got a {incoming.stream_id.kind!r} stream, not a {kind} one")
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
        ctl.put(("result", {"seconds": seconds, "payload_bytes": payload_bytes,
                            "kind": incoming.stream_id.kind}))
        await wait_event(stop)
    finally:
        await client.close()


async def stream_sender_main(
    target: Target, path: str, mode: str, size: int, count: int, *, ctl: Ctl, stop: Stop
) -> None:
    """Client A: open a stream to B on *path* and send *count* messages (or ping).

    *path* ``"direct"`` opens a channel first, then a direct stream; anything else a
    proxied stream.
    """
    client = await connect("a", target)
    try:
        if path == "direct":
            await client.new_channel("b")
            send, recv = await client.new_direct_stream("b")
        else:
            send, recv = await client.new_proxied_stream("b")
        if mode == "ping":
            rtts = await stream_ping(send, recv, bytes(PING_SIZE), count,
                                     warmup=PING_WARMUP, timeout=STARTUP_TIMEOUT_S)
            ctl.put(("ping", rtts))
        else:
            payload = bytes(size)
            for _ in range(count):
                await send.send(payload)
            ctl.put(("sent", count))
        await wait_event(stop)
    finally:
        await client.close()


def run_stream_ping(impl: str, path: str, n: int, mds: int, **coord_options: Any) -> list[float]:
    """RTTs (us) of *n* 64-byte round trips A -> B -> A on a *path* stream, one at a time.

    A Coordinator (``max_datagram_size=mds`` plus *coord_options*), B, then A, each in a
    process of its own. On the direct path B checks that its stream is a direct one.
    """
    cert, key = make_self_signed(COORD_NAME)
    kind = "direct" if path == "direct" else None
    with Procs(impl) as procs:
        coord = start_coord(procs, cert, key, **coord_options, max_datagram_size=mds)
        target: Target = (coord.port, cert, mds)
        procs.start("b", stream_receiver_main, target, "ping", n, kind)
        procs.expect("ready")
        procs.start("a", stream_sender_main, target, path, "ping", PING_SIZE, n)
        rtts: list[float] = procs.expect("ping", timeout=STARTUP_TIMEOUT_S + 60)
    return rtts


def count_for(size: int, rate: float, duration: float) -> int:
    """Messages of *size* bytes for a run of about *duration* seconds at *rate* msgs/s."""
    return max(MIN_COUNT, MIN_PAYLOAD // max(size, 1), int(rate * duration))


def stream_summary(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Medians of msgs/s and MB/s, the run length and every run's *keys* (those it has)."""
    return {
        "msgs_per_s": median(r["msgs_per_s"] for r in runs),
        "mb_per_s": median(r["mb_per_s"] for r in runs),
        "msgs": runs[0]["msgs"],
        "runs": [{k: r[k] for k in keys if k in r} for r in runs],
    }


def run_naive(size: int, count: int, mds: int, sockbuf: int) -> dict[str, Any]:
    """:func:`bench.naive_relay.run_naive_relay` plus its ``udp_rcvbuf_errors``."""
    errors_before = udp_rcvbuf_errors()
    result = naive_relay.run_naive_relay(
        size, count=count, max_datagram_size=mds, socket_buffer=sockbuf
    )
    result["udp_rcvbuf_errors"] = udp_rcvbuf_errors() - errors_before
    return result


# --------------------------------------------------------------------------- py-spy


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


def stream_bench_parser(prog: str, doc: str | None, sizes: list[int],
                        py_spy_help: str) -> argparse.ArgumentParser:
    """The options bench.proxied and bench.direct share; add the baseline's own."""
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="measured runs per implementation")
    p.add_argument("--sizes", type=int_list, default=list(sizes), help="comma-separated bytes")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per run (about)")
    p.add_argument("--max-datagram-size", type=int, default=1200)
    p.add_argument("--ping-n", type=int, default=200, help="round trips per ping run (0: none)")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR", help=py_spy_help)
    return p


def parse_stream_bench(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and check a `stream_bench_parser` command line."""
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")
    check_py_spy(p, args.py_spy)
    return args


def check_py_spy(parser: argparse.ArgumentParser, out: Path | None) -> None:
    """``parser.error`` when ``--py-spy`` is given but the executable is missing."""
    if out is not None and shutil.which("py-spy") is None:
        parser.error("--py-spy needs the py-spy executable (pip install py-spy)")


# --------------------------------------------------------------------------- NATS


def nats_missing() -> str | None:
    """Why the NATS comparison cannot run here, or None if it can."""
    if shutil.which("nats-server") is None:
        return "nats-server not installed"
    if importlib.util.find_spec("nats") is None:
        return "nats-py not installed (pip install nats-py)"
    return None


def want_nats(no_nats: bool, bench: str) -> bool:
    """Whether to run NATS; if it is wanted but missing, emit ``{bench, skipped}``."""
    if no_nats:
        return False
    why = nats_missing()
    if why is None:
        return True
    emit({"bench": bench, "skipped": why})
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """``nats-server`` on a free loopback port for the length of a ``with`` block."""

    def __init__(self) -> None:
        exe = shutil.which("nats-server")
        assert exe is not None
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [exe, "-a", HOST, "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
