"""Endurance: mixed traffic with clients joining and leaving, idle clients held, and
the resident memory of every Coordinator process sampled (DESIGN.md section 10).

One Coordinator in its own process (:func:`bench._common.start_coord`; its routing and
broadcast workers are its children) and, for ``--minutes``:

* ``--traffic-procs`` processes of ``--clients`` clients each (``t{p}-{i}``). Every
  client drives traffic toward every client of the other processes and serves theirs:
  a **proxied stream** loop per pair (messages of 16 B to 64 KiB echoed back and
  compared byte for byte; a stream is finished after 200 messages and a new one
  opened), a **channel** loop for the pairs ``t{p}-i``/``t{q}-i`` with ``p < q``
  (``new_channel``, three direct streams checked like the proxied ones,
  ``close_channel``, again), a **tell** loop per pair (tells numbered per pair, their
  bodies checked; the receiver counts duplicates and late arrivals as they come, and
  losses (gaps left at the end) when the sender's final ask gives its count; the
  tells of channel pairs change path whenever the channel opens or closes) and an
  **ask** loop per pair (every answer checked). All of them are members of one
  broadcast: each sends numbered messages, every member checks every member's
  sequence and, at the end, its count (a last message carries it);
* a churn process connecting a fresh client after another: a few numbered tells and
  the closing count, asks, a proxied stream, every third one a channel and a direct
  stream, every other one a broadcast of its own (its messages come back to it, then a
  clean end), then ``close()``. Every fifth churn client is instead a small child
  process (``python -c``) that connects, tells, streams, and is killed with SIGKILL
  mid-stream (its peer's echo then sees ``StreamReset``, which is expected there only);
* ``--idle`` idle clients (``keepalive=True``) in ``--idle-procs`` processes, connected
  before the traffic starts and held until the end; any that closes (``ClientClosed``,
  connection lost) counts as dropped.

Traffic is paced (``--rate`` echoes/s per stream loop; tells twice that, asks a fifth,
broadcast sends half): the soak looks for leaks and wrong deliveries, not speed. Any
exception in a traffic task is an error: counted, the first few reported with their
text, and the task goes on.

Every ``--sample`` seconds the parent reads ``VmRSS`` of the Coordinator's front-end
and of each of its child processes (labelled from ``coord.stats()["workers"]``) and the
number of clients the Coordinator counts. One JSON line per minute of progress, then a
summary: per process the RSS slope in MiB/minute (least squares over the samples after
the first minute, or after the first half of shorter runs; target < 1; and over the
second half alone, which tells a plateau from a steady leak), max RSS,
errors, lost/duplicate/reordered deliveries, idle clients dropped (targets 0),
messages by kind, and whether every client was gone from the Coordinator after the
end.

``python -m bench.soak [--minutes 10] [--idle 1000] [--idle-procs 2] [--sample 1.0]
[--rate 50] [--traffic-procs 2] [--clients 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bench._clients import Target, connect
from bench._common import (
    MP,
    STARTUP_TIMEOUT_S,
    Ctl,
    Procs,
    Stop,
    child_pids,
    emit,
    make_self_signed,
    rss_kib,
    start_coord,
    wait_event,
)
from bench.idle_clients import _shares

COORD_NAME = "localhost"
CHAN = "soak"
CHURN_CHAN = "soak-churn"
VICTIM = "victim-"
TARGET_SLOPE_MIB_PER_MIN = 1.0

STREAM_MSGS = 200  # messages per stream before it is finished and another opened
CHANNEL_STREAMS = 3  # direct streams per channel before it is closed and reopened
CHURN_MSGS = 20  # tells, echoes and broadcast messages of one churn client
KILL_EVERY = 5  # every fifth churn client is a process killed with SIGKILL
SIZES = (16, 64, 256, 1024, 4096)  # stream messages; every 64th is 64 KiB
SMALL = (8, 40, 120, 400)  # tell and broadcast bodies
PATTERN = bytes(range(256)) * 260
KEEP_ERRORS = 5
OP_TIMEOUT_S = 30.0  # any single round trip (echo, ask, channel, connect)
ERROR_PAUSE_S = 0.5  # a failing loop waits this long before it tries again
REPORT_S = 1.0  # children report their counters this often
WIND_TIMEOUT_S = 90.0  # drivers' final checks after the end
GONE_TIMEOUT_S = 30.0  # clients gone from the Coordinator after the end (idle timeout: 10 s)


def payload(seq: int) -> bytes:
    """Stream message *seq*: its number and 16 B to 64 KiB of a pattern it shifts."""
    size = 65536 if seq % 64 == 63 else SIZES[seq % len(SIZES)]
    return seq.to_bytes(8, "big") + PATTERN[seq % 251 : seq % 251 + size]


def small(seq: int) -> bytes:
    """Tell or broadcast body *seq* (8 to 400 bytes after the number)."""
    return seq.to_bytes(8, "big") + PATTERN[seq % 251 : seq % 251 + SMALL[seq % len(SMALL)]]


class Mismatch(Exception):
    """A delivery that differs from what was sent."""


class Tally:
    """One child process's counters, reported to the parent as a dict."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.msgs: collections.Counter[str] = collections.Counter()  # checked, by kind
        self.counts: collections.Counter[str] = collections.Counter()  # everything else
        self.errors = 0
        self.first_errors: list[str] = []
        self.t0 = time.monotonic()  # reset when the traffic starts

    def error(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        if len(self.first_errors) < KEEP_ERRORS:
            t = time.monotonic() - self.t0
            self.first_errors.append(
                f"{self.name} at {t:.1f} s, {where}: {type(exc).__name__}: {exc}"[:400])

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, "msgs": dict(self.msgs), "counts": dict(self.counts),
                "errors": self.errors, "first_errors": list(self.first_errors)}


class SeqCheck:
    """The numbers one receiver got from one sender, expected 0, 1, 2, ..."""

    __slots__ = ("missing", "next")

    def __init__(self) -> None:
        self.next = 0
        self.missing: set[int] = set()

    def see(self, seq: int) -> str | None:
        """``None`` if in order, else ``"duplicate"`` or ``"reordered"``."""
        if seq == self.next:
            self.next += 1
        elif seq > self.next:
            self.missing.update(range(self.next, seq))
            self.next = seq + 1
        elif seq in self.missing:
            self.missing.discard(seq)
            return "reordered"
        else:
            return "duplicate"
        return None

    def lost(self, sent: int) -> int:
        """Messages lost of the *sent* ones (gaps, and the tail that never came)."""
        return len(self.missing) + max(0, sent - self.next)


class Pace:
    """Paces a loop at *rate* turns/s without bursts after it fell behind."""

    def __init__(self, rate: float) -> None:
        self.period = 1 / rate
        self.next = time.monotonic()

    async def tick(self) -> None:
        now = time.monotonic()
        self.next = max(self.next + self.period, now - 1.0)
        if self.next > now:
            await asyncio.sleep(self.next - now)


async def report_loop(ctl: Ctl, tally: Tally) -> None:
    while True:
        ctl.put(("progress", tally.snapshot()))
        await asyncio.sleep(REPORT_S)


async def guarded(tally: Tally, where: str, until: Stop, body: Callable[[], Awaitable[None]]
                  ) -> None:
    """Run *body* again and again until *until* is set; count each exception."""
    while not until.is_set():
        try:
            await body()
        except Exception as exc:
            tally.error(where, exc)
            await asyncio.sleep(ERROR_PAUSE_S)


# --------------------------------------------------------------------------- checks


async def echo_run(send: Any, recv: Any, seqs: Iterator[int], n: int, tally: Tally,
                   kind: str, pace: Pace | None, until: Stop | None) -> None:
    """Up to *n* messages out and their echoes checked, then a clean end both ways."""
    for _ in range(n):
        if until is not None and until.is_set():
            break
        message = payload(next(seqs))
        async with asyncio.timeout(OP_TIMEOUT_S):
            await send.send(message)
            echo = await recv.recv()
        if echo != message:
            raise Mismatch(f"{kind} echo of {len(message)} B differs ({len(echo)} B)")
        tally.msgs[kind] += 1
        if pace is not None:
            await pace.tick()
    await send.finish()
    from conec_actors import StreamClosed

    try:
        async with asyncio.timeout(OP_TIMEOUT_S):
            extra = await recv.recv()
    except StreamClosed:
        tally.counts[f"{kind}_streams"] += 1
        return
    raise Mismatch(f"{kind} stream: {len(extra)} B more than were sent")


async def ask_checked(client: Any, peer: str, k: int, tally: Tally) -> None:
    try:
        reply = await client.ask(peer, ["a", k], timeout=OP_TIMEOUT_S)
    except TimeoutError:
        raise TimeoutError(f"ask {k}: no answer within {OP_TIMEOUT_S:.0f} s (channel "
                           f"open now: {peer in client.channels()})") from None
    if reply != ["r", k]:
        raise Mismatch(f"ask {k} to {peer} answered {reply!r}")
    tally.msgs["ask"] += 1


async def tells_counted(client: Any, peer: str, n: int, tally: Tally) -> None:
    """The closing ask of a tell run: the receiver counts what was lost of *n*."""
    reply = await client.ask(peer, ["f", n], timeout=OP_TIMEOUT_S)
    if not (isinstance(reply, list) and reply[:1] == ["lost"]):
        raise Mismatch(f"closing ask to {peer} answered {reply!r}")


async def serve_mailbox(client: Any, tally: Tally, checks: dict[str, SeqCheck]) -> None:
    """Check tells per sender, answer asks, count losses when a sender closes a run
    (*checks*: the runs not closed yet, by sender)."""
    async for env in client.mailbox:
        try:
            kind, arg = env.body[0], env.body[1]
            if kind == "t":
                if env.body[2] != small(arg):
                    raise Mismatch(f"tell {arg} from {env.sender}: body differs")
                anomaly = checks.setdefault(env.sender, SeqCheck()).see(arg)
                if anomaly is not None:
                    tally.counts[anomaly] += 1
                tally.msgs["tell"] += 1
            elif kind == "a":
                await env.reply(["r", arg])
            elif kind == "f":
                lost = checks.pop(env.sender, SeqCheck()).lost(arg)
                tally.counts["lost"] += lost
                await env.reply(["lost", lost])
            else:
                raise Mismatch(f"unexpected mailbox body from {env.sender}: {env.body!r}")
        except Exception as exc:
            tally.error(f"mailbox of {client.id}", exc)


async def serve_streams(client: Any, tally: Tally) -> None:
    """Echo every incoming stream, message by message, then finish it."""
    from conec_actors import StreamReset

    async def echo(inc: Any) -> None:
        try:
            async for message in inc.recv:
                await inc.send.send(message)
            await inc.send.finish()
        except StreamReset as exc:
            if not inc.peer.startswith(VICTIM):  # a killed peer's streams reset
                tally.error(f"echo {client.id} for {inc.peer}", exc)
        except Exception as exc:
            tally.error(f"echo {client.id} for {inc.peer}", exc)

    tasks: set[asyncio.Task[None]] = set()
    try:
        async for inc in client.incoming:
            task = asyncio.create_task(echo(inc))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()


# --------------------------------------------------------------------------- traffic


class Member:
    """One client's part of the broadcast: numbered sends, every member's checked."""

    def __init__(self, client: Any, tally: Tally, members: list[str]) -> None:
        self.client = client
        self.tally = tally
        self.members = members
        self.sent = 0

    async def join(self) -> None:
        self.send, self.recv = await self.client.new_broadcast(CHAN)

    async def sender(self, rate: float, wind: Stop) -> None:
        pace = Pace(rate)
        try:
            while not wind.is_set():
                await self.send.send(b"\0" + small(self.sent))
                self.sent += 1
                await pace.tick()
            await self.send.send(b"\1" + self.sent.to_bytes(8, "big"))
            await self.send.finish()
        except Exception as exc:  # the broadcast is broken for this member: one error
            self.tally.error("broadcast send", exc)

    async def reader(self) -> None:
        checks = {m: SeqCheck() for m in self.members}
        ended: set[str] = set()
        try:
            async for msg in self.recv:
                data, sender = msg.data, msg.sender
                seq = int.from_bytes(data[1:9], "big")
                if data[0] == 1:
                    ended.add(sender)
                    self.tally.counts["lost"] += checks.setdefault(sender, SeqCheck()).lost(seq)
                    continue
                if data[1:] != small(seq):
                    raise Mismatch(f"broadcast {seq} from {sender}: data differs")
                anomaly = checks.setdefault(sender, SeqCheck()).see(seq)
                if anomaly is not None:
                    self.tally.counts[anomaly] += 1
                self.tally.msgs["broadcast"] += 1
            if ended != set(self.members):
                raise Mismatch(f"broadcast ended without the counts of "
                               f"{sorted(set(self.members) - ended)}")
        except Exception as exc:
            self.tally.error("broadcast read", exc)


async def traffic_main(target: Target, index: int, nprocs: int, per_proc: int, rate: float,
                       go: Stop, wind: Stop, done: Stop, *, ctl: Ctl, stop: Stop) -> None:
    """Clients ``t{index}-*``: drive traffic to the other processes' clients, serve theirs."""
    tally = Tally(f"traffic{index}")
    everyone = [f"t{p}-{i}" for p in range(nprocs) for i in range(per_proc)]
    clients: list[Any] = []
    serving: list[asyncio.Task[None]] = []
    try:
        for i in range(per_proc):
            clients.append(await connect(f"t{index}-{i}", target))
        members = [Member(c, tally, everyone) for c in clients]
        runs: list[dict[str, SeqCheck]] = [{} for _ in clients]
        for c, m, checks in zip(clients, members, runs, strict=True):
            await m.join()
            serving += [asyncio.create_task(serve_mailbox(c, tally, checks)),
                        asyncio.create_task(serve_streams(c, tally))]
        async with asyncio.timeout(STARTUP_TIMEOUT_S):  # every member joined: none misses any
            while (await clients[0].broadcast_count(CHAN))[1] < len(everyone):
                await asyncio.sleep(0.05)
        ctl.put(("ready", index))
        await wait_event(go)
        tally.t0 = time.monotonic()
        serving.append(asyncio.create_task(report_loop(ctl, tally)))

        drivers = [asyncio.create_task(m.sender(rate / 2, wind)) for m in members]
        readers = [asyncio.create_task(m.reader()) for m in members]
        for i, c in enumerate(clients):
            for peer in everyone:
                p, j = (int(x) for x in peer[1:].split("-"))
                if p == index:
                    continue
                drivers += [asyncio.create_task(stream_loop(c, peer, rate, tally, wind)),
                            asyncio.create_task(tell_loop(c, peer, 2 * rate, tally, wind)),
                            asyncio.create_task(ask_loop(c, peer, rate / 5, tally, wind))]
                if j == i and p > index:
                    drivers.append(asyncio.create_task(channel_loop(c, peer, rate, tally, wind)))
        await wait_event(wind)
        await _settle(drivers + readers, WIND_TIMEOUT_S, tally)
        ctl.put(("drained", tally.name))
        await wait_event(done)
        for task in serving:
            task.cancel()
        for checks in runs:  # runs whose closing ask failed: what is known lost
            for sender, check in checks.items():
                if not sender.startswith(VICTIM):
                    tally.counts["unclosed_tell_runs"] += 1
                    tally.counts["lost"] += len(check.missing)
        for c in clients:
            try:
                await c.close()
            except Exception as exc:
                tally.error("close", exc)
        ctl.put(("final", tally.snapshot()))
    finally:
        for task in serving:
            task.cancel()
        for c in clients:
            await c.close()


async def _settle(tasks: list[asyncio.Task[None]], timeout: float, tally: Tally) -> None:
    """Wait for *tasks* to end; one that has not within *timeout* is an error."""
    if not tasks:
        return
    _, hung = await asyncio.wait(tasks, timeout=timeout)
    for task in hung:
        task.cancel()
        tally.error("wind-down", TimeoutError(f"{task.get_coro()!r} did not end"))


async def stream_loop(client: Any, peer: str, rate: float, tally: Tally, wind: Stop) -> None:
    seqs, pace = itertools.count(), Pace(rate)

    async def one() -> None:
        async with asyncio.timeout(OP_TIMEOUT_S):
            send, recv = await client.new_proxied_stream(peer)
        await echo_run(send, recv, seqs, STREAM_MSGS, tally, "proxied", pace, wind)

    await guarded(tally, f"proxied {client.id} to {peer}", wind, one)


async def channel_loop(client: Any, peer: str, rate: float, tally: Tally, wind: Stop) -> None:
    from conec_actors import NoChannel

    seqs, pace = itertools.count(), Pace(rate)

    async def one() -> None:
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                await client.new_channel(peer)
            tally.counts["channels"] += 1
            for _ in range(CHANNEL_STREAMS):
                if wind.is_set():
                    break
                async with asyncio.timeout(OP_TIMEOUT_S):
                    send, recv = await client.new_direct_stream(peer)
                if send.stream_id.kind != "direct":
                    raise Mismatch(f"a direct stream to {peer} is {send.stream_id.kind}")
                await echo_run(send, recv, seqs, STREAM_MSGS, tally, "direct", pace, wind)
        finally:
            with contextlib.suppress(NoChannel):
                await client.close_channel(peer)

    await guarded(tally, f"channel {client.id} to {peer}", wind, one)


async def tell_loop(client: Any, peer: str, rate: float, tally: Tally, wind: Stop) -> None:
    pace, sent = Pace(rate), 0

    async def one() -> None:
        nonlocal sent
        while not wind.is_set():
            await client.tell(peer, ["t", sent, small(sent)])
            sent += 1
            await pace.tick()

    await guarded(tally, f"tell {client.id} to {peer}", wind, one)
    try:
        await tells_counted(client, peer, sent, tally)
    except Exception as exc:
        tally.error(f"closing ask {client.id} to {peer}", exc)


async def ask_loop(client: Any, peer: str, rate: float, tally: Tally, wind: Stop) -> None:
    pace, k = Pace(rate), itertools.count()

    async def one() -> None:
        while not wind.is_set():
            await ask_checked(client, peer, next(k), tally)
            await pace.tick()

    await guarded(tally, f"ask {client.id} to {peer}", wind, one)


# --------------------------------------------------------------------------- churn


async def churn_main(target: Target, peers: list[str], go: Stop, wind: Stop, done: Stop, *,
                     ctl: Ctl, stop: Stop) -> None:
    """Fresh clients one after another; every fifth a process killed with SIGKILL."""
    tally = Tally("churn")
    await wait_event(go)
    tally.t0 = time.monotonic()
    reporter = asyncio.create_task(report_loop(ctl, tally))
    try:
        for k in itertools.count(1):
            if wind.is_set():
                break
            peer = peers[k % len(peers)]
            try:
                if k % KILL_EVERY == 0:
                    await run_victim(target, f"{VICTIM}{k}", peer, tally)
                else:
                    await churn_once(target, f"churn-{k}", peer, k, tally)
            except Exception as exc:
                tally.error(f"churn client {k}", exc)
                await asyncio.sleep(ERROR_PAUSE_S)
        ctl.put(("drained", tally.name))
        await wait_event(done)
        ctl.put(("final", tally.snapshot()))
    finally:
        reporter.cancel()


async def churn_once(target: Target, cid: str, peer: str, k: int, tally: Tally) -> None:
    async with asyncio.timeout(OP_TIMEOUT_S):
        client = await connect(cid, target)
    try:
        for seq in range(CHURN_MSGS):
            await client.tell(peer, ["t", seq, small(seq)])
        await tells_counted(client, peer, CHURN_MSGS, tally)
        for j in range(3):
            await ask_checked(client, peer, j, tally)
        seqs = itertools.count()
        send, recv = await client.new_proxied_stream(peer)
        await echo_run(send, recv, seqs, CHURN_MSGS, tally, "proxied", None, None)
        if k % 3 == 0:
            async with asyncio.timeout(OP_TIMEOUT_S):
                await client.new_channel(peer)
            tally.counts["channels"] += 1
            send, recv = await client.new_direct_stream(peer)
            await echo_run(send, recv, seqs, CHURN_MSGS, tally, "direct", None, None)
        if k % 2 == 0:
            await alone_on_broadcast(client, tally)
    finally:
        await client.close()
    tally.counts["churn_clients"] += 1


async def alone_on_broadcast(client: Any, tally: Tally) -> None:
    """Join a broadcast nobody else is on; every message comes back, then a clean end."""
    send, recv = await client.new_broadcast(CHURN_CHAN)
    async with asyncio.timeout(OP_TIMEOUT_S):
        for seq in range(CHURN_MSGS):
            await send.send(small(seq))
            msg = await recv.recv()
            if (msg.sender, msg.data) != (client.id, small(seq)):
                raise Mismatch(f"alone on a broadcast, got {len(msg.data)} B from {msg.sender}")
            tally.msgs["broadcast"] += 1
        await send.finish()
        async for msg in recv:
            raise Mismatch(f"alone on a broadcast, got more: {len(msg.data)} B")
    tally.counts["broadcasts_alone"] += 1


async def run_victim(target: Target, cid: str, peer: str, tally: Tally) -> None:
    """Start :func:`victim`, wait until it streams to *peer*, SIGKILL it."""
    port, ca, mds = target
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import bench.soak; bench.soak.victim()",
        cid, peer, str(port), str(mds), env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(ca)
        await proc.stdin.drain()
        proc.stdin.close()
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            line = await proc.stdout.readline()
        if line.strip() != b"ready":
            _, err = await proc.communicate()
            raise RuntimeError(f"{cid} failed: {err.decode(errors='replace')[-300:]}")
        await asyncio.sleep(0.3)  # mid-stream
        proc.send_signal(signal.SIGKILL)
        tally.counts["killed"] += 1
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


def victim() -> None:
    """A churn client in a process of its own (argv: id, peer, port, datagram size;
    the CA on stdin), run until killed."""
    cid, peer, port, mds = sys.argv[1:5]
    target: Target = (int(port), sys.stdin.buffer.read(), int(mds))
    asyncio.run(_victim(cid, peer, target))


async def _victim(cid: str, peer: str, target: Target) -> None:
    client = await connect(cid, target)
    for seq in range(CHURN_MSGS):
        await client.tell(peer, ["t", seq, small(seq)])
    send, recv = await client.new_proxied_stream(peer)
    for seq in itertools.count():
        if seq == 5:
            print("ready", flush=True)
        message = payload(seq)
        await send.send(message)
        if await recv.recv() != message:
            raise Mismatch("echo differs")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- idle


async def idle_main(proc: int, n: int, target: Target, done: Stop, *, ctl: Ctl,
                    stop: Stop) -> None:
    """*n* idle clients ``idle{proc}-{i}`` held until *done*; count those that drop."""
    tally = Tally(f"idle{proc}")
    sem = asyncio.Semaphore(50)
    clients: list[Any] = []

    async def one(i: int) -> None:
        async with sem:
            try:
                async with asyncio.timeout(OP_TIMEOUT_S * 2):
                    clients.append(await connect(f"idle{proc}-{i}", target))
            except Exception as exc:
                tally.error("idle connect", exc)

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
        tally.counts["idle_connected"] = len(clients)
        ctl.put(("idle-ready", len(clients)))
        dropped: set[str] = set()
        while True:
            for c in clients:
                if c.is_closed and c.id not in dropped:
                    dropped.add(c.id)
                    tally.counts["idle_dropped"] += 1
                    try:  # any call raises ClientClosed with the reason
                        await c.broadcast_count(CHAN)
                    except Exception as exc:
                        tally.error(f"idle client {c.id} dropped", exc)
            ctl.put(("progress", tally.snapshot()))
            if done.is_set():
                break
            await asyncio.sleep(REPORT_S)
        ctl.put(("final", tally.snapshot()))
    finally:
        for c in clients:
            await c.close()


# --------------------------------------------------------------------------- parent


def _totals(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    msgs: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for s in snaps:
        msgs.update(s["msgs"])
        counts.update(s["counts"])
    return {"messages": dict(sorted(msgs.items())), "messages_total": sum(msgs.values()),
            "errors": sum(s["errors"] for s in snaps),
            "first_errors": [e for s in snaps for e in s["first_errors"]][:KEEP_ERRORS * 2],
            "lost": counts["lost"], "duplicates": counts["duplicate"],
            "reordered": counts["reordered"], "idle_connected": counts["idle_connected"],
            "idle_dropped": counts["idle_dropped"],
            "counts": {k: v for k, v in sorted(counts.items()) if k not in (
                "lost", "duplicate", "reordered", "idle_connected", "idle_dropped")}}


def _slope(points: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of ``(seconds, KiB)`` points, in MiB per minute."""
    if len(points) < 3:
        return None
    xs = [t / 60 for t, _ in points]
    ys = [kib / 1024 for _, kib in points]
    return statistics.linear_regression(xs, ys).slope


def run(*, minutes: float, idle: int, idle_procs: int, sample: float, rate: float,
        traffic_procs: int, per_proc: int) -> Iterator[dict[str, Any]]:
    """The soak: a progress line per minute, then the summary."""
    cert, key = make_self_signed(COORD_NAME)
    samples: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    clients_seen: list[int] = []
    latest: dict[str, dict[str, Any]] = {}
    stats_failures = 0
    go, wind, done = MP.Event(), MP.Event(), MP.Event()
    with Procs("soak") as procs:
        coord = start_coord(procs, cert, key)
        target: Target = (coord.port, cert, 1200)
        shares = [s for s in _shares(idle, idle_procs) if s > 0]
        for p, share in enumerate(shares):
            procs.start(f"idle{p}", idle_main, p, share, target, done)
        procs.expect_n("idle-ready", len(shares), timeout=STARTUP_TIMEOUT_S + idle * 0.5)
        for p in range(traffic_procs):
            procs.start(f"traffic{p}", traffic_main, target, p, traffic_procs, per_proc,
                        rate, go, wind, done)
        procs.expect_n("ready", traffic_procs, timeout=STARTUP_TIMEOUT_S * 2)
        peers = [f"t{p}-{i}" for p in range(traffic_procs) for i in range(per_proc)]
        procs.start("churn", churn_main, target, peers, go, wind, done)
        labels = {coord.pid: "frontend"}
        go.set()
        t0 = time.monotonic()
        next_sample, minute = t0, 1
        while (now := time.monotonic()) < t0 + minutes * 60:
            time.sleep(max(0.0, next_sample - now))
            next_sample += sample
            try:  # first: it names the worker processes
                stats = coord.stats()
            except TimeoutError:
                stats_failures += 1
            else:
                clients_seen.append(stats["clients"])
                for w in stats["workers"]:
                    labels.setdefault(w["pid"], f"{w['kind']}-{w['slot']}")
            t = time.monotonic() - t0
            for pid in [coord.pid, *child_pids(coord.pid)]:
                samples[labels.get(pid, f"child-{pid}")].append((t, rss_kib(pid)))
            for snap in procs.poll("progress"):
                latest[snap["name"]] = snap
            if t >= minute * 60:
                yield {"bench": "soak-progress", "minute": minute,
                       "rss_kib": {k: v[-1][1] for k, v in sorted(samples.items())},
                       "coord_clients": clients_seen[-1] if clients_seen else None,
                       **_totals(list(latest.values()))}
                minute += 1
        elapsed = time.monotonic() - t0
        wind.set()
        procs.expect_n("drained", traffic_procs + 1, timeout=WIND_TIMEOUT_S + 30)
        done.set()
        finals = procs.expect_n("final", traffic_procs + 1 + len(shares), timeout=60)
        t_end = time.monotonic()
        left = coord.stats()["clients"]
        while left and time.monotonic() - t_end < GONE_TIMEOUT_S:
            time.sleep(0.5)
            left = coord.stats()["clients"]
        gone_after = time.monotonic() - t_end if not left else None
        rss_end = {labels.get(p, f"child-{p}"): rss_kib(p)
                   for p in [coord.pid, *child_pids(coord.pid)]}

    warm = min(60.0, elapsed / 2)
    slopes = {k: _slope([pt for pt in v if pt[0] >= warm]) for k, v in sorted(samples.items())}
    # A plateau and a steady leak can have the same fit over the whole run.
    late = {k: _slope([pt for pt in v if pt[0] >= elapsed / 2])
            for k, v in sorted(samples.items())}
    totals = _totals(finals)
    ok = (all(s is not None and s < TARGET_SLOPE_MIB_PER_MIN for s in slopes.values())
          and totals["errors"] == 0 and totals["lost"] == 0 and totals["duplicates"] == 0
          and totals["reordered"] == 0 and totals["idle_dropped"] == 0
          and totals["idle_connected"] == idle and not left)
    yield {
        "bench": "soak", "ok": ok, "minutes": elapsed / 60, "samples": len(clients_seen),
        "idle": idle, "traffic_clients": traffic_procs * per_proc, "rate": rate,
        "rss_slope_mib_per_min": slopes, "slope_after_s": warm,
        "rss_slope_second_half_mib_per_min": late,
        "target_slope_mib_per_min": TARGET_SLOPE_MIB_PER_MIN,
        "rss_max_kib": {k: max(kib for _, kib in v) for k, v in sorted(samples.items())},
        "rss_first_kib": {k: v[0][1] for k, v in sorted(samples.items())},
        "rss_last_kib": {k: v[-1][1] for k, v in sorted(samples.items())},
        "rss_after_close_kib": rss_end,
        "coord_clients": {"min": min(clients_seen, default=None),
                          "max": max(clients_seen, default=None)},
        "coord_clients_left_after_close": left, "all_gone_after_s": gone_after,
        "stats_failures": stats_failures,
        "msgs_per_s": totals["messages_total"] / elapsed,
        **totals,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.soak",
                                description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--idle", type=int, default=1000, help="idle clients held throughout")
    p.add_argument("--idle-procs", type=int, default=2, help="processes holding them")
    p.add_argument("--sample", type=float, default=1.0, help="seconds between RSS samples")
    p.add_argument("--rate", type=float, default=50.0,
                   help="echoes/s per stream loop (tells 2x, asks 1/5x, broadcast 1/2x)")
    p.add_argument("--traffic-procs", type=int, default=2)
    p.add_argument("--clients", type=int, default=2, help="traffic clients per process")
    args = p.parse_args(argv)
    if (args.minutes <= 0 or args.idle < 0 or args.idle_procs < 1 or args.sample <= 0
            or args.rate <= 0 or args.traffic_procs < 2 or args.clients < 1):
        p.error("--minutes, --sample, --rate must be > 0, --idle >= 0, --idle-procs >= 1, "
                "--traffic-procs >= 2, --clients >= 1")
    for line in run(minutes=args.minutes, idle=args.idle, idle_procs=args.idle_procs,
                    sample=args.sample, rate=args.rate, traffic_procs=args.traffic_procs,
                    per_proc=args.clients):
        emit(line)


if __name__ == "__main__":
    main()
