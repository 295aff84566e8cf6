"""Shared helpers for the benchmarks under ``bench/``.

Self-contained on purpose: nothing here imports ``conec_actors`` at module level, so
the baseline benchmarks keep working while the package itself is in flux. Only
:func:`coord_main` (the body of a Coordinator process) imports it, when it runs.

Besides figures and framing, this module holds the process plumbing the conec
benchmarks share: :class:`Procs` (spawned children reporting on one control queue,
always torn down), :func:`coord_main` (a Coordinator in its own process) and
:func:`tree_rss_kib` (resident memory of a process and its descendants, from
``/proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import multiprocessing
import multiprocessing.context
import multiprocessing.queues
import multiprocessing.synchronize
import os
import queue
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: Payload sizes (bytes) every throughput benchmark runs.
SIZES: tuple[int, ...] = (64, 1024, 65536)

#: Length of the big-endian frame header written by :func:`frame`.
HEADER_LEN = 4

#: 1 MB as reported in results (decimal, payload bytes only).
MB = 1_000_000


def make_self_signed(name: str) -> tuple[bytes, bytes]:
    """Return ``(cert_pem, key_pem)`` for a throw-away self-signed leaf certificate.

    ECDSA P-256 key, subject CN and DNS SAN set to *name*, ``BasicConstraints(ca=False)``,
    valid from one hour ago until 30 days from now.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def median(xs: Iterable[float]) -> float:
    """Median of *xs* (mean of the two middle values for an even count)."""
    data = sorted(xs)
    if not data:
        raise ValueError("median() of an empty sequence")
    mid = len(data) // 2
    if len(data) % 2:
        return data[mid]
    return (data[mid - 1] + data[mid]) / 2


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``0 < p <= 100``) of *xs*."""
    if not xs:
        raise ValueError("percentile() of an empty sequence")
    data = sorted(xs)
    rank = max(1, math.ceil(p / 100 * len(data)))
    return data[min(rank, len(data)) - 1]


def emit(result: dict[str, Any]) -> None:
    """Print *result* as one JSON line on stdout (keys sorted) and flush."""
    print(json.dumps(result, sort_keys=True), flush=True)


def rates(size: int, msgs: int, seconds: float) -> dict[str, float]:
    """Throughput figures for *msgs* messages of *size* payload bytes over *seconds*.

    ``seconds`` is taken from the first to the last received message, so it spans
    ``msgs - 1`` inter-arrival intervals; that is what the rates are computed from.
    MB/s counts payload bytes only, with 1 MB = 1e6 bytes.
    """
    delivered = max(msgs - 1, 1)
    return {
        "msgs_per_s": delivered / seconds,
        "mb_per_s": delivered * size / seconds / MB,
    }


def ping_result(impl: str, size: int, rtts: list[float]) -> dict[str, Any]:
    """One ping run's figures: *rtts* (us) of *size*-byte round trips by *impl*."""
    return {
        "impl": impl,
        "kind": "ping",
        "size": size,
        "n": len(rtts),
        "p50_us": percentile(rtts, 50),
        "p99_us": percentile(rtts, 99),
    }


def ping_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the p50 and p99 of ping runs, and each run's two figures."""
    return {
        "p50_us": median(x["p50_us"] for x in runs),
        "p99_us": median(x["p99_us"] for x in runs),
        "runs": [{"p50_us": x["p50_us"], "p99_us": x["p99_us"]} for x in runs],
    }


_R = TypeVar("_R")


def alternate(
    runners: dict[str, Callable[[int], _R]], rounds: int, progress: str | None = None
) -> dict[str, list[_R]]:
    """Run every runner once per round, ``runner(round)``; the results by runner name.

    The order rotates every round (for two runners it flips), starting with the
    runners' own order. With *progress*, a line ``"<progress>: round i/n name (s)"``
    goes to stderr after every run.
    """
    names = list(runners)
    runs: dict[str, list[_R]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.monotonic()
            runs[name].append(runners[name](r))
            if progress is not None:
                print(f"{progress}: round {r + 1}/{rounds} {name} "
                      f"({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
    return runs


def int_list(text: str) -> list[int]:
    """Parse a comma-separated list of integers (``argparse`` type; ``''`` is empty)."""
    return [int(s) for s in text.split(",") if s.strip()]


def frame(payload: bytes) -> bytes:
    """Return *payload* prefixed with its 4-byte big-endian length."""
    return len(payload).to_bytes(HEADER_LEN, "big") + payload


class FrameCounter:
    """Count complete :func:`frame`-encoded messages in a byte stream fed in chunks.

    Frames may be split across chunks arbitrarily (even inside the header); only the
    header bytes are ever buffered, payload bytes are skipped without copying.
    """

    __slots__ = ("_header", "_length", "_remaining", "count", "payload_bytes")

    def __init__(self) -> None:
        self.count = 0
        """Number of complete frames seen so far."""
        self.payload_bytes = 0
        """Total payload bytes of the complete frames seen so far."""
        self._header = bytearray()
        self._length = 0  # payload length of the frame being read
        self._remaining = 0  # payload bytes still missing from that frame

    def feed(self, chunk: bytes) -> int:
        """Consume *chunk*; return how many frames it completed."""
        completed = 0
        pos = 0
        end = len(chunk)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    completed += 1
                    self.payload_bytes += self._length
                continue
            need = HEADER_LEN - len(self._header)
            self._header += chunk[pos : pos + need]
            pos += min(need, end - pos)
            if len(self._header) < HEADER_LEN:
                break
            self._length = self._remaining = int.from_bytes(self._header, "big")
            self._header.clear()
            if not self._length:
                completed += 1
        self.count += completed
        return completed


# --------------------------------------------------------------------------- processes

#: Control queue, children -> parent: ``(kind, payload)`` tuples.
Ctl: TypeAlias = "multiprocessing.queues.Queue[tuple[str, Any]]"
#: Command queue, parent -> one child.
Cmd: TypeAlias = "multiprocessing.queues.Queue[Any]"
Stop = multiprocessing.synchronize.Event

MP = multiprocessing.get_context("spawn")

#: Generous bound on any single wait in a parent (process start, handshake, ...).
STARTUP_TIMEOUT_S = 30.0

#: How long a child has to stop on its own before it is terminated.
STOP_GRACE_S = 8.0


#: After its stop event is set, a child's main coroutine gets this long to return on its
#: own before it is cancelled (its ``finally`` blocks then close clients/Coordinator).
CANCEL_AFTER_S = 2.0

Main: TypeAlias = Callable[..., Coroutine[Any, Any, Any]]


def _child_entry(name: str, main: Main, args: tuple[Any, ...], ctl: Ctl, stop: Stop) -> None:
    """Process entry point: ``asyncio.run(main(*args, ctl=ctl, stop=stop))``.

    The child does not outlive its stop event by more than :data:`CANCEL_AFTER_S`
    (``main`` is cancelled, so its cleanup still runs). A failure is reported on *ctl*
    as ``("error", text)`` and the process exits 1.
    """
    try:
        asyncio.run(_until_stopped(main(*args, ctl=ctl, stop=stop), stop))
    except BaseException:
        ctl.put(("error", f"{name}: {traceback.format_exc()}"))
        raise SystemExit(1) from None


async def _until_stopped(coro: Coroutine[Any, Any, Any], stop: Stop) -> None:
    task = asyncio.ensure_future(coro)
    while not task.done() and not stop.is_set():
        await asyncio.wait({task}, timeout=0.05)
    if not task.done():
        done, _ = await asyncio.wait({task}, timeout=CANCEL_AFTER_S)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
    task.result()


async def wait_event(event: Stop, poll_s: float = 0.05) -> None:
    """Wait (without blocking the event loop) until a multiprocessing event is set."""
    while not event.is_set():
        await asyncio.sleep(poll_s)


class Procs:
    """Spawned child processes reporting ``(kind, payload)`` on one control queue.

    Every child gets its own stop event; :meth:`close` stops them in reverse start
    order (clients before their Coordinator), then terminates and kills stragglers, so
    no process outlives the benchmark. Use it as a context manager.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.ctl: Ctl = MP.Queue()
        self.procs: list[tuple[str, multiprocessing.context.SpawnProcess, Stop]] = []
        self._stash: list[tuple[str, Any]] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, name: str, main: Main, *args: Any) -> Stop:
        """Run ``main(*args, ctl=..., stop=...)`` under asyncio in a new process.

        *main* must be a module-level coroutine function (it is pickled by reference).
        Returns the child's stop event.
        """
        stop: Stop = MP.Event()
        proc = MP.Process(target=_child_entry, args=(name, main, args, self.ctl, stop),
                          name=f"{self.label}-{name}", daemon=True)
        proc.start()
        self.procs.append((name, proc, stop))
        return stop

    def pid(self, name: str) -> int:
        for n, proc, _ in self.procs:
            if n == name and proc.pid is not None:
                return proc.pid
        raise KeyError(name)

    def _check_alive(self) -> None:
        for name, proc, _ in self.procs:
            if proc.exitcode not in (None, 0):
                raise RuntimeError(f"{self.label}: {name} exited with {proc.exitcode}")

    def expect(self, kind: str, timeout: float = STARTUP_TIMEOUT_S) -> Any:
        """Payload of the next *kind* message (others are kept for later calls).

        Raises if a child reported an error or died, or after *timeout* seconds.
        """
        for i, (k, payload) in enumerate(self._stash):
            if k == kind:
                del self._stash[i]
                return payload
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got, payload = self.ctl.get(timeout=0.1)
            except queue.Empty:
                self._check_alive()
                continue
            if got == "error":
                raise RuntimeError(f"{self.label} child failed:\n{payload}")
            if got == kind:
                return payload
            self._stash.append((got, payload))
        raise TimeoutError(f"{self.label}: no {kind!r} within {timeout:.0f} s")

    def poll(self, kind: str) -> list[Any]:
        """Payloads of every *kind* message that has arrived, without waiting (others
        are kept for :meth:`expect`). Raises like :meth:`expect` if a child failed."""
        while True:
            try:
                got, payload = self.ctl.get_nowait()
            except queue.Empty:
                break
            if got == "error":
                raise RuntimeError(f"{self.label} child failed:\n{payload}")
            self._stash.append((got, payload))
        self._check_alive()
        out = [payload for k, payload in self._stash if k == kind]
        self._stash = [(k, payload) for k, payload in self._stash if k != kind]
        return out

    def expect_n(self, kind: str, n: int, timeout: float = STARTUP_TIMEOUT_S) -> list[Any]:
        """Payloads of the next *n* *kind* messages, all within *timeout* seconds."""
        deadline = time.monotonic() + timeout
        return [self.expect(kind, max(0.1, deadline - time.monotonic())) for _ in range(n)]

    def stop(self, name: str) -> None:
        """Stop one child now (set its stop event, join, terminate if it hangs)."""
        for n, proc, stop in self.procs:
            if n == name:
                stop.set()
                proc.join(timeout=STOP_GRACE_S)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=3)

    def close(self) -> None:
        """Stop every child (newest first), join, terminate/kill stragglers."""
        for _, proc, stop in reversed(self.procs):
            stop.set()
            proc.join(timeout=STOP_GRACE_S)
        for _, proc, _ in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=3)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.procs.clear()
        # Drop whatever is left so the queue's feeder threads can finish.
        while True:
            try:
                self.ctl.get_nowait()
            except (queue.Empty, OSError, ValueError):
                break
        self.ctl.close()
        self.ctl.join_thread()


# --------------------------------------------------------------------------- Coordinator


async def coord_main(cert_pem: bytes, key_pem: bytes, options: dict[str, Any], cmd: Cmd,
                     *, ctl: Ctl, stop: Stop) -> None:
    """Body of a Coordinator process (run it with :meth:`Procs.start`).

    Starts ``Coord.start(CoordConfig(cert_pem, key_pem, port=0, **options))``, reports
    ``("coord", {"port", "pid", "workers"})``, answers ``"stats"`` commands on *cmd*
    with ``("stats", await coord.stats())`` and closes the Coordinator (and so its
    workers) when *stop* is set.
    """
    from conec_actors import Coord, CoordConfig

    cfg = CoordConfig(cert_pem, key_pem, **{"port": 0, **options})
    coord = await Coord.start(cfg)
    try:
        ctl.put(("coord", {"port": coord.port, "pid": os.getpid(),
                           "workers": coord.worker_pids()}))
        while not stop.is_set():
            try:
                command = cmd.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.05)
                continue
            if command == "stats":
                ctl.put(("stats", await coord.stats()))
    finally:
        await coord.close()


class CoordHandle:
    """The parent's view of a Coordinator process started by :func:`start_coord`."""

    def __init__(self, procs: Procs, cmd: Cmd, info: dict[str, Any]) -> None:
        self._procs = procs
        self._cmd = cmd
        self.port: int = info["port"]
        self.pid: int = info["pid"]
        self.workers: list[int] = info["workers"]

    def stats(self) -> dict[str, Any]:
        """``Coord.stats()`` of the running Coordinator."""
        self._cmd.put("stats")
        result: dict[str, Any] = self._procs.expect("stats", timeout=10)
        return result

    def rss_kib(self) -> int:
        """Resident memory of the Coordinator: front-end plus all its descendants."""
        return tree_rss_kib(self.pid)[0]


def start_coord(procs: Procs, cert_pem: bytes, key_pem: bytes, **options: Any) -> CoordHandle:
    """Start a Coordinator in its own process (``CoordConfig`` *options*) and wait for it."""
    cmd: Cmd = MP.Queue()
    procs.start("coord", coord_main, cert_pem, key_pem, options, cmd)
    return CoordHandle(procs, cmd, procs.expect("coord"))


# --------------------------------------------------------------------------- /proc


def rss_kib(pid: int) -> int:
    """``VmRSS`` of *pid* in KiB (0 if the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child_pids(pid: int) -> list[int]:
    """Direct children of *pid*, from ``/proc/<pid>/task/*/children``."""
    out: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out.extend(int(c) for c in children.read_text().split())
        except OSError:
            continue
    return out


def tree_pids(pid: int) -> list[int]:
    """*pid* and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p not in pids:
            pids.append(p)
            todo.extend(child_pids(p))
    return pids


def tree_rss_kib(pid: int) -> tuple[int, dict[int, int]]:
    """Total ``VmRSS`` (KiB) of *pid* and its descendants, and the per-process figures."""
    each = {p: rss_kib(p) for p in tree_pids(pid)}
    return sum(each.values()), each


def cpu_seconds(pid: int) -> float:
    """User + system CPU time *pid* has used so far (0.0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by *pid* and its (living) descendants."""
    return sum(cpu_seconds(p) for p in tree_pids(pid))


def udp_rcvbuf_errors() -> int:
    """System-wide UDP ``RcvbufErrors`` (from /proc/net/snmp); -1 if unavailable."""
    try:
        lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
                 if ln.startswith("Udp:")]
        header, values = lines[0], lines[1]
        return int(values[header.index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return -1
