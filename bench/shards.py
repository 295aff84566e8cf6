"""Front-end shards (DESIGN.md section 8): CPU per message, quota'd throughput, cross-shard.

``python -m bench.shards [--rounds 3] [--duration 2] [--sizes 1024,64]
[--frontends 1,2,4] [--quota 0.2] [--skip-quota] [--ping-n 200]``

Processes: the Coordinator (``CoordConfig(frontends=N)``, :func:`bench._common.start_coord`)
and client "hosts", each holding several clients (:func:`host_main`). The parent
connects the clients ONE AT A TIME and sees which shard's ``clients`` grew in
``stats()["frontends"]``: where the kernel placed it (there is no way to choose). A load
run: every sender sends ``size``-byte messages on a proxied stream to its receiver as
fast as back-pressure lets it, for a warm-up, then ``--duration`` seconds (the window),
at whose ends the parent reads ``stats()`` and every host its receivers' counts. Every
load line has ``msgs_per_s`` (messages the receivers got per second), ``forwarded_per_s``
(``messages_forwarded``, all shards), ``cpu_us_per_msg`` (the shards' ``cpu_seconds``
over the window, summed, per forwarded message, microseconds), ``cpu_us_per_delivered``
(the same per message received), ``shard_cpu`` (each shard's CPUs used), ``window_s``.

(a) ``bench: shards-cpu-round``, per (round, N, size): 8 pairs (16 clients on 4 hosts)
    wherever the kernel puts them: ``placement`` [sender shard, receiver shard] per
    pair, ``cross_pairs`` how many differ. Summary: ``cpu_us_per_msg`` medians and
    ``ratio_cpu_per_msg_SIZE_nN`` (N / N=1), each the median of per-round ratios;
    target N=4 <= 1.3.
(b) ``bench: shards-quota-round``, per (round, N): every shard process (at N=1 the
    Coordinator's own) held to ``--quota`` CPU by a cgroup (:mod:`bench._cgroup`, as
    root), the same 8 pairs at the first of ``--sizes``; ``saturated`` if every shard
    used >= 80% of its quota. Summary: ``ratio_quota_msgs_per_s_n3`` (msgs/s at N=3 /
    N=1, median of per-round ratios); target >= 2.1.
(c) ``bench: shards-cross-round``, per (round, path): at N=2, a same-shard and a
    cross-shard pair (clients connected until both exist), ``msgs_per_s`` of 1 KiB
    messages, then ``--ping-n`` 64 B echo round trips (``p50_us``, ``p99_us``).
    Summary: ``ratio_cross_{msgs_per_s,p50,p99}`` (cross / same; context, no target).

Each run is a fresh Coordinator; the runners' order rotates every round
(:func:`bench._common.alternate`) so machine drift cancels in the per-round ratios.
The last line (``bench: shards``) has the medians, the ratios, ``target_...`` and
``ok_...`` (None when not measured) for each, and ``skipped``: what did not run, why.
``--frontends 1`` runs everything at N=1 only ((b) without N=3, (c) same-shard only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from bench import _cgroup
from bench._clients import COORD_NAME, PING_SIZE, PING_WARMUP, Target, connect, stream_ping
from bench._common import (
    MP,
    STARTUP_TIMEOUT_S,
    Cmd,
    CoordHandle,
    Ctl,
    Procs,
    Stop,
    alternate,
    emit,
    int_list,
    make_self_signed,
    median,
    percentile,
    start_coord,
)

PAIRS = 8
#: Client host processes of the 8-pair workload (each holds 2 senders, 2 receivers).
HOSTS = 4
SIZES = (1024, 64)
FRONTENDS = (1, 2, 4)
QUOTA_N = 3  # (b): N = 3 against N = 1
CROSS_N = 2  # (c)
CROSS_SIZE = 1024
PING_N = 200
#: A stream whose first message starts with this byte is echoed (ping), else counted.
ECHO = b"E"
PING_MESSAGE = ECHO + bytes(PING_SIZE - 1)
#: Time for the load command to reach every host before the senders start.
LEAD_S = 0.3
#: Load before the measured window starts (connections at full speed).
WARMUP_S = 1.0
#: Clients connected at most while looking for a same- and a cross-shard pair.
MAX_SEARCH = 24
TARGET_CPU_N4 = 1.3
TARGET_QUOTA_N3 = 2.1
#: (b): a shard using at least this share of its quota over the window is saturated.
SATURATED = 0.8

_R = TypeVar("_R")


# --------------------------------------------------------------------------- stats


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The shards' figures at one moment (``t``: the middle of the ``stats()`` call)."""

    t: float
    shards: dict[int, dict[str, Any]]

    def total(self, key: str) -> float:
        return float(sum(fe[key] for fe in self.shards.values()))


def snapshot(coord: CoordHandle) -> Snapshot:
    t0 = time.perf_counter()
    stats = coord.stats()
    t1 = time.perf_counter()
    # One dict per shard: shard, pid, clients, messages_forwarded, cpu_seconds, ...
    return Snapshot((t0 + t1) / 2, {fe["shard"]: fe for fe in stats["frontends"]})


# --------------------------------------------------------------------------- client hosts


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.perf_counter()))


async def _serve(incoming: Any, cell: list[int]) -> None:
    """One incoming stream: echo it (first message starts with ECHO) or count it."""
    recv = incoming.recv
    first = await recv.recv()
    if first[:1] == ECHO:
        send = incoming.send
        await send.send(first)
        async for message in recv:
            await send.send(message)
        return
    cell[0] += 1
    async for _ in recv:
        cell[0] += 1


async def _send_until(send: Any, size: int, t_start: float, t_end: float) -> int:
    payload = bytes(size)
    clock = time.perf_counter
    await _sleep_until(t_start)
    n = 0
    while clock() < t_end:
        await send.send(payload)
        n += 1
    return n


async def host_main(host: int, cmd: Cmd, *, ctl: Ctl, stop: Stop) -> None:
    """A process holding clients; does what the parent says on *cmd*, in order:

    * ``("connect", id, target)``: connect client *id*; reply ``("connected", id)``;
      it then counts (or echoes) every stream other clients open to it;
    * ``("open", sender, receiver, tag)``: a proxied stream sender -> receiver,
      kept as ``"sender/tag"``; reply ``("opened", key)``;
    * ``("load", keys, size, t_start, t_end, w0, w1)``: the streams *keys* held here
      send *size*-byte messages from *t_start* to *t_end*; the receivers' counts are
      read at *w0* and *w1*; reply ``("load", {"host", "t0", "t1", "delivered",
      "sent"})``;
    * ``("ping", key, n)``: *n* 64-byte echo round trips on stream *key*; reply
      ``("ping", rtts_us)``.
    """
    clients: dict[str, Any] = {}
    streams: dict[str, tuple[Any, Any]] = {}
    counts: dict[str, list[int]] = {}
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(_reporting(coro))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _reporting(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:
            if not stop.is_set():  # closing clients end their streams: no error
                ctl.put(("error", f"host {host}: {traceback.format_exc()}"))

    async def accept(client: Any, cell: list[int]) -> None:
        async for incoming in client.incoming:
            spawn(_serve(incoming, cell))

    async def load(keys: list[str], size: int, t_start: float, t_end: float, w0: float,
                   w1: float) -> None:
        senders = [asyncio.create_task(_send_until(streams[k][0], size, t_start, t_end))
                   for k in keys if k in streams]
        try:
            await _sleep_until(w0)
            t0, c0 = time.perf_counter(), {cid: cell[0] for cid, cell in counts.items()}
            await _sleep_until(w1)
            t1, c1 = time.perf_counter(), {cid: cell[0] for cid, cell in counts.items()}
            sent = sum(await asyncio.gather(*senders))
        finally:  # stopped early: the senders end with this task
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
        ctl.put(("load", {"host": host, "t0": t0, "t1": t1, "sent": sent,
                          "delivered": {cid: c1[cid] - c0[cid] for cid in c0}}))

    async def ping(key: str, n: int) -> None:
        send, recv = streams[key]
        rtts = await stream_ping(send, recv, PING_MESSAGE, n, warmup=PING_WARMUP,
                                 timeout=STARTUP_TIMEOUT_S, check=True)
        ctl.put(("ping", rtts))

    try:
        while not stop.is_set():
            try:
                op, *args = cmd.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.005)
                continue
            if op == "connect":
                cid, target = args
                clients[cid] = client = await connect(cid, target)
                counts[cid] = cell = [0]
                spawn(accept(client, cell))
                ctl.put(("connected", cid))
            elif op == "open":
                sender, receiver, tag = args
                key = f"{sender}/{tag}"
                streams[key] = await clients[sender].new_proxied_stream(receiver)
                ctl.put(("opened", key))
            elif op == "load":
                spawn(load(*args))
            elif op == "ping":
                spawn(ping(*args))
            else:
                raise ValueError(f"unknown command {op!r}")
    finally:
        for task in list(tasks):
            task.cancel()
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()


# --------------------------------------------------------------------------- a session


class Session:
    """A Coordinator with *n* shards and *hosts* client host processes, in *procs*."""

    def __init__(self, procs: Procs, n: int, hosts: int) -> None:
        cert, key = make_self_signed(COORD_NAME)
        self.procs = procs
        self.n = n
        self.coord = start_coord(procs, cert, key, frontends=n)
        self.target: Target = (self.coord.port, cert, 1200)
        self.cmds: list[Cmd] = []
        for h in range(hosts):
            cmd: Cmd = MP.Queue()
            procs.start(f"host{h}", host_main, h, cmd)
            self.cmds.append(cmd)
        #: client id -> (host, shard)
        self.placed: dict[str, tuple[int, int]] = {}
        self._clients = {k: fe["clients"] for k, fe in snapshot(self.coord).shards.items()}

    def connect(self, cid: str, host: int) -> int:
        """Connect client *cid* on *host*; the shard it landed on."""
        self.cmds[host].put(("connect", cid, self.target))
        self.procs.expect("connected")
        before = self._clients
        deadline = time.monotonic() + 10
        while True:
            now = {k: fe["clients"] for k, fe in snapshot(self.coord).shards.items()}
            grown = [k for k, c in now.items() if c > before.get(k, 0)]
            if sum(now.values()) == sum(before.values()) + 1 and len(grown) == 1:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cid}: no single shard's clients grew ({before} -> {now})")
            time.sleep(0.02)
        self._clients = now
        self.placed[cid] = (host, grown[0])
        return grown[0]

    def open(self, sender: str, receiver: str, tag: str) -> str:
        """A proxied stream sender -> receiver; its key."""
        self.cmds[self.placed[sender][0]].put(("open", sender, receiver, tag))
        key: str = self.procs.expect("opened")
        return key

    def shard(self, cid: str) -> int:
        return self.placed[cid][1]

    def load(self, keys: list[str], size: int, duration: float) -> dict[str, Any]:
        """Streams *keys* send *size*-byte messages; the window's figures."""
        t_start = time.perf_counter() + LEAD_S
        w0 = t_start + WARMUP_S
        w1 = w0 + duration
        t_end = w1 + 0.1
        for cmd in self.cmds:
            cmd.put(("load", keys, size, t_start, t_end, w0, w1))
        time.sleep(max(0.0, w0 - time.perf_counter()))
        s0 = snapshot(self.coord)
        time.sleep(max(0.0, w1 - time.perf_counter()))
        s1 = snapshot(self.coord)
        reports = self.procs.expect_n("load", len(self.cmds), timeout=STARTUP_TIMEOUT_S)
        self._quiesce()
        window = s1.t - s0.t
        cpu = s1.total("cpu_seconds") - s0.total("cpu_seconds")
        forwarded = s1.total("messages_forwarded") - s0.total("messages_forwarded")
        delivered_per_s = sum(sum(r["delivered"].values()) / (r["t1"] - r["t0"])
                              for r in reports)
        shard_cpu = {k: (fe["cpu_seconds"] - s0.shards[k]["cpu_seconds"]) / window
                     for k, fe in s1.shards.items() if k in s0.shards}
        return {
            "size": size,
            "msgs_per_s": delivered_per_s,
            "forwarded_per_s": forwarded / window,
            "cpu_us_per_msg": cpu / forwarded * 1e6 if forwarded else None,
            "cpu_us_per_delivered": cpu / (delivered_per_s * window) * 1e6
            if delivered_per_s else None,
            "cpu_seconds": cpu,
            "window_s": window,
            "shard_cpu": [shard_cpu[k] for k in sorted(shard_cpu)],
            "sent": sum(r["sent"] for r in reports),
        }

    def _quiesce(self, timeout: float = 30.0) -> None:
        """Wait until the Coordinator forwards nothing more (the streams drained)."""
        deadline = time.monotonic() + timeout
        last = snapshot(self.coord).total("messages_forwarded")
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = snapshot(self.coord).total("messages_forwarded")
            if now == last:
                return
            last = now
        raise RuntimeError(f"still forwarding {timeout:.0f} s after the senders stopped")

    def ping(self, key: str, n: int) -> list[float]:
        self.cmds[self.placed[key.split("/")[0]][0]].put(("ping", key, n))
        rtts: list[float] = self.procs.expect("ping", timeout=STARTUP_TIMEOUT_S + 60)
        return rtts

    def pids(self) -> dict[int, int]:
        """shard -> the pid of its process (a shard down has none)."""
        return {k: int(fe["pid"]) for k, fe in snapshot(self.coord).shards.items()
                if fe["pid"] is not None}

    def close(self) -> None:
        """Stop the hosts (their clients close while the Coordinator still runs)."""
        for h in range(len(self.cmds)):
            self.procs.stop(f"host{h}")


@contextlib.contextmanager
def session(label: str, n: int, hosts: int) -> Iterator[Session]:
    with Procs(label) as procs:
        s = Session(procs, n, hosts)
        try:
            yield s
        finally:
            s.close()


def place_pairs(s: Session) -> tuple[list[str], int, list[list[int]]]:
    """Connect the 8 pairs one client at a time (sender i on host i % H, its receiver
    on the next host) and open their streams: the stream keys, how many pairs cross
    shards, and each pair's [sender shard, receiver shard]."""
    hosts = len(s.cmds)
    for i in range(PAIRS):
        s.connect(f"s{i}", i % hosts)
        s.connect(f"r{i}", (i + 1) % hosts)
    keys = [s.open(f"s{i}", f"r{i}", "load") for i in range(PAIRS)]
    placement = [[s.shard(f"s{i}"), s.shard(f"r{i}")] for i in range(PAIRS)]
    return keys, sum(a != b for a, b in placement), placement


# --------------------------------------------------------------------------- (a) (b) (c)


def run_cpu(n: int, sizes: list[int], duration: float, r: int) -> dict[int, dict[str, Any]]:
    """(a): one session at N=n; a line per size."""
    out = {}
    with session(f"shards-n{n}", n, HOSTS) as s:
        keys, crossed, placement = place_pairs(s)
        for size in sizes:
            run = s.load(keys, size, duration)
            line = {"bench": "shards-cpu-round", "round": r, "frontends": n, "pairs": PAIRS,
                    "cross_pairs": crossed, "placement": placement, **run}
            emit(line)
            out[size] = line
    return out


def run_quota(n: int, size: int, duration: float, quota: float, r: int) -> dict[str, Any]:
    """(b): one session at N=n, every shard held to *quota* CPU."""
    with session(f"shards-quota-n{n}", n, HOSTS) as s:
        keys, crossed, _ = place_pairs(s)
        with _cgroup.CpuQuota(quota, label="conec-bench-shards") as q:
            held: set[int] = set()
            for k, pid in sorted(s.pids().items()):
                if pid not in held:  # a process hosting two shards gets one quota
                    q.limit(pid, f"shard{k}")
                    held.add(pid)
            run = s.load(keys, size, duration)
    line = {"bench": "shards-quota-round", "round": r, "frontends": n, "quota": quota,
            "pairs": PAIRS, "cross_pairs": crossed, **run,
            "saturated": all(c >= SATURATED * quota for c in run["shard_cpu"])}
    emit(line)
    return line


def find_pairs(s: Session, want_cross: bool) -> dict[str, tuple[str, str]]:
    """Connect clients one at a time, alternately on hosts 0 and 1, until there is a
    same-shard pair (and, with *want_cross*, a cross-shard one), sender on host 0."""
    pairs: dict[str, tuple[str, str]] = {}
    for i in range(MAX_SEARCH):
        s.connect(f"c{i}", i % 2)
        senders = [c for c, (h, _) in s.placed.items() if h == 0]
        receivers = [c for c, (h, _) in s.placed.items() if h == 1]
        for a in senders:
            for b in receivers:
                path = "same" if s.shard(a) == s.shard(b) else "cross"
                pairs.setdefault(path, (a, b))
        if "same" in pairs and ("cross" in pairs or not want_cross):
            return pairs
    return pairs


def run_cross(n: int, rounds: int, duration: float, ping_n: int) -> Iterator[dict[str, Any]]:
    """(c): one session at N=n; a line per (round, path)."""
    with session(f"shards-cross-n{n}", n, 2) as s:
        pairs = find_pairs(s, want_cross=n > 1)
        keys = {path: (s.open(a, b, "load"), s.open(a, b, "ping"))
                for path, (a, b) in pairs.items()}

        def runner(path: str) -> Callable[[int], dict[str, Any]]:
            def run(r: int) -> dict[str, Any]:
                load_key, ping_key = keys[path]
                a, b = pairs[path]
                line = {"bench": "shards-cross-round", "round": r, "frontends": n,
                        "path": path, "shards": [s.shard(a), s.shard(b)],
                        **s.load([load_key], CROSS_SIZE, duration)}
                rtts = s.ping(ping_key, ping_n)
                line.update(ping_n=len(rtts), p50_us=percentile(rtts, 50),
                            p99_us=percentile(rtts, 99))
                emit(line)
                return line
            return run

        runs = alternate({path: runner(path) for path in sorted(pairs, reverse=True)}, rounds,
                         progress="bench.shards (c)")
    for path in runs:
        yield from runs[path]


# --------------------------------------------------------------------------- summary


def _ratio(runs: dict[Any, list[dict[str, Any]]], num: Any, den: Any,
           key: str) -> float | None:
    """Median of the per-round ratios runs[num][r][key] / runs[den][r][key]."""
    if num not in runs or den not in runs:
        return None
    per_round = [a[key] / b[key] for a, b in zip(runs[num], runs[den], strict=True)
                 if a.get(key) and b.get(key)]
    return median(per_round) if per_round else None


def _by_n(runs: dict[str, list[_R]]) -> dict[int, list[_R]]:
    """`alternate`'s results (runners named by N) by N."""
    return {int(n): rs for n, rs in runs.items()}


def _ok(value: float | None, target: float, higher: bool) -> bool | None:
    if value is None:
        return None
    return value >= target if higher else value <= target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.shards",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds; every round runs every N")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per measured window")
    p.add_argument("--sizes", type=int_list, default=list(SIZES), help="comma-separated bytes")
    p.add_argument("--frontends", type=int_list, default=list(FRONTENDS),
                   help="comma-separated shard counts for (a); any N > 1 also enables "
                   f"N={QUOTA_N} in (b) and N={CROSS_N} in (c)")
    p.add_argument("--quota", type=float, default=0.2, help="CPUs per shard in (b)")
    p.add_argument("--skip-quota", action="store_true", help="do not run (b)")
    p.add_argument("--ping-n", type=int, default=PING_N, help="round trips per ping in (c)")
    args = p.parse_args(argv)
    if (args.rounds < 1 or args.duration <= 0 or not args.sizes or args.quota <= 0
            or args.ping_n < 1 or not args.frontends or min(args.frontends) < 1):
        p.error("--rounds, --ping-n and every --frontends must be >= 1, --duration and "
                "--quota > 0, --sizes not empty")
    # SIGTERM ends the run like Ctrl-C: the finally blocks (cgroups, processes) run.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> None:
    """Everything `main` measures, with its parsed options."""
    skipped: list[str] = []
    ns = sorted(set(args.frontends) | {1})
    summary: dict[str, Any] = {"bench": "shards", "rounds": args.rounds,
                               "duration": args.duration, "pairs": PAIRS, "frontends": ns}
    summary.update(_cpu_part(args, ns))
    summary.update(_quota_part(args, len(ns) > 1, skipped))
    summary.update(_cross_part(args, len(ns) > 1, skipped))
    summary["baseline_impl"] = "frontends=1 (cross: a same-shard stream)"
    flags = [v for k, v in summary.items() if k.startswith("ok_") and v is not None]
    summary["ok"] = all(flags) if flags else None
    summary["skipped"] = skipped
    emit(summary)


def _med(values: Iterator[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return median(got) if got else None


def _cpu_part(args: argparse.Namespace, ns: list[int]) -> dict[str, Any]:
    """(a): its summary fields."""
    runs = _by_n(alternate(
        {str(n): functools.partial(run_cpu, n, args.sizes, args.duration) for n in ns},
        args.rounds, progress="bench.shards (a)"))
    out: dict[str, Any] = {
        "cross_pairs": {str(n): [x[args.sizes[0]]["cross_pairs"] for x in rs]
                        for n, rs in runs.items()},
        "cpu_us_per_msg": {str(size): {str(n): _med(x[size]["cpu_us_per_msg"] for x in rs)
                                       for n, rs in runs.items()} for size in args.sizes}}
    for size in args.sizes:
        by_n = {n: [x[size] for x in rs] for n, rs in runs.items()}
        for n in (2, 4):
            out[f"ratio_cpu_per_msg_{size}_n{n}"] = _ratio(by_n, n, 1, "cpu_us_per_msg")
        key = f"ratio_cpu_per_msg_{size}_n4"
        out[f"target_{key}"] = f"<= {TARGET_CPU_N4}"
        out[f"ok_cpu_per_msg_{size}_n4"] = _ok(out[key], TARGET_CPU_N4, False)
    return out


def _quota_part(args: argparse.Namespace, multi: bool, skipped: list[str]) -> dict[str, Any]:
    """(b): its summary fields; what it skipped goes to *skipped*."""
    key = f"ratio_quota_msgs_per_s_n{QUOTA_N}"
    out: dict[str, Any] = {"quota": args.quota, "quota_size": args.sizes[0], key: None,
                           f"target_{key}": f">= {TARGET_QUOTA_N3}"}
    why = "--skip-quota" if args.skip_quota else _cgroup.unavailable()
    if why is None:
        qns = [1, QUOTA_N] if multi else [1]
        try:
            runs = _by_n(alternate(
                {str(n): functools.partial(run_quota, n, args.sizes[0], args.duration,
                                           args.quota) for n in qns},
                args.rounds, progress="bench.shards (b)"))
        except _cgroup.CgroupError as e:
            why = str(e)
        else:
            out["quota_msgs_per_s"] = {str(n): median(x["msgs_per_s"] for x in rs)
                                       for n, rs in runs.items()}
            out["quota_saturated"] = all(x["saturated"] for rs in runs.values() for x in rs)
            out[key] = _ratio(runs, QUOTA_N, 1, "msgs_per_s")
            if not multi:
                skipped.append(f"(b) N={QUOTA_N}: needs frontends > 1")
    if why is not None:
        skipped.append(f"(b) quota: {why}")
        emit({"bench": "shards-quota", "skipped": why})
    out[f"ok_quota_msgs_per_s_n{QUOTA_N}"] = _ok(out[key], TARGET_QUOTA_N3, True)
    return out


def _cross_part(args: argparse.Namespace, multi: bool, skipped: list[str]) -> dict[str, Any]:
    """(c): its summary fields; what it skipped goes to *skipped*."""
    n = CROSS_N if multi else 1
    runs: dict[str, list[dict[str, Any]]] = {}
    for line in run_cross(n, args.rounds, args.duration, args.ping_n):
        runs.setdefault(line["path"], []).append(line)
    if "cross" not in runs:
        why = (f"no cross-shard pair among {MAX_SEARCH} clients" if multi
               else "cross-shard needs frontends >= 2")
        skipped.append(f"(c) {why}")
        emit({"bench": "shards-cross", "skipped": why})
    out: dict[str, Any] = {"cross_frontends": n}
    for path, lines in runs.items():
        for field in ("msgs_per_s", "p50_us", "p99_us"):
            out[f"{path}_{field}"] = median(x[field] for x in lines)
    for stat in ("msgs_per_s", "p50", "p99"):
        field = stat if stat == "msgs_per_s" else f"{stat}_us"
        out[f"ratio_cross_{stat}"] = _ratio(runs, "cross", "same", field)
    return out


if __name__ == "__main__":
    main()
