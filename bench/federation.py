"""Federation (DESIGN.md section 9): a proxied stream and asks between two
Coordinators of a federation, against the same within one Coordinator.

Processes, for every session: a 3-node NATS cluster with JetStream (Debian's
``nats-server``, started once for the whole run by ``tests/nats_cluster.py``),
two Coordinators **X** and **Y** (``CoordConfig(cluster=URLS, name=...)``, each
in a spawned process of its own, :func:`bench._common.coord_main`), the
receiver **B** and the sender **A** (a process each). A is on X; B is on X
(path ``same``, the baseline) or on Y (path ``cross``). Both Coordinators run in
both paths, so the only difference is where B is. X talks to NATS node 0 and Y to
node 1 (``--nats-nodes spread``, as Coordinators on two hosts would, each to
its nearest node: what X sends Y crosses a route between two servers), or both
to node 0 (``--nats-nodes shared``).

A session (fresh Coordinators and clients, one per path and round), A's side:

* for every size: a proxied stream to B (``new_proxied_stream("b")``) carrying a
  calibration run (about :data:`CALIBRATION_S` seconds at a guessed rate; its
  rate sizes ``N`` so that the measured run lasts about ``--duration`` s), then
  a new stream carrying ``N`` messages of ``size`` bytes as fast as ``await
  send.send(...)`` returns. The first message of each stream tells B how many
  follow; B times them from the first to the last and answers with its figures
  on the stream's way back;
* ``--ask-n`` sequential ``await client.ask("b", body)`` of 64 bytes (after
  :data:`WARMUP` unmeasured ones), which B answers with the body;
* as many 64-byte round trips on a proxied stream B echoes (context: what the
  stream path costs without the mailbox).

The paths alternate ``--rounds`` times (the order flips every round). One JSON
line per size (``bench: federation``): each path's median msgs/s and MB/s,
every run's figures, ``ratio_msgs_per_s`` (cross / same; target >= 0.5); one
line for the round trips (``bench: federation-ask``): medians of each path's
p50 and p99, ``ratio_p50`` (target <= 2.0) and ``ratio_p99``, and the same for
the stream round trip (context). Lines ``bench: federation-round`` give every
session's figures as they come.

``python -m bench.federation [--rounds 3] [--sizes 64,65536] [--duration 2]
[--ask-n 500] [--max-datagram-size 1200] [--nats-nodes spread|shared] [--quick]``

``--quick`` is a short run for a smoke test (one round, short runs, few asks).
Without ``nats-server`` or nats-py the bench prints ``{"bench": "federation",
"skipped": why}`` and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench._clients import COORD_NAME, HOST, Target, ask_pings, rtt_figures, stream_ping
from bench._common import (
    MB,
    MP,
    STARTUP_TIMEOUT_S,
    Cmd,
    CoordHandle,
    Ctl,
    Procs,
    Stop,
    alternate,
    coord_main,
    emit,
    int_list,
    make_self_signed,
    median,
    rates,
    wait_event,
)

SIZES = (64, 65536)
PATHS = ("same", "cross")
#: Body of the asks and of the stream round trips.
RTT_SIZE = 64
WARMUP = 50
ASK_N = 500
#: Calibration runs last about this long at the guessed rate.
CALIBRATION_S = 0.3
#: Rough msgs/s on a 2-core box; only sizes the calibration runs.
GUESS: dict[int, float] = {64: 20_000.0, 65536: 400.0}
MIN_COUNT = 100
#: Every measured run moves at least this many payload bytes.
MIN_PAYLOAD = 2 * MB
MAX_COUNT = 2_000_000
RTT_TIMEOUT_S = 5.0
#: Bound on one stream run, from its first message to B's figures.
RUN_TIMEOUT_S = 120.0
TARGET_MSGS = 0.5
TARGET_P50 = 2.0
QUICK = {"rounds": 1, "duration": 0.2, "ask_n": 30}
#: The first message of a stream: "count" (B counts that many messages that
#: follow and answers with its figures) or "echo" (B echoes every message).
COUNT, ECHO = b"N", b"E"


# --------------------------------------------------------------------------- clients


async def _connect(client_id: str, target: Target) -> Any:
    from conec_actors import Client, ClientConfig

    port, ca, mds = target
    return await Client.connect(ClientConfig(client_id, COORD_NAME, addr=(HOST, port), ca=ca,
                                             max_datagram_size=mds))


async def _serve_stream(incoming: Any) -> None:
    """One stream B was offered: count and answer, or echo."""
    recv, send = incoming.recv, incoming.send
    first = await recv.recv()
    if first[:1] == ECHO:
        async for message in recv:
            await send.send(message)
        return
    count = int(first[1:])
    clock = time.perf_counter
    nbytes = 0
    t_first = 0.0
    for i in range(count):
        message = await recv.recv()
        if not i:
            t_first = clock()
        nbytes += len(message)
    seconds = clock() - t_first
    await send.send(json.dumps({"received": count, "payload_bytes": nbytes,
                                "seconds": seconds}).encode())


async def receiver_main(target: Target, *, ctl: Ctl, stop: Stop) -> None:
    """Client B: answer every ask with its body; count or echo every stream."""
    client = await _connect("b", target)
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        t = asyncio.create_task(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    async def asks() -> None:
        async for env in client.mailbox:
            if env.is_ask:
                await env.reply(env.body)

    async def streams() -> None:
        async for incoming in client.incoming:
            spawn(_serve_stream(incoming))

    spawn(asks())
    spawn(streams())
    try:
        ctl.put(("ready", "b"))
        while not stop.is_set():
            await asyncio.sleep(0.05)
            for t in [t for t in tasks if t.done()]:
                t.result()  # B failed: report it
    finally:
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


def count_for(size: int, rate: float, duration: float) -> int:
    """Messages of *size* bytes for a run of about *duration* s at *rate* msgs/s."""
    return min(MAX_COUNT, max(MIN_COUNT, MIN_PAYLOAD // max(size, 1), int(rate * duration)))


async def _stream_run(client: Any, size: int, count: int) -> dict[str, Any]:
    """*count* messages of *size* bytes on a new proxied stream to B; B's figures."""
    send, recv = await client.new_proxied_stream("b")
    payload = bytes(size)
    await send.send(COUNT + str(count).encode())
    t0 = time.perf_counter()
    for _ in range(count):
        await send.send(payload)
    sender_s = time.perf_counter() - t0
    async with asyncio.timeout(RUN_TIMEOUT_S):
        got = json.loads(await recv.recv())
    await send.finish()
    if got["received"] != count or got["payload_bytes"] != count * size:
        raise RuntimeError(f"B counted {got['received']} messages ({got['payload_bytes']} "
                           f"bytes), expected {count} ({count * size})")
    return {"msgs": count, "seconds": got["seconds"], "sender_s": sender_s,
            **rates(size, count, got["seconds"])}


async def sender_main(target: Target, sizes: list[int], duration: float, ask_n: int,
                      *, ctl: Ctl, stop: Stop) -> None:
    """Client A: one session (a stream run per size, asks, stream round trips)."""
    client = await _connect("a", target)
    try:
        out: dict[str, Any] = {"stream": {}}
        body = bytes(RTT_SIZE)
        if await client.ask("b", body, timeout=STARTUP_TIMEOUT_S) != body:
            raise RuntimeError("B's answer differs from the ask")
        for size in sizes:
            guess = GUESS.get(size) or 5 * MB / max(size, 1)
            warm = await _stream_run(client, size, count_for(size, guess, CALIBRATION_S))
            run = await _stream_run(client, size, count_for(size, warm["msgs_per_s"], duration))
            run["calibration_msgs_per_s"] = warm["msgs_per_s"]
            out["stream"][str(size)] = run
        if ask_n > 0:
            rtts = await ask_pings(client, "b", body, ask_n, warmup=WARMUP,
                                   timeout=RTT_TIMEOUT_S)
            out["ask"] = rtt_figures(rtts)
            send, recv = await client.new_proxied_stream("b")
            await send.send(ECHO)
            rtts = await stream_ping(send, recv, body, ask_n, warmup=WARMUP,
                                     timeout=RTT_TIMEOUT_S, check=True)
            out["stream_ping"] = rtt_figures(rtts)
            await send.finish()
        ctl.put(("session", out))
        await wait_event(stop)
    finally:
        await client.close()


# --------------------------------------------------------------------------- sessions


def _start_coord(procs: Procs, name: str, cert: bytes, key: bytes,
                 options: dict[str, Any]) -> CoordHandle:
    cmd: Cmd = MP.Queue()
    procs.start(name, coord_main, cert, key, options, cmd)
    return CoordHandle(procs, cmd, procs.expect("coord"))


def run_session(path: str, clusters: dict[str, str], sizes: list[int], duration: float,
                ask_n: int, mds: int, label: str) -> dict[str, Any]:
    """One session on *path* (``"same"``: B on X; ``"cross"``: B on Y), with
    Coordinators X and Y on the NATS servers *clusters* names for each."""
    targets: dict[str, Target] = {}
    with Procs(f"federation-{path}") as procs:
        coords = {}
        for name in ("x", "y"):
            cert, key = make_self_signed(COORD_NAME)
            coords[name] = _start_coord(procs, name, cert, key, {
                "cluster": clusters[name], "name": f"{name}-{label}",
                "max_datagram_size": mds})
            targets[name] = (coords[name].port, cert, mds)
        procs.start("b", receiver_main, targets["y" if path == "cross" else "x"])
        procs.expect("ready")
        procs.start("a", sender_main, targets["x"], sizes, duration, ask_n)
        timeout = STARTUP_TIMEOUT_S + len(sizes) * (RUN_TIMEOUT_S + 10 * duration) + ask_n * 0.1
        session: dict[str, Any] = procs.expect("session", timeout=timeout)
        session["messages_forwarded"] = {n: c.stats()["messages_forwarded"]
                                         for n, c in coords.items()}
    session["path"] = path
    return session


# --------------------------------------------------------------------------- the NATS cluster


def nats_missing() -> str | None:
    """Why the federation cannot run here, or None if it can."""
    if shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists():
        return "nats-server is not installed (Debian package nats-server)"
    if importlib.util.find_spec("nats") is None:
        return "nats-py is not installed (pip install 'conec-actors[cluster]')"
    return None


@contextlib.contextmanager
def nats_cluster(tmp: Path) -> Iterator[str]:
    """A 3-node NATS cluster with JetStream (``tests/nats_cluster.py``) for the
    length of a ``with`` block: its URLs, as ``CoordConfig.cluster`` takes them.
    Its servers are processes of their own: the block may block."""
    from tests.nats_cluster import nats_cluster as start

    loop = asyncio.new_event_loop()
    try:
        running = start(tmp, 3)
        cluster = loop.run_until_complete(running.__aenter__())
        try:
            yield str(cluster.url)
        finally:
            loop.run_until_complete(running.__aexit__(None, None, None))
    finally:
        loop.close()


# --------------------------------------------------------------------------- results


def _stream_summary(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    rs = [r["stream"][str(size)] for r in runs]
    return {"msgs_per_s": median(r["msgs_per_s"] for r in rs),
            "mb_per_s": median(r["mb_per_s"] for r in rs),
            "runs": [{k: r[k] for k in ("msgs", "msgs_per_s", "mb_per_s", "seconds",
                                        "calibration_msgs_per_s")} for r in rs]}


def _rtt_summary(runs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    rs = [r[kind] for r in runs]
    return {"p50_us": median(r["p50_us"] for r in rs), "p99_us": median(r["p99_us"] for r in rs),
            "runs": [{"p50_us": r["p50_us"], "p99_us": r["p99_us"]} for r in rs]}


def results(runs: dict[str, list[dict[str, Any]]], sizes: list[int], rounds: int,
            ask_n: int) -> list[dict[str, Any]]:
    """The summary lines of alternated sessions *runs* (by path)."""
    out = []
    baseline = "one Coordinator (A and B both on X)"
    for size in sizes:
        same, cross = (_stream_summary(runs[p], size) for p in PATHS)
        out.append({"bench": "federation", "size": size, "rounds": rounds,
                    "same": same, "cross": cross,
                    "ratio_msgs_per_s": cross["msgs_per_s"] / same["msgs_per_s"],
                    "ratio_mb_per_s": cross["mb_per_s"] / same["mb_per_s"],
                    "target_ratio": f">= {TARGET_MSGS}", "baseline_impl": baseline})
    if ask_n > 0:
        line: dict[str, Any] = {"bench": "federation-ask", "size": RTT_SIZE, "n": ask_n,
                                "rounds": rounds, "baseline_impl": baseline}
        for kind, prefix in (("ask", ""), ("stream_ping", "stream_")):
            same, cross = (_rtt_summary(runs[p], kind) for p in PATHS)
            line[f"{prefix}same"], line[f"{prefix}cross"] = same, cross
            for stat in ("p50", "p99"):
                line[f"ratio_{prefix}{stat}"] = cross[f"{stat}_us"] / same[f"{stat}_us"]
        line["target_ratio"] = f"<= {TARGET_P50}"
        line["target_ratio_stream_p50"] = "none (context: the stream path without the mailbox)"
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.federation",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="sessions per path")
    p.add_argument("--sizes", type=int_list, default=list(SIZES), help="comma-separated bytes")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per stream run (about)")
    p.add_argument("--ask-n", type=int, default=ASK_N, help="asks per session (0: none)")
    p.add_argument("--max-datagram-size", type=int, default=1200)
    p.add_argument("--nats-nodes", choices=("spread", "shared"), default="spread",
                   help="X on NATS node 0 and Y on node 1 (spread), or both on node 0")
    p.add_argument("--quick", action="store_true",
                   help="a short run: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                    for k, v in QUICK.items()))
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if args.rounds < 1 or args.duration <= 0 or args.ask_n < 0:
        p.error("--rounds must be >= 1, --duration > 0 and --ask-n >= 0")
    why = nats_missing()
    if why is not None:
        emit({"bench": "federation", "skipped": why})
        return
    with tempfile.TemporaryDirectory(prefix="conec-bench-nats-") as tmp, \
            nats_cluster(Path(tmp)) as cluster:
        urls = cluster.split(",")
        clusters = {"x": urls[0], "y": urls[1 if args.nats_nodes == "spread" else 0]}

        def runner(path: str) -> Callable[[int], dict[str, Any]]:
            def run(r: int) -> dict[str, Any]:
                session = run_session(path, clusters, args.sizes, args.duration, args.ask_n,
                                      args.max_datagram_size, f"{path}{r}")
                emit({"bench": "federation-round", "round": r, **session})
                return session
            return run

        runs = alternate({p: runner(p) for p in PATHS}, args.rounds,
                         progress="bench.federation")
    for line in results(runs, args.sizes, args.rounds, args.ask_n):
        emit({**line, "nats_nodes": args.nats_nodes})


if __name__ == "__main__":
    main()
