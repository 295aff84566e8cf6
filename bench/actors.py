"""Actors: tell msgs/s and ask (and tell) round trips, proxied and direct, with baselines.

Every conec-actors run is one *session* of three processes (plus the Coordinator's
routing worker), one session per path and round:

* the **Coordinator**: ``Coord.start(CoordConfig(..., port=0))`` in a spawned process of
  its own (:func:`bench._common.coord_main`);
* the **receiver B**: ``Client`` ``"b"``, which reads ``client.mailbox``: it counts the
  envelopes of ``bytes`` tells (first to last arrival, ``time.perf_counter``), answers
  every ``bytes`` ask with ``await env.reply(env.body)``, and in tell-round-trip mode
  tells every ``bytes`` tell straight back to its sender;
* the **sender A**: ``Client`` ``"a"``. On the direct path it first calls
  ``await client.new_channel("b")``; its mailbox stream then rides the channel (checked:
  ``client.mailbox.route("b") == "direct"`` on A, ``route("a") == "direct"`` on B, and
  the Coordinator's ``bytes_forwarded`` must not grow during the session). For every
  size it tells a short warm-up burst (which also sizes ``N`` so that a run lasts about
  ``--duration`` seconds), then ``N`` messages of ``size`` bytes (``bytes`` bodies), as
  fast as ``await client.tell("b", body)`` returns. Then ``--ask-n`` sequential
  ``await client.ask("b", body)`` of 64 bytes after :data:`WARMUP` unmeasured ones, and
  as many tell round trips (A tells B, B tells A back, A reads its own mailbox), and
  as many round trips on a plain stream of the same path (``new_direct_stream`` /
  ``new_proxied_stream``, B echoes): ``conec_stream_ping`` in the ask lines, so what the
  mailbox adds can be told apart from what the stream layer costs.

A and B steer each other in band: A's control asks carry a ``dict`` body (``arm`` before
a tell run, ``result`` after it: since order holds per pair, B answers ``result`` only
once it has counted every tell before it).

Baselines, in the same invocation (each run in fresh processes):

* **proxied**: the naive aioquic relay of :mod:`bench.naive_relay`
  (``run_naive_relay`` for msgs/s, ``run_naive_relay_ping`` for the round trip);
* **direct**: one plain aioquic connection (:func:`bench.direct.run_plain`,
  :func:`bench.direct.run_plain_ping`);
* **NATS** request/reply as context: ``nats-server`` on a free loopback port, a
  responder (``msg.respond(msg.data)``) and a requester (``await nc.request(...)``) in
  two processes. Skipped, with a JSON line saying why, when ``nats-server`` or nats-py
  is missing (Debian ``nats-server``, PyPI ``nats-py``) or with ``--no-nats``.

For every size the baselines' ``N`` comes from a short calibration run, as in
:mod:`bench.proxied`. Runs alternate ``--rounds`` times (the order rotates every round).
One JSON line per measurement kind, size and path gives the medians, the baseline's
medians and the ratios: ``actors-tell`` (msgs/s, context only, no target),
``actors-ask`` and ``actors-tell-rtt`` (p50/p99; design target, DESIGN.md section 6:
p50 <= 1.2x the baseline's ping), and ``actors-nats`` (NATS request/reply p50/p99 and
the ask's ratio to it).

Then groups (DESIGN.md section 11), as ``python -m bench.groups`` does, for
``--group-rounds`` rounds (0 skips them): ``groups-round`` lines and a ``groups`` line
with ``tell_group`` msgs/s against ``tell`` to one peer (target >= 0.8x), ``ask_group``
p50 against ``ask`` p50 (target <= 1.2x) and the share of a group's asks that a member
slowed 10x gets (target < 0.25).

``python -m bench.actors [--rounds 5] [--sizes 64,1024] [--duration 2] [--ask-n 1000]
[--max-datagram-size 1200] [--naive-socket-buffer BYTES] [--no-nats] [--group-rounds 7]
[--py-spy DIR]``

``--sizes ''`` skips the tell runs and ``--ask-n 0`` the round trips (useful with
``--py-spy DIR``, which records the Coordinator's front-end and clients A and B during
every conec session, py-spy's raw collapsed-stack format). A default run takes about
a minute and a half on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import direct, groups, naive_relay
from bench._clients import (
    COORD_NAME,
    NatsServer,
    PySpy,
    Target,
    ask_pings,
    check_py_spy,
    connect,
    rtt_figures,
    run_naive,
    stream_ping,
    want_nats,
)
from bench._common import (
    MB,
    STARTUP_TIMEOUT_S,
    Ctl,
    Procs,
    Stop,
    alternate,
    emit,
    int_list,
    make_self_signed,
    median,
    ping_summary,
    rates,
    start_coord,
    udp_rcvbuf_errors,
    wait_event,
)

IMPL = "conec-actors"
NAIVE = naive_relay.IMPL
PLAIN = direct.PLAIN
NATS = "nats"
PATHS = ("proxied", "direct")
#: The baseline of each path.
BASELINE = {"proxied": NAIVE, "direct": PLAIN}

#: Default tell sizes (bytes bodies).
SIZES = (64, 1024)
#: Body size of asks and tell round trips (the baselines' ping uses 64 bytes too).
RTT_SIZE = 64
#: Unmeasured asks (and tell round trips) before the measured ones.
WARMUP = 50
#: Warm-up / calibration tell runs last about this long at the guessed rate.
CALIBRATION_S = 0.3
#: Rough tell msgs/s on a 2-core box; only sizes the warm-up runs.
TELL_GUESS: dict[int, float] = {64: 30_000.0, 1024: 15_000.0}
MIN_COUNT = 200
#: Every measured run moves at least this many payload bytes.
MIN_PAYLOAD = MB
MAX_COUNT = 2_000_000
#: Timeout of one control ask (it waits for B to drain a whole run).
CONTROL_TIMEOUT_S = 120.0
RTT_TIMEOUT_S = 5.0

CAVEAT = ("2-core machine shared with other workloads (tests of other engineers may run "
          "concurrently): absolute figures are noisy, compare ratios within one run")


def count_for(size: int, rate: float, duration: float) -> int:
    """Messages of *size* bytes for a run of about *duration* seconds at *rate* msgs/s."""
    return min(MAX_COUNT, max(MIN_COUNT, MIN_PAYLOAD // max(size, 1), int(rate * duration)))


# --------------------------------------------------------------------------- conec clients


class Counter:
    """B's tally of one tell run (armed by A's ``arm`` control ask)."""

    __slots__ = ("expect", "nbytes", "received", "t_first", "t_last")

    def __init__(self, expect: int = 0) -> None:
        self.expect = expect
        self.received = 0
        self.nbytes = 0
        self.t_first = 0.0
        self.t_last = 0.0

    def result(self) -> dict[str, Any]:
        return {"received": self.received, "payload_bytes": self.nbytes,
                "seconds": self.t_last - self.t_first}


async def receiver_main(target: Target, *, ctl: Ctl, stop: Stop) -> None:
    """Client B: count tells, echo asks (and, when asked to, tells) until stopped."""
    client = await connect("b", target)

    async def serve() -> None:
        counter = Counter()
        echo_tells = False
        clock = time.perf_counter
        tell = client.tell
        async for env in client.mailbox:
            body = env.body
            if type(body) is bytes:
                if env.is_ask:
                    await env.reply(body)
                elif echo_tells:
                    await tell(env.sender, body)
                else:
                    now = clock()
                    if not counter.received:
                        counter.t_first = now
                    counter.t_last = now
                    counter.received += 1
                    counter.nbytes += len(body)
                continue
            cmd = body["cmd"]  # a control ask from A
            if cmd == "arm":
                counter = Counter(body["n"])
                echo_tells = False
                await env.reply(True)
            elif cmd == "result":
                await env.reply(counter.result())
            elif cmd == "echo":
                echo_tells = True
                await env.reply(True)
            elif cmd == "route":
                await env.reply(client.mailbox.route(env.sender))
            else:
                raise RuntimeError(f"B: unknown control message {body!r}")

    async def echo_streams() -> None:
        # Plain streams (not mailbox ones): echo every message, for the stream ping.
        echoes: set[asyncio.Task[None]] = set()

        async def echo(incoming: Any) -> None:
            with contextlib.suppress(Exception):
                async for message in incoming.recv:
                    await incoming.send.send(message)

        async for incoming in client.incoming:
            t = asyncio.create_task(echo(incoming))
            echoes.add(t)
            t.add_done_callback(echoes.discard)

    task: asyncio.Task[None] | None = None
    streams = asyncio.create_task(echo_streams())
    try:
        task = asyncio.create_task(serve())
        ctl.put(("ready", "b"))
        stopped = asyncio.create_task(wait_event(stop))
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if task.done():
            task.result()  # B's loop only ends by an error (or the client closing)
    finally:
        for t in (task, streams):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        await client.close()


async def _tell_run(client: Any, size: int, count: int) -> dict[str, Any]:
    """Arm B, tell *count* bodies of *size* bytes as fast as ``tell`` returns, collect."""
    assert await client.ask("b", {"cmd": "arm", "n": count}, timeout=CONTROL_TIMEOUT_S)
    body = bytes(size)
    tell = client.tell
    t0 = time.perf_counter()
    for _ in range(count):
        await tell("b", body)
    sender_s = time.perf_counter() - t0
    got = await client.ask("b", {"cmd": "result"}, timeout=CONTROL_TIMEOUT_S)
    if got["received"] != count or got["payload_bytes"] != count * size:
        raise RuntimeError(f"B counted {got['received']} tells ({got['payload_bytes']} "
                           f"bytes), expected {count} ({count * size})")
    return {"msgs": count, "seconds": got["seconds"], "sender_s": sender_s,
            "sender_msgs_per_s": count / sender_s, **rates(size, count, got["seconds"])}


async def sender_main(
    target: Target, path: str, sizes: list[int], duration: float, rtt_n: int,
    *, ctl: Ctl, stop: Stop,
) -> None:
    """Client A: one session (tell runs per size, asks, tell round trips), then report."""
    client = await connect("a", target)
    try:
        if path == "direct":
            await client.new_channel("b")
        out: dict[str, Any] = {"tell": {}}
        body = bytes(RTT_SIZE)
        # The first message opens the mailbox stream; check which path it took.
        if await client.ask("b", body, timeout=STARTUP_TIMEOUT_S) != body:
            raise RuntimeError("B's answer differs from the ask")
        routes = {"a": client.mailbox.route("b"),
                  "b": None}  # B's route back exists only once B has told A
        if routes["a"] != path:
            raise RuntimeError(f"A's mailbox route to B is {routes['a']!r}, not {path!r}")
        mbox = client.mailbox
        for size in sizes:
            guess = TELL_GUESS.get(size) or 5 * MB / max(size, 1)
            warm = await _tell_run(client, size, count_for(size, guess, CALIBRATION_S))
            count = count_for(size, warm["msgs_per_s"], duration)
            frames0, msgs0 = mbox.frames_sent("b"), mbox.messages_sent("b")
            run = await _tell_run(client, size, count)
            frames = mbox.frames_sent("b") - frames0
            run["msgs_per_frame"] = (mbox.messages_sent("b") - msgs0) / max(frames, 1)
            run["calibration_msgs_per_s"] = warm["msgs_per_s"]
            out["tell"][size] = run
        if rtt_n > 0:
            rtts = await ask_pings(client, "b", body, rtt_n, warmup=WARMUP,
                                   timeout=RTT_TIMEOUT_S)
            out["ask"] = rtt_figures(rtts)
            # Tell round trips: A tells B, B tells it back, A reads its own mailbox.
            assert await client.ask("b", {"cmd": "echo"}, timeout=CONTROL_TIMEOUT_S)
            inbox = aiter(client.mailbox)
            tell = client.tell
            rtts = []
            for i in range(WARMUP + rtt_n):
                t0 = time.perf_counter_ns()
                await tell("b", body)
                async with asyncio.timeout(RTT_TIMEOUT_S):
                    env = await anext(inbox)
                if i >= WARMUP:
                    rtts.append((time.perf_counter_ns() - t0) / 1000)
                if env.body != body:
                    raise RuntimeError("B's tell back differs")
            out["tell_rtt"] = rtt_figures(rtts)
            # The same round trip on a plain stream of the same path (no mailbox): what
            # the stream layer costs, to tell it apart from what the mailbox adds.
            if path == "direct":
                send, recv = await client.new_direct_stream("b")
            else:
                send, recv = await client.new_proxied_stream("b")
            rtts = await stream_ping(send, recv, body, rtt_n, warmup=WARMUP,
                                     timeout=RTT_TIMEOUT_S, check=True)
            out["stream_ping"] = rtt_figures(rtts)
            routes["b"] = await client.ask("b", {"cmd": "route"}, timeout=CONTROL_TIMEOUT_S)
            if routes["b"] != path:
                raise RuntimeError(f"B's mailbox route to A is {routes['b']!r}, not {path!r}")
        out["routes"] = routes
        ctl.put(("session", out))
        await wait_event(stop)
    finally:
        await client.close()


# --------------------------------------------------------------------------- conec runs


def run_conec(
    path: str, sizes: list[int], duration: float, rtt_n: int, *, mds: int = 1200,
    py_spy: Path | None = None, label: str = "",
) -> dict[str, Any]:
    """One conec-actors session on *path* (``"proxied"`` or ``"direct"``)."""
    cert, key = make_self_signed(COORD_NAME)
    errors_before = udp_rcvbuf_errors()
    with Procs(f"{IMPL}-{path}") as procs:
        coord = start_coord(procs, cert, key, max_datagram_size=mds)
        target: Target = (coord.port, cert, mds)
        procs.start("b", receiver_main, target)
        procs.expect("ready")
        before = coord.stats()
        with contextlib.ExitStack() as spies:
            procs.start("a", sender_main, target, path, sizes, duration, rtt_n)
            if py_spy is not None and label:
                for name in ("coord", "b", "a"):
                    spies.enter_context(PySpy(py_spy, procs.pid(name), f"{name}-{label}"))
            timeout = STARTUP_TIMEOUT_S + 60 + len(sizes) * 20 * duration + rtt_n * 0.05
            session: dict[str, Any] = procs.expect("session", timeout=timeout)
        after = coord.stats()
    forwarded = after["bytes_forwarded"] - before["bytes_forwarded"]
    if path == "direct" and forwarded:
        raise RuntimeError(f"{IMPL}: the Coordinator forwarded {forwarded} bytes of a "
                           "direct session")
    session["coord_bytes_forwarded"] = forwarded
    session["coord_messages_forwarded"] = (after["messages_forwarded"]
                                           - before["messages_forwarded"])
    session["udp_rcvbuf_errors"] = udp_rcvbuf_errors() - errors_before
    return session


# --------------------------------------------------------------------------- NATS


async def nats_responder_main(url: str, *, ctl: Ctl, stop: Stop) -> None:
    """Answer every request on ``echo`` with its own data."""
    import nats

    nc = await nats.connect(url, name="responder", allow_reconnect=False)
    try:
        async def cb(msg: Any) -> None:
            await msg.respond(msg.data)

        await nc.subscribe("echo", cb=cb)
        await nc.flush()
        ctl.put(("ready", "responder"))
        await wait_event(stop)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def nats_requester_main(url: str, n: int, *, ctl: Ctl, stop: Stop) -> None:
    """Sequential requests of 64 bytes; report the round trips (us)."""
    import nats

    nc = await nats.connect(url, name="requester", allow_reconnect=False)
    try:
        body = bytes(RTT_SIZE)
        rtts: list[float] = []
        for i in range(WARMUP + n):
            t0 = time.perf_counter_ns()
            msg = await nc.request("echo", body, timeout=RTT_TIMEOUT_S)
            if i >= WARMUP:
                rtts.append((time.perf_counter_ns() - t0) / 1000)
            if msg.data != body:
                raise RuntimeError("NATS reply differs from the request")
        ctl.put(("rtts", rtts))
        await wait_event(stop)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def run_nats(n: int) -> dict[str, Any]:
    """One NATS request/reply run: nats-server, a responder and a requester."""
    with NatsServer() as server, Procs(NATS) as procs:
        procs.start("responder", nats_responder_main, server.url)
        procs.expect("ready")
        procs.start("requester", nats_requester_main, server.url, n)
        rtts: list[float] = procs.expect("rtts", timeout=STARTUP_TIMEOUT_S + n * 0.05)
    return rtt_figures(rtts)


# --------------------------------------------------------------------------- baselines


def run_plain(size: int, count: int, mds: int) -> dict[str, Any]:
    return direct.run_plain(size, count, max_datagram_size=mds)


def run_baseline(path: str, sizes: list[int], counts: dict[int, int], rtt_n: int,
                 sockbuf: int, mds: int) -> dict[str, Any]:
    """One round of a path's baseline: a throughput run per size, then a ping run."""
    out: dict[str, Any] = {"tell": {}}
    for size in sizes:
        if path == "proxied":
            out["tell"][size] = run_naive(size, counts[size], mds, sockbuf)
        else:
            out["tell"][size] = run_plain(size, counts[size], mds)
    if rtt_n > 0:
        if path == "proxied":
            ping = naive_relay.run_naive_relay_ping(rtt_n, max_datagram_size=mds,
                                                    socket_buffer=sockbuf)
        else:
            ping = direct.run_plain_ping(rtt_n, max_datagram_size=mds)
        out["ping"] = {k: ping[k] for k in ("n", "p50_us", "p99_us")}
    return out


def calibrate_baseline(path: str, sizes: list[int], duration: float, sockbuf: int,
                       mds: int) -> tuple[dict[int, int], dict[int, float]]:
    """``N`` per size for a baseline run of about *duration* s, from a short run each."""
    counts: dict[int, int] = {}
    measured: dict[int, float] = {}
    for size in sizes:
        if path == "proxied":
            guess = naive_relay.TARGET_RATE.get(size) or 5 * MB / max(size, 1)
            cal = run_naive(size, count_for(size, guess, CALIBRATION_S), mds, sockbuf)
        else:
            guess = direct.GUESS_RATE.get(size) or 5 * MB / max(size, 1)
            cal = run_plain(size, count_for(size, guess, CALIBRATION_S), mds)
        measured[size] = cal["msgs_per_s"]
        counts[size] = count_for(size, cal["msgs_per_s"], duration)
    return counts, measured


# --------------------------------------------------------------------------- summaries


def _tell_summary(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    return {
        "msgs_per_s": median(r["msgs_per_s"] for r in runs),
        "mb_per_s": median(r["mb_per_s"] for r in runs),
        "runs": [{k: r[k] for k in keys if k in r} for r in runs],
    }


def _rtt_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {**ping_summary(runs), "n": runs[0]["n"]}


_CONEC_TELL_KEYS = ("msgs", "msgs_per_s", "mb_per_s", "seconds", "sender_msgs_per_s",
                    "msgs_per_frame", "calibration_msgs_per_s")
_BASE_TELL_KEYS = ("msgs", "msgs_per_s", "mb_per_s", "seconds", "udp_rcvbuf_errors")


def results(path: str, sizes: list[int], rounds: int, conec: list[dict[str, Any]],
            base: list[dict[str, Any]], extra: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON lines of one path: a tell line per size, an ask and a tell-rtt line."""
    baseline = BASELINE[path]
    common = {"path": path, "rounds": rounds, "caveat": CAVEAT, **extra}
    lines: list[dict[str, Any]] = []
    for size in sizes:
        c = _tell_summary([s["tell"][size] for s in conec], _CONEC_TELL_KEYS)
        b = _tell_summary([s["tell"][size] for s in base], _BASE_TELL_KEYS)
        lines.append({
            "bench": "actors-tell", "size": size, **common,
            "conec": c, "baseline_impl": baseline, "baseline": b,
            "ratio_msgs_per_s": c["msgs_per_s"] / b["msgs_per_s"],
            "target_ratio": "none (context: the baseline streams raw frames)",
        })
    if "ask" in conec[0]:
        b = _rtt_summary([s["ping"] for s in base])
        stream = _rtt_summary([s["stream_ping"] for s in conec])
        for kind in ("ask", "tell_rtt"):
            c = _rtt_summary([s[kind] for s in conec])
            ratio = c["p50_us"] / b["p50_us"]
            lines.append({
                "bench": f"actors-{kind.replace('_', '-')}", "size": RTT_SIZE, **common,
                "conec": c, "baseline_impl": f"{baseline} ping", "baseline": b,
                "ratio_p50": ratio, "ratio_p99": c["p99_us"] / b["p99_us"],
                "target_ratio_p50": "<= 1.2", "meets_target": ratio <= 1.2,
                "conec_stream_ping": stream,
                "ratio_p50_to_stream_ping": c["p50_us"] / stream["p50_us"],
            })
    return lines


# --------------------------------------------------------------------------- driver


def bench(
    *, sizes: list[int], rounds: int, duration: float, rtt_n: int, mds: int, nats: bool,
    sockbuf: int, py_spy: Path | None,
) -> list[dict[str, Any]]:
    """Calibrate the baselines, alternate *rounds* rounds of every run; the JSON lines."""
    counts: dict[str, dict[int, int]] = {}
    cal: dict[str, dict[int, float]] = {}
    for path in PATHS:
        counts[path], cal[path] = calibrate_baseline(path, sizes, duration, sockbuf, mds)
    runners: dict[str, Callable[[int], dict[str, Any]]] = {}
    for path in PATHS:
        runners[f"conec-{path}"] = _conec_runner(path, sizes, duration, rtt_n, mds, py_spy)
        runners[f"base-{path}"] = (
            lambda r, p=path: run_baseline(p, sizes, counts[p], rtt_n, sockbuf, mds))
    if nats and rtt_n > 0:
        runners[NATS] = lambda r: run_nats(rtt_n)
    runs = alternate(runners, rounds, progress="bench.actors")
    lines: list[dict[str, Any]] = []
    for path in PATHS:
        conec = runs[f"conec-{path}"]
        extra = {
            "max_datagram_size": mds,
            "routes": [s["routes"] for s in conec],
            "coord_bytes_forwarded": [s["coord_bytes_forwarded"] for s in conec],
            "coord_messages_forwarded": [s["coord_messages_forwarded"] for s in conec],
            "udp_rcvbuf_errors": [s["udp_rcvbuf_errors"] for s in conec],
            "baseline_calibration_msgs_per_s": cal[path],
        }
        if path == "proxied":
            extra["naive_socket_buffer"] = sockbuf
        else:
            extra["plain_socket_buffer"] = direct.CONEC_SOCKET_BUFFER
        lines += results(path, sizes, rounds, conec, runs[f"base-{path}"], extra)
    if NATS in runs:
        n = _rtt_summary(runs[NATS])
        asks = {p: median(s["ask"]["p50_us"] for s in runs[f"conec-{p}"]) for p in PATHS}
        lines.append({
            "bench": "actors-nats", "size": RTT_SIZE, "rounds": rounds,
            "kind": "request/reply (nats-py request, msg.respond), context only",
            "nats": n,
            "ratio_ask_p50_to_nats": {p: asks[p] / n["p50_us"] for p in PATHS},
            "caveat": CAVEAT,
        })
    return lines


def _conec_runner(path: str, sizes: list[int], duration: float, rtt_n: int,
                            mds: int, py_spy: Path | None) -> Callable[[int], dict[str, Any]]:
    def run(r: int) -> dict[str, Any]:
        return run_conec(path, sizes, duration, rtt_n, mds=mds, py_spy=py_spy,
                         label=f"{path}-r{r}")
    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.actors", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5,
                   help="measured runs per implementation (p50 ratios: medians of these)")
    p.add_argument("--sizes", type=int_list, default=list(SIZES),
                   help="comma-separated tell sizes in bytes ('' for none)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per tell run (about)")
    p.add_argument("--ask-n", type=int, default=1000,
                   help="measured asks and tell round trips per run (0: none)")
    p.add_argument("--max-datagram-size", type=int, default=1200,
                   help="for every implementation except NATS (TCP)")
    p.add_argument("--naive-socket-buffer", type=int, default=0, metavar="BYTES",
                   help="SO_RCVBUF/SO_SNDBUF of the naive relay's sockets (0: OS default, "
                   "as bench.proxied; conec-actors always uses 4 MiB)")
    p.add_argument("--no-nats", action="store_true", help="skip NATS request/reply")
    p.add_argument("--group-rounds", type=int, default=7,
                   help="rounds of bench.groups after the rest: tell_group vs tell, "
                   "ask_group vs ask, the slowed member's share (0: skip)")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                   help="record Coordinator, A and B with py-spy (raw stacks) into DIR")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.ask_n < 0 or args.group_rounds < 0:
        p.error("--rounds must be >= 1, --duration > 0, --ask-n and --group-rounds >= 0")
    if any(s < 0 for s in args.sizes):
        p.error("--sizes must be >= 0")
    if not args.sizes and not args.ask_n:
        p.error("nothing to measure (no --sizes and --ask-n 0)")
    check_py_spy(p, args.py_spy)
    nats = want_nats(args.no_nats, "actors-nats")
    for line in bench(sizes=args.sizes, rounds=args.rounds, duration=args.duration,
                      rtt_n=args.ask_n, mds=args.max_datagram_size, nats=nats,
                      sockbuf=args.naive_socket_buffer, py_spy=args.py_spy):
        emit(line)
    if args.group_rounds:
        for line in groups.run(rounds=args.group_rounds):
            emit(line)


if __name__ == "__main__":
    main()
