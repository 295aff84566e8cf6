"""``conec-actors demo``: a Coordinator and a few clients in one process.

The Coordinator runs its front-end in `frontends` shard processes (2 by
default on Linux, where the kernel steers each client to one of them by its
first connection id; the demo prints where they landed), so the ring's
streams mostly cross shards.

The clients (alice, bob, carol, ...) sit in a ring: each opens proxied
streams to the next one and sends messages of mixed sizes (64 B to 16 KiB)
as fast as the path lets it, while the next one reads them from
``client.incoming``. Every message carries its sequence number and a CRC-32
of its contents, so the reader checks that each one arrived, in order and
intact. About once a second a line shows what went through the Coordinator;
after the duration everything stops cleanly and a summary is printed.

Alongside: the first two clients open a direct channel and stream over it
(the Coordinator carries none of those bytes), every client joins one
broadcast and speaks on it (each member must hear everything in one order),
and at the end tell/ask figures are taken over the channel and through the
Coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections.abc import Callable
from typing import TextIO

from ._oserror import describe_os_error
from ._run import on_stop_signals, run, running_loop_name
from .certs import self_signed
from .client import Client
from .config import ClientConfig, CoordConfig
from .coord import Coord
from .demo_checks import (
    HEADER,
    MAX_SIZE,
    MB,
    MIN_SIZE,
    Flow,
    Flows,
    Printer,
    Room,
    check_message,
    client_names,
    make_message,
    random_size,
    shard_lines,
    shard_summary,
    summary,
)
from .errors import ConecError, StreamClosed
from .streams import BroadcastInStream, IncomingStream, InStream, OutStream

__all__ = ["check_message", "client_names", "default_frontends", "demo", "make_message",
           "run_demo"]

#: Streams each client opens to the next one in the ring.
STREAMS_PER_CLIENT = 2
#: Each client says something on the demo broadcast this often.
BROADCAST_EVERY = 0.05
#: How long stopping may take before the demo reports a stuck stream.
DRAIN_TIMEOUT = 10.0
#: How long the demo waits for its clients to show in the shards' figures.
PLACED_WAIT = 2.0


# -- the ends of a stream ----------------------------------------------------------


async def _write(flow: Flow, send: OutStream, recv: InStream, stop: asyncio.Event,
                 rng: random.Random) -> None:
    """Send checked messages until `stop`, finish, then wait for the other
    end's finish on the way back."""
    seq = 0
    try:
        while not stop.is_set():
            msg = make_message(seq, random_size(rng))
            await send.send(msg)
            flow.sent_msgs += 1
            flow.sent_bytes += len(msg)
            seq += 1
            if seq % 64 == 0:
                await asyncio.sleep(0)  # let the other streams and the ticker run
        await send.finish()
        flow.finished = True
        with contextlib.suppress(StreamClosed):
            extra = await recv.recv()
            flow.problem(f"unexpected {len(extra)}-byte message on the way back")
    except ConecError as exc:
        flow.problem(f"writer: {exc}")


async def _read(flow: Flow, incoming: IncomingStream) -> None:
    """Read and check every message until the clean end."""
    expected = 0
    try:
        await incoming.send.finish()  # nothing goes back on this stream
        async for msg in incoming.recv:
            problem = check_message(msg, expected)
            if problem is not None:
                flow.problem(problem)
                seq = HEADER.unpack_from(msg)[0] if len(msg) >= HEADER.size else expected
                expected = seq  # resynchronise, so one loss is reported once
            flow.recv_msgs += 1
            flow.recv_bytes += len(msg)
            expected += 1
        flow.ended_clean = True
    except ConecError as exc:
        flow.problem(f"reader: {exc}")


async def _chat(client: Client, send: OutStream, room: Room, stop: asyncio.Event) -> None:
    """Say something on the broadcast every BROADCAST_EVERY s, then finish."""
    k = 0
    try:
        while not stop.is_set():
            await send.send(b"%d" % k)
            k += 1
            room.sent[client.id] = k
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BROADCAST_EVERY)
        await send.finish()
    except ConecError as exc:
        room.problems.append(f"{client.id} sending: {exc}")


async def _listen(client: Client, recv: BroadcastInStream, room: Room) -> None:
    """Hear everything until every member has finished sending."""
    heard = room.heard.setdefault(client.id, [])
    try:
        async for msg in recv:
            heard.append((msg.sender, int(msg.data)))
    except ConecError as exc:
        room.problems.append(f"{client.id} listening: {exc}")


async def _accept(client: Client, flows: Flows, tasks: set[asyncio.Task[None]]) -> None:
    """Start a reader for every stream opened to `client`, until it closes."""
    async for incoming in client.incoming:
        flow = flows.get(incoming.peer, client.id, incoming.stream_id.kind,
                         incoming.stream_id.n)
        task = asyncio.ensure_future(_read(flow, incoming))
        tasks.add(task)


# -- the demo -----------------------------------------------------------------------


async def _connect_all(cfgs: list[ClientConfig]) -> list[Client]:
    results = await asyncio.gather(*(Client.connect(c) for c in cfgs),
                                   return_exceptions=True)
    clients = [r for r in results if isinstance(r, Client)]
    for r in results:
        if isinstance(r, BaseException):
            for c in clients:
                await c.close()
            raise r
    return clients


def default_frontends() -> int:
    """The demo's front-end shards by default: 2 on Linux (where
    `CoordConfig.frontends` > 1 works), 1 elsewhere."""
    return 2 if sys.platform == "linux" else 1


async def demo(duration: float = 5.0, clients: int = 3, out: TextIO | None = None,
               frontends: int | None = None) -> int:
    """Run the demo (see the module docstring) in the running event loop,
    with a Coordinator of `frontends` front-end shards (`default_frontends()`
    if None), and return the exit status: 0 if every check passed, 1 if one
    failed, 130 if interrupted by SIGINT/SIGTERM (after stopping cleanly and
    printing the summary)."""
    if not duration > 0:
        raise ValueError(f"duration must be positive, got {duration}")
    if clients < 1:
        raise ValueError(f"clients must be at least 1, got {clients}")
    if frontends is None:
        frontends = default_frontends()
    say = Printer(out if out is not None else sys.stdout)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        if not stop.is_set():
            interrupted = True
            stop.set()

    names = client_names(clients)
    say(f"conec-actors demo: a Coordinator and {clients} client{'s' * (clients != 1)} "
        f"in this process, for {duration:g} s on {running_loop_name()} (Ctrl-C stops early)")
    ck = self_signed(["localhost"])
    with on_stop_signals(interrupt):
        async with Coord.start(CoordConfig(ck.cert_pem, ck.key_pem, host="127.0.0.1",
                                           port=0, frontends=frontends)) as coord:
            host, port = coord.address
            say(f"coordinator listening on {host}:{port} (routing worker pid "
                f"{', '.join(map(str, coord.worker_pids('routing')))}, broadcast worker "
                f"pid {', '.join(map(str, coord.worker_pids('broadcast')))})")
            cfgs = [ClientConfig(name, "localhost", addr=coord.address, ca=ck.cert_pem)
                    for name in names]
            conns = await _connect_all(cfgs)
            try:
                say(f"connected {', '.join(names)}")
                placement = await _placed(coord, len(conns))
                for line in shard_lines(await coord.stats()):
                    say(line)
                return await _traffic(coord, conns, placement, duration, stop, say,
                                      lambda: interrupted, loop)
            finally:
                for c in conns:
                    await c.close()


async def _placed(coord: Coord, clients: int) -> dict[str, int]:
    """Each client id's front-end shard, once every client is listed (as
    /clients lists them; or after PLACED_WAIT s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PLACED_WAIT
    while True:
        # The figures the metrics endpoint's /clients serves.
        placement = {c.id: c.shard for c in await coord._clients()}
        if len(placement) >= clients or loop.time() > deadline:
            return placement
        await asyncio.sleep(0.02)


async def _traffic(coord: Coord, clients: list[Client], placement: dict[str, int],
                   duration: float,
                   stop: asyncio.Event, say: Printer, interrupted: Callable[[], bool],
                   loop: asyncio.AbstractEventLoop) -> int:
    flows = Flows()
    readers: set[asyncio.Task[None]] = set()
    acceptors = [asyncio.ensure_future(_accept(c, flows, readers)) for c in clients]
    writers: list[asyncio.Task[None]] = []
    stuck: list[str] = []
    try:
        n = len(clients)
        for i, client in enumerate(clients):
            peer = clients[(i + 1) % n].id
            for k in range(STREAMS_PER_CLIENT):
                send, recv = await client.new_proxied_stream(peer)
                flow = flows.get(client.id, peer, "proxied", send.stream_id.n)
                rng = random.Random(i * 1000 + k)
                writers.append(asyncio.ensure_future(_write(flow, send, recv, stop, rng)))
        say(f"{len(writers)} proxied streams in a ring "
            f"({' -> '.join(c.id for c in clients)} -> {clients[0].id}), "
            f"{STREAMS_PER_CLIENT} per client, messages of {MIN_SIZE} B to "
            f"{MAX_SIZE // 1024} KiB")
        if n >= 2:
            a, b = clients[0], clients[1]
            await a.new_channel(b.id)
            send, recv = await a.new_direct_stream(b.id)
            flow = flows.get(a.id, b.id, "direct", send.stream_id.n)
            writers.append(asyncio.ensure_future(
                _write(flow, send, recv, stop, random.Random(4242))))
            say(f"1 direct stream over a channel {a.id} <-> {b.id}: the Coordinator "
                "introduced them and carries none of its bytes"
                + _across(placement, a.id, b.id))
        room = Room()
        members = [(c, *(await c.new_broadcast("demo-room"))) for c in clients]
        # Everyone listens before anyone speaks, so all hear the same things.
        for c, _, brecv in members:
            readers.add(asyncio.ensure_future(_listen(c, brecv, room)))
        for c, bsend, _ in members:
            writers.append(asyncio.ensure_future(_chat(c, bsend, room, stop)))
        say(f"a broadcast 'demo-room' with all {n} clients as members, each saying "
            f"something every {BROADCAST_EVERY * 1000:.0f} ms")
        say("")

        start = loop.time()
        elapsed = await _tick(coord, flows, start, duration, stop, say, loop)

        stop.set()
        _, pending = await asyncio.wait(writers, timeout=DRAIN_TIMEOUT)
        stuck += [f"a writer did not stop within {DRAIN_TIMEOUT:.0f} s" for _ in pending]
        await _wait_readers(flows, readers, stuck)
        stats = await coord.stats()
    finally:
        for t in [*writers, *readers, *acceptors]:
            t.cancel()
        await asyncio.gather(*writers, *readers, *acceptors, return_exceptions=True)

    ok = summary(flows, [c.id for c in clients], stats, elapsed, stuck, say, interrupted(),
                  sum(room.sent.values()))
    room_ok = room.check()
    heard = sum(len(h) for h in room.heard.values())
    say(f"  broadcast 'demo-room': {sum(room.sent.values()):,} messages sent, {heard:,} "
        f"deliveries, {stats.get('broadcast_deliveries', 0):,} fanned out by the "
        f"Coordinator: {'ok, every member heard everything in one order' if room_ok else 'FAILED'}")
    for problem in room.problems:
        say(f"    {problem}")
    if len(stats["frontends"]) > 1:
        for line in shard_summary(stats):
            say(line)
    ok = ok and room_ok
    if len(clients) >= 2 and not interrupted():
        ok = await _actors(clients, placement, duration, say) and ok
    if not ok:
        return 1
    return 130 if interrupted() else 0


async def _actors(clients: list[Client], placement: dict[str, int], duration: float,
                  say: Printer) -> bool:
    """tell/ask between two clients: over the direct channel (alice -> bob)
    and, with a third client, through the Coordinator (bob -> carol)."""
    from .actor import demo_tell_ask

    seconds = min(1.0, max(0.2, duration / 4))
    pairs = [(clients[0], clients[1])]
    if len(clients) >= 3:
        pairs.append((clients[1], clients[2]))
    try:
        for a, b in pairs:
            f = await demo_tell_ask(a, b, seconds)
            path = a.mailbox.route(b.id) or "?"
            say(f"  tell/ask {a.id} -> {b.id} ({path}): {f['tells']:,.0f} tells "
                f"({f['tells_per_s']:,.0f}/s), {f['asks']:,.0f} asks, ask round trip "
                f"p50 {f['ask_p50_ms']:.2f} ms, p99 {f['ask_p99_ms']:.2f} ms"
                + _across(placement, a.id, b.id))
    except ConecError as exc:
        say(f"  tell/ask FAILED: {exc}")
        return False
    return True


def _across(placement: dict[str, int], a: str, b: str) -> str:
    """A note when `a` and `b` are on different front-end shards."""
    if placement.get(a) == placement.get(b):
        return ""
    return f" ({a} on shard {placement.get(a)}, {b} on shard {placement.get(b)})"


async def _tick(coord: Coord, flows: Flows, start: float, duration: float,
                stop: asyncio.Event, say: Printer, loop: asyncio.AbstractEventLoop) -> float:
    """Print a line of figures about once a second until `duration` has passed
    or `stop` is set; returns the time elapsed. msgs/s and MB/s are what the
    Coordinator forwarded; direct/s what the direct streams delivered."""
    header = ["time", "msgs/s", "MB/s", "direct/s", "clients", "streams"]
    widths = [8, 10, 9, 10, 10, 10]

    def line(cells: list[str]) -> str:
        return "  " + "".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))

    say(line(header))
    last_t, last_msgs, last_bytes, last_direct = start, 0, 0, 0
    tick = 1
    while True:
        target = start + min(tick, duration)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, target - loop.time()))
        if stop.is_set():
            return loop.time() - start
        if tick <= duration:
            stats = await coord.stats()
            now = loop.time()
            msgs, nbytes = int(stats["messages_forwarded"]), int(stats["bytes_forwarded"])
            direct = sum(f.recv_msgs for f in flows if f.kind == "direct")
            dt = max(now - last_t, 1e-9)
            say(line([f"{now - start:.1f} s", f"{(msgs - last_msgs) / dt:,.0f}",
                      f"{(nbytes - last_bytes) / dt / MB:,.2f}",
                      f"{(direct - last_direct) / dt:,.0f}", str(stats["clients"]),
                      str(stats["streams"])]))
            last_t, last_msgs, last_bytes, last_direct = now, msgs, nbytes, direct
        if loop.time() - start >= duration - 0.01:
            return loop.time() - start
        tick += 1


async def _wait_readers(flows: Flows, readers: set[asyncio.Task[None]],
                        stuck: list[str]) -> None:
    """Wait until every stream's reader has seen its end (new readers may
    still be appearing for streams opened just before the stop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT
    while loop.time() < deadline:
        if all(f.ended_clean or f.problem_count for f in flows) and all(
                t.done() for t in readers):
            return
        await asyncio.sleep(0.02)
    for f in flows:
        if not (f.ended_clean or f.problem_count):
            stuck.append(f"{f.describe()}: the reader did not see the end within "
                         f"{DRAIN_TIMEOUT:.0f} s ({f.recv_msgs:,} of {f.sent_msgs:,} "
                         "messages arrived)")


def run_demo(duration: float = 5.0, clients: int = 3, frontends: int | None = None) -> int:
    """Run the demo in a new event loop (uvloop if installed) and return the
    exit status: 0 if every check passed, 1 if one failed or the demo could
    not start, 130 if interrupted."""
    try:
        return run(demo(duration, clients, frontends=frontends))
    except OSError as exc:
        print(f"conec-actors demo: {describe_os_error(exc)}", file=sys.stderr, flush=True)
    except (ConecError, ValueError) as exc:  # ValueError: frontends > 1 off Linux
        print(f"conec-actors demo: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("conec-actors demo: interrupted", file=sys.stderr, flush=True)
        return 130
    return 1
