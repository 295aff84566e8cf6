"""Broadcast deliveries/s and latency: conec-actors against a plain aioquic fan-out server.

Workload (the same for every implementation): ``members`` members, each one client with
its own connection, all of them both sending and receiving. Every member sends
``--messages`` messages of ``--size`` bytes (default 64) **as fast as back-pressure
allows** (no pacing), and receives every member's messages, its own included. A message
starts with its send time (``time.monotonic_ns()``, taken just before the send call, so
time spent blocked by back-pressure counts as latency) and its sender's index; the
receiver reads ``monotonic_ns()`` again as it takes the message (``CLOCK_MONOTONIC`` is
system-wide, so the clocks of the member processes agree). Reported per run:

* ``deliveries_per_s = members x members x messages / (last receive anywhere - first
  send anywhere)``;
* ``p50_us``/``p99_us``: latency (receive - send) over every delivery of the run. Every
  member sends flat out, so this is latency **under saturation**: mostly the time a
  message waits in the queues of the path, i.e. (bytes the implementation lets queue per
  receiver) / (delivery rate). It compares buffer depths as much as speed (see
  ``--window-bytes``);
* CPU per delivery (``utime + stime`` from ``/proc/<pid>/stat``, read before the start
  signal and after the last delivery): ``frontend_cpu_us_per_delivery`` (the
  Coordinator's front-end process alone, divided by the ``broadcast_deliveries`` delta of
  ``Coord.stats()``), ``workers_cpu_us_per_delivery`` (its worker processes),
  ``server_cpu_us_per_delivery`` (baseline server, nats-server) and
  ``members_cpu_us_per_delivery`` (all member processes: the client side).

Members are spread round-robin over ``--procs`` client processes (default
``min(members, 4)``: 32 processes would swamp a 2-core machine), each running its share
of clients in one asyncio loop, one reader task and one sender task per member. All
members connect and join and their readers start reading; only then does a common start
signal release the senders. Every implementation uses the same layout:

* **conec-actors**: a Coordinator in its own process (``start_coord``,
  ``broadcast_workers=1``, one routing worker); every member joins
  ``client.new_broadcast("bench")`` and waits until ``broadcast_count`` shows every
  member before it reports ready. The run checks that ``broadcast_deliveries`` and
  ``messages_forwarded`` grew by exactly members^2 x messages and members x messages;
* **baseline** (``aioquic-fanout``): one plain ``aioquic.asyncio.serve`` process written
  here. Each client opens one stream, sends a 2-byte hello frame with its member index,
  then framed messages; for every whole message the server writes
  ``frame(index + message)`` to every connected client's stream (one
  ``send_stream_data`` per message and member, a ``transmit()`` per connection coalesced
  to once per loop turn, as in :mod:`bench.naive_relay`). Naive: the server has no
  back-pressure at all. The only caps are in its clients: a sender pauses while more
  than 1 MiB of its stream is unsent (like the naive relay's sender), or while
  ``window`` of its own messages have not come back to it yet, with ``window =
  --window-bytes / (members x frame size)`` (at least 16): that bounds what queues for
  each receiver near ``--window-bytes`` (default 256 KiB, the Coordinator's high
  watermark; conec-actors' path can hold about four such buffers per receiver: sender
  watermark, front-end stream window, front-end watermark, client stream window). Every
  UDP socket of the baseline (server and clients) gets 4 MiB SO_RCVBUF/SO_SNDBUF, as
  conec-actors always uses, for fairness (``bench.proxied`` keeps the OS default unless
  given ``--naive-socket-buffer``);
* **NATS** (context, not a target): ``nats-server`` on a free loopback port, one
  nats-py connection per member subscribed to one subject, every member publishing to
  it, with the baseline's in-flight ``window`` (core NATS has no back-pressure and cuts
  slow consumers off). Skipped, with a JSON line saying why, when ``nats-server`` is not
  on PATH or nats-py is not installed (Debian package ``nats-server``, PyPI ``nats-py``;
  neither is needed for the rest).

Runs alternate between the implementations ``--rounds`` times (the order rotates every
round), each in fresh processes. One JSON line per member count gives the medians, the
ratios conec/baseline (deliveries/s: target ``>= 1.0``, DESIGN.md section 6; p50, p99
and CPU per delivery for information) and every run's figures. ``--messages`` is per
member; by default a run makes about :data:`DEFAULT_DELIVERIES` deliveries, and every
receiver gets at least :data:`MIN_PER_RECEIVER` messages. A default run takes about two
minutes on a 2-core machine.

``python -m bench.broadcast [--members 2,8,32] [--rounds 3] [--messages N] [--size 64]
[--procs P] [--window-bytes 262144] [--no-nats] [--py-spy DIR]``

``--py-spy DIR`` records the Coordinator's front-end during every conec run (py-spy's
raw collapsed-stack format, one file per run). On a 2-core machine the member processes,
the Coordinator (or server) and its workers share two cores, so absolute figures are
low and noisy: compare ratios from one invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import struct
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

from bench import naive_relay
from bench._clients import (
    COORD_NAME,
    HOST,
    NatsServer,
    PySpy,
    check_py_spy,
    want_nats,
)
from bench._common import (
    MP,
    STARTUP_TIMEOUT_S,
    Ctl,
    Procs,
    Stop,
    alternate,
    cpu_seconds,
    emit,
    frame,
    int_list,
    make_self_signed,
    median,
    percentile,
    start_coord,
    udp_rcvbuf_errors,
    wait_event,
)

IMPL = "conec-actors"
BASE = "aioquic-fanout"
NATS = "nats"
CHAN = "bench"
SUBJECT = "bench"

#: Payload header: send time (ns, CLOCK_MONOTONIC) and the sender's member index.
STAMP = struct.Struct("!QH")
#: Deliveries a run aims at when ``--messages`` is not given ...
DEFAULT_DELIVERIES = 120_000
#: ... but every receiver gets at least this many messages, so that a run is more than
#: one burst into the buffers of the path (about 256 KiB to 1 MiB per receiver).
MIN_PER_RECEIVER = 10_000
#: The baseline's (and NATS's) in-flight cap spreads this many bytes over the members.
WINDOW_BYTES = 256 * 1024
MIN_WINDOW = 16
#: Baseline senders pause while more than this many bytes of their stream are unsent.
SEND_LIMIT = naive_relay.SEND_LIMIT
#: SO_RCVBUF/SO_SNDBUF for every baseline socket (conec-actors always uses 4 MiB).
SOCKET_BUFFER = 4 * 1024 * 1024
#: Bound on one run once the start signal is given.
RUN_TIMEOUT_S = 120.0
#: Index frame and server tag of the baseline (2-byte member index).
INDEX_LEN = 2

CAVEAT = ("2-core machine shared with other workloads (tests of other engineers may run "
          "concurrently): absolute figures are noisy, compare ratios within one run")


def member_indices(members: int, procs: int) -> list[list[int]]:
    """Member indices of each client process (round-robin)."""
    return [list(range(p, members, procs)) for p in range(procs)]


def window_for(members: int, size: int, window_bytes: int = WINDOW_BYTES) -> int:
    """In-flight cap (own messages not yet echoed) of a baseline or NATS sender:
    *window_bytes* of frames per receiver, shared by the *members* senders."""
    frame_bytes = 4 + INDEX_LEN + max(size, STAMP.size)
    return max(MIN_WINDOW, window_bytes // (members * frame_bytes))


def padding(size: int) -> bytes:
    """What follows the stamp in a message of *size* bytes."""
    return bytes(max(size, STAMP.size) - STAMP.size)


class Tally:
    """What one member received: latencies (ns), its own echoes, the last arrival."""

    __slots__ = ("done", "expected", "index", "last_ns", "latencies", "own", "progress",
                 "received")

    def __init__(self, index: int, expected: int) -> None:
        self.index = index
        self.expected = expected
        self.latencies = array("q")
        self.received = 0
        self.own = 0
        self.last_ns = 0
        self.progress = asyncio.Event()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def add(self, data: bytes | memoryview, now: int) -> None:
        sent, sender = STAMP.unpack_from(data)
        self.latencies.append(now - sent)
        self.received += 1
        self.last_ns = now
        if sender == self.index:
            self.own += 1
            self.progress.set()
        if self.received >= self.expected and not self.done.done():
            self.done.set_result(None)

    async def wait_echoes(self, sent: int, window: int) -> None:
        """Wait until fewer than *window* of the *sent* own messages are unechoed."""
        while sent - self.own >= window:
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), 0.01)


class CpuClock:
    """CPU time (``utime + stime`` from ``/proc``) used by groups of processes since
    construction."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        return {g: sum(cpu_seconds(p) for p in pids) for g, pids in self.groups.items()}

    def figures(self, deliveries: int) -> dict[str, float]:
        """``<group>_cpu_s`` and ``<group>_cpu_us_per_delivery`` for every group."""
        end = self._read()
        out: dict[str, float] = {}
        for g in self.groups:
            used = end[g] - self.start[g]
            out[f"{g}_cpu_s"] = used
            out[f"{g}_cpu_us_per_delivery"] = used / max(deliveries, 1) * 1e6
        return out


def member_pids(procs: Procs, nprocs: int) -> list[int]:
    return [procs.pid(f"members{p}") for p in range(nprocs)]


def report(proc: int, tallies: list[Tally], first_send: list[int]) -> dict[str, Any]:
    """The ``done`` payload of a member process."""
    lat = array("q")
    for t in tallies:
        lat.extend(t.latencies)
    return {
        "proc": proc,
        "first_send_ns": min(first_send),
        "last_recv_ns": max(t.last_ns for t in tallies),
        "received": sum(t.received for t in tallies),
        "latencies": lat.tobytes(),
    }


# --------------------------------------------------------------------------- conec


async def conec_members_main(
    port: int, ca: bytes, proc: int, indices: list[int], members: int, count: int,
    size: int, go: Stop, *, ctl: Ctl, stop: Stop,
) -> None:
    """One client process of the conec-actors run: its share of members."""
    from conec_actors import Client, ClientConfig

    async def join(i: int) -> Any:
        cfg = ClientConfig(f"m{i}", COORD_NAME, addr=(HOST, port), ca=ca)
        client = await Client.connect(cfg)
        clients.append(client)
        return await client.new_broadcast(CHAN)

    clients: list[Any] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        halves = await asyncio.gather(*(join(i) for i in indices))
        tallies = [Tally(i, members * count) for i in indices]

        async def read(recv: Any, tally: Tally) -> None:
            clock = time.monotonic_ns
            while tally.received < tally.expected:
                msg = await recv.recv()
                tally.add(msg.data, clock())

        tasks = [asyncio.create_task(read(recv, t))
                 for (_, recv), t in zip(halves, tallies, strict=True)]
        while await clients[0].broadcast_count(CHAN) != (members, members):
            await asyncio.sleep(0.02)
        ctl.put(("ready", proc))
        await wait_event(go, poll_s=0.002)

        first_send: list[int] = []

        async def write(send: Any, index: int) -> None:
            pad = padding(size)
            clock = time.monotonic_ns
            first_send.append(clock())
            for _ in range(count):
                await send.send(STAMP.pack(clock(), index) + pad)

        tasks += [asyncio.create_task(write(send, i))
                  for (send, _), i in zip(halves, indices, strict=True)]
        await asyncio.wait_for(asyncio.gather(*tasks), RUN_TIMEOUT_S)
        ctl.put(("done", report(proc, tallies, first_send)))
        await wait_event(stop)
    finally:
        for task in tasks:
            task.cancel()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


def run_conec(
    members: int, count: int, size: int, nprocs: int, *, py_spy: Path | None = None,
    label: str = "",
) -> dict[str, Any]:
    """One conec-actors run: Coordinator + *nprocs* member processes."""
    cert, key = make_self_signed(COORD_NAME)
    errors_before = udp_rcvbuf_errors()
    with Procs(IMPL) as procs:
        coord = start_coord(procs, cert, key, broadcast_workers=1, routing_workers=1)
        go = MP.Event()
        for p, indices in enumerate(member_indices(members, nprocs)):
            procs.start(f"members{p}", conec_members_main, coord.port, cert, p, indices,
                        members, count, size, go)
        procs.expect_n("ready", nprocs, timeout=STARTUP_TIMEOUT_S + members)
        before = coord.stats()
        with PySpy(py_spy if label else None, coord.pid, label):
            cpu = CpuClock({"frontend": [coord.pid], "workers": coord.workers,
                            "members": member_pids(procs, nprocs)})
            go.set()
            dones = procs.expect_n("done", nprocs, timeout=RUN_TIMEOUT_S + 10)
            cpu_used = cpu.figures(members * members * count)
        after = coord.stats()
    deliveries = after["broadcast_deliveries"] - before["broadcast_deliveries"]
    forwarded = after["messages_forwarded"] - before["messages_forwarded"]
    if deliveries != members * members * count or forwarded != members * count:
        raise RuntimeError(f"{IMPL}: Coordinator counted {deliveries} deliveries and "
                           f"{forwarded} messages, expected {members * members * count} "
                           f"and {members * count}")
    result = _figures(IMPL, members, count, dones)
    result.update(cpu_used)  # deliveries was checked equal to members^2 x count
    result["udp_rcvbuf_errors"] = udp_rcvbuf_errors() - errors_before
    return result


def _figures(impl: str, members: int, count: int, dones: list[dict[str, Any]]
             ) -> dict[str, Any]:
    expected = members * members * count
    received = sum(d["received"] for d in dones)
    if received != expected:
        raise RuntimeError(f"{impl}: {received} deliveries, expected {expected}")
    lat = array("q")
    for d in dones:
        lat.frombytes(d["latencies"])
    lat_us = sorted(x / 1000 for x in lat)
    seconds = (max(d["last_recv_ns"] for d in dones)
               - min(d["first_send_ns"] for d in dones)) / 1e9
    return {
        "impl": impl,
        "deliveries": expected,
        "seconds": seconds,
        "deliveries_per_s": expected / seconds,
        "p50_us": percentile(lat_us, 50),
        "p99_us": percentile(lat_us, 99),
    }


# --------------------------------------------------------------------------- baseline


class FanoutState:
    """The fan-out server's members: (protocol, stream id), by connection."""

    def __init__(self, expected: int, ctl: Ctl) -> None:
        self.members: dict[FanoutProtocol, int] = {}
        self.expected = expected
        self.ctl = ctl

    def register(self, proto: FanoutProtocol, stream_id: int) -> None:
        self.members[proto] = stream_id
        if len(self.members) == self.expected:
            self.ctl.put(("joined", self.expected))

    def fan_out(self, tag: bytes, messages: list[bytes]) -> None:
        """Write every message, tagged with its sender's index, to every member."""
        members = list(self.members.items())
        for m in messages:
            out = frame(tag + m)
            for proto, stream_id in members:
                proto.send_soon(stream_id, out)


class Frames:
    """Split a byte stream into :func:`bench._common.frame` payloads."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            n = int.from_bytes(buf[pos:pos + 4], "big")
            if end - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out


class FanoutProtocol(naive_relay.FlushSoonProtocol):
    """Server side of one member: hello frame (its index), then messages to fan out."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *,
                 state: FanoutState) -> None:
        super().__init__(quic, stream_handler)
        self._state = state
        self._frames = Frames()
        self._tag: bytes | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            messages = self._frames.feed(event.data)
            if self._tag is None and messages:
                self._tag = messages.pop(0)[:INDEX_LEN]
                self._state.register(self, event.stream_id)
            if messages:
                assert self._tag is not None
                self._state.fan_out(self._tag, messages)
        elif isinstance(event, ConnectionTerminated):
            self._state.members.pop(self, None)


async def fanout_server_main(cert: bytes, key: bytes, members: int, *, ctl: Ctl,
                             stop: Stop) -> None:
    """The baseline server process."""
    net = naive_relay.Net(socket_buffer=SOCKET_BUFFER)
    state = FanoutState(members, ctl)
    server, port = await naive_relay.start_server(
        cert, key, net, functools.partial(FanoutProtocol, state=state)
    )
    try:
        ctl.put(("server", port))
        await wait_event(stop)
    finally:
        server.close()


class MemberProtocol(naive_relay.ClientProtocol, naive_relay.FlushSoonProtocol):
    """A baseline member's connection: coalesced transmits, like the server's."""


async def fanout_members_main(
    port: int, cert: bytes, proc: int, indices: list[int], members: int, count: int,
    size: int, window: int, go: Stop, *, ctl: Ctl, stop: Stop,
) -> None:
    """One client process of the baseline run."""
    net = naive_relay.Net(socket_buffer=SOCKET_BUFFER)
    config = naive_relay.client_config(cert, net)
    contexts: list[Any] = []
    try:
        protos: list[MemberProtocol] = []
        for _ in indices:
            cm = connect(HOST, port, configuration=config, create_protocol=MemberProtocol)
            proto = await cm.__aenter__()
            contexts.append(cm)
            assert isinstance(proto, MemberProtocol)
            naive_relay.set_socket_buffers(proto._transport, SOCKET_BUFFER)
            protos.append(proto)
        tallies = [Tally(i, members * count) for i in indices]
        streams: list[int] = []
        for proto, tally in zip(protos, tallies, strict=True):
            proto.on_data = _on_data(tally)
            streams.append(proto.open_stream(frame(tally.index.to_bytes(INDEX_LEN, "big"))))
        ctl.put(("ready", proc))
        await wait_event(go, poll_s=0.002)

        first_send: list[int] = []

        async def write(proto: MemberProtocol, stream_id: int, tally: Tally) -> None:
            pad, index = padding(size), tally.index
            clock = time.monotonic_ns
            first_send.append(clock())
            for sent in range(count):
                message = STAMP.pack(clock(), index) + pad
                while proto.unsent(stream_id) > SEND_LIMIT:
                    await proto.wait_progress()
                await tally.wait_echoes(sent, window)
                proto.send_soon(stream_id, frame(message))

        writers = [write(p, s, t) for p, s, t in zip(protos, streams, tallies, strict=True)]
        await asyncio.wait_for(asyncio.gather(*writers, *(t.done for t in tallies)),
                               RUN_TIMEOUT_S)
        ctl.put(("done", report(proc, tallies, first_send)))
        await wait_event(stop)
    finally:
        await _close_quietly(contexts)


async def _close_quietly(contexts: list[Any]) -> None:
    """Leave aioquic ``connect()`` contexts without waiting out the closing period.

    ``connect()``'s exit sends CONNECTION_CLOSE and then waits 3 PTOs; after a run
    whose queues held seconds of data the RTT estimate (so the PTO) is seconds long.
    """
    exits = [asyncio.ensure_future(cm.__aexit__(None, None, None)) for cm in contexts]
    if not exits:
        return
    _, pending = await asyncio.wait(exits, timeout=0.3)
    for task in pending:
        task.cancel()
    await asyncio.gather(*exits, return_exceptions=True)


def _on_data(tally: Tally) -> Callable[[bytes], None]:
    frames = Frames()
    clock = time.monotonic_ns

    def on_data(data: bytes) -> None:
        for m in frames.feed(data):
            tally.add(memoryview(m)[INDEX_LEN:], clock())

    return on_data


def run_baseline(members: int, count: int, size: int, nprocs: int,
                 window_bytes: int = WINDOW_BYTES) -> dict[str, Any]:
    """One baseline run: fan-out server + *nprocs* member processes."""
    cert, key = make_self_signed(COORD_NAME)
    errors_before = udp_rcvbuf_errors()
    window = window_for(members, size, window_bytes)
    with Procs(BASE) as procs:
        procs.start("server", fanout_server_main, cert, key, members)
        port = procs.expect("server")
        pid = procs.pid("server")
        go = MP.Event()
        for p, indices in enumerate(member_indices(members, nprocs)):
            procs.start(f"members{p}", fanout_members_main, port, cert, p, indices, members,
                        count, size, window, go)
        procs.expect_n("ready", nprocs, timeout=STARTUP_TIMEOUT_S + members)
        procs.expect("joined")
        cpu = CpuClock({"server": [pid], "members": member_pids(procs, nprocs)})
        go.set()
        dones = procs.expect_n("done", nprocs, timeout=RUN_TIMEOUT_S + 10)
        cpu_used = cpu.figures(members * members * count)
    result = _figures(BASE, members, count, dones)
    result["window"] = window
    result.update(cpu_used)
    result["udp_rcvbuf_errors"] = udp_rcvbuf_errors() - errors_before
    return result


# --------------------------------------------------------------------------- NATS


async def nats_members_main(
    url: str, proc: int, indices: list[int], members: int, count: int, size: int,
    window: int, go: Stop, *, ctl: Ctl, stop: Stop,
) -> None:
    """One client process of the NATS run: a connection and a subscription per member."""
    import nats

    conns: list[Any] = []
    try:
        tallies = [Tally(i, members * count) for i in indices]
        for tally in tallies:
            nc = await nats.connect(url, name=f"m{tally.index}", allow_reconnect=False)
            conns.append(nc)
            await nc.subscribe(SUBJECT, cb=_nats_cb(tally))
            await nc.flush()
        ctl.put(("ready", proc))
        await wait_event(go, poll_s=0.002)

        first_send: list[int] = []

        async def write(nc: Any, tally: Tally) -> None:
            pad, index = padding(size), tally.index
            clock = time.monotonic_ns
            first_send.append(clock())
            for sent in range(count):
                message = STAMP.pack(clock(), index) + pad
                await tally.wait_echoes(sent, window)
                await nc.publish(SUBJECT, message)
            await nc.flush()

        writers = [write(nc, t) for nc, t in zip(conns, tallies, strict=True)]
        await asyncio.wait_for(asyncio.gather(*writers, *(t.done for t in tallies)),
                               RUN_TIMEOUT_S)
        ctl.put(("done", report(proc, tallies, first_send)))
        await wait_event(stop)
    finally:
        for nc in conns:
            with contextlib.suppress(Exception):
                await nc.close()


def _nats_cb(tally: Tally) -> Callable[[Any], Any]:
    clock = time.monotonic_ns

    async def cb(msg: Any) -> None:
        tally.add(msg.data, clock())

    return cb


def run_nats(members: int, count: int, size: int, nprocs: int,
             window_bytes: int = WINDOW_BYTES) -> dict[str, Any]:
    """One NATS run: nats-server + *nprocs* member processes."""
    window = window_for(members, size, window_bytes)
    with NatsServer() as server, Procs(NATS) as procs:
        go = MP.Event()
        for p, indices in enumerate(member_indices(members, nprocs)):
            procs.start(f"members{p}", nats_members_main, server.url, p, indices, members,
                        count, size, window, go)
        procs.expect_n("ready", nprocs, timeout=STARTUP_TIMEOUT_S + members)
        cpu = CpuClock({"server": [server.proc.pid], "members": member_pids(procs, nprocs)})
        go.set()
        dones = procs.expect_n("done", nprocs, timeout=RUN_TIMEOUT_S + 10)
        cpu_used = cpu.figures(members * members * count)
    result = _figures(NATS, members, count, dones)
    result["window"] = window
    result.update(cpu_used)
    return result


# --------------------------------------------------------------------------- driver


_MEDIAN_KEYS = ("deliveries_per_s", "p50_us", "p99_us", "frontend_cpu_us_per_delivery",
                "workers_cpu_us_per_delivery", "server_cpu_us_per_delivery",
                "members_cpu_us_per_delivery")
_RUN_KEYS = (*_MEDIAN_KEYS, "seconds", "frontend_cpu_s", "server_cpu_s", "members_cpu_s",
             "udp_rcvbuf_errors")


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: median(r[k] for r in runs) for k in _MEDIAN_KEYS if k in runs[0]}
    if "window" in runs[0]:
        out["window"] = runs[0]["window"]
    out["runs"] = [{k: r[k] for k in _RUN_KEYS if k in r} for r in runs]
    return out


def messages_for(members: int, messages: int | None) -> int:
    """Messages per member: *messages*, or enough for :data:`DEFAULT_DELIVERIES` and
    :data:`MIN_PER_RECEIVER`."""
    if messages is not None:
        return messages
    return max(DEFAULT_DELIVERIES // (members * members), -(-MIN_PER_RECEIVER // members))


def bench_members(
    members: int, *, rounds: int, messages: int | None, size: int, procs: int | None,
    nats: bool, py_spy: Path | None, window_bytes: int = WINDOW_BYTES,
) -> dict[str, Any]:
    """Alternate *rounds* runs of each implementation for *members*; one result."""
    count = messages_for(members, messages)
    nprocs = min(procs or 4, members)
    runners: dict[str, Callable[[int], dict[str, Any]]] = {
        IMPL: lambda r: run_conec(members, count, size, nprocs, py_spy=py_spy,
                                  label=f"coord-m{members}-r{r}"),
        BASE: lambda r: run_baseline(members, count, size, nprocs, window_bytes),
    }
    if nats:
        runners[NATS] = lambda r: run_nats(members, count, size, nprocs, window_bytes)
    runs = alternate(runners, rounds)
    conec, base = _summary(runs[IMPL]), _summary(runs[BASE])
    result: dict[str, Any] = {
        "bench": "broadcast",
        "members": members,
        "procs": nprocs,
        "size": size,
        "messages_per_member": count,
        "deliveries_per_run": members * members * count,
        "rounds": rounds,
        "mode": "as fast as back-pressure allows, fixed messages per member",
        "baseline_socket_buffer": SOCKET_BUFFER,
        "window_bytes": window_bytes,
        "conec": conec,
        "baseline": base,
        "ratio_deliveries_per_s": conec["deliveries_per_s"] / base["deliveries_per_s"],
        "ratio_p50": conec["p50_us"] / base["p50_us"],
        "ratio_p99": conec["p99_us"] / base["p99_us"],
        "ratio_cpu_per_delivery": (conec["frontend_cpu_us_per_delivery"]
                                   / base["server_cpu_us_per_delivery"]),
        "target_ratio": ">= 1.0",
        "caveat": CAVEAT,
    }
    if nats:
        result["nats"] = _summary(runs[NATS])
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.broadcast",
                                description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int_list, default=[2, 8, 32],
                   help="comma-separated member counts")
    p.add_argument("--rounds", type=int, default=3, help="measured runs per implementation")
    p.add_argument("--messages", type=int, default=None,
                   help=f"messages per member (default: about {DEFAULT_DELIVERIES} "
                   "deliveries per run)")
    p.add_argument("--size", type=int, default=64, help="message size in bytes (>= 10)")
    p.add_argument("--procs", type=int, default=None,
                   help="member processes (default: min(members, 4))")
    p.add_argument("--window-bytes", type=int, default=WINDOW_BYTES, metavar="BYTES",
                   help="in-flight cap per receiver of the baseline and NATS senders "
                   "(default: 256 KiB, the Coordinator's high watermark)")
    p.add_argument("--no-nats", action="store_true", help="skip the NATS comparison")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                   help="record the Coordinator front-end with py-spy (raw stacks) into DIR")
    args = p.parse_args(argv)
    if args.rounds < 1 or (args.messages is not None and args.messages < 1):
        p.error("--rounds and --messages must be >= 1")
    if args.size < STAMP.size:
        p.error(f"--size must be at least {STAMP.size} (the send time and sender index)")
    if not args.members or min(args.members) < 1:
        p.error("--members needs member counts >= 1")
    if args.window_bytes < 1:
        p.error("--window-bytes must be >= 1")
    if args.procs is not None and args.procs < 1:
        p.error("--procs must be >= 1")
    check_py_spy(p, args.py_spy)
    nats = want_nats(args.no_nats, "broadcast-nats")
    for members in args.members:
        emit(bench_members(members, rounds=args.rounds, messages=args.messages,
                           size=args.size, procs=args.procs, nats=nats, py_spy=args.py_spy,
                           window_bytes=args.window_bytes))


if __name__ == "__main__":
    main()
