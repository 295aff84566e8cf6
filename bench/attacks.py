"""What each attack pattern costs the Coordinator (DESIGN 3.1: <= 8 MiB per connection).

Processes: the Coordinator (spawned, plus its workers), attacker processes speaking
raw aioquic (a self-signed certificate valid for their id and a proper hello, so they
are admitted), and for the patterns that need them, well-behaved clients. The parent
reads the resident memory of the Coordinator (front-end plus workers, ``/proc``
``VmRSS``) before the attackers connect and then every 0.25 s while they attack, until
it stops growing (``--hold`` seconds at most); the figure is
``(peak - baseline) / connections`` in MiB. Patterns:

* ``gaps``: one byte at the end of each stream window, on every stream id the
  Coordinator allows (bidirectional and unidirectional), as far as QUIC flow control
  lets the attacker go;
* ``partial``: proxied streams to a real client and broadcast members, each
  announcing a 16 MiB message and then trickling its bytes;
* ``unread``: many proxied streams to a client (the attacker itself) that never reads
  them, written to until they stall;
* ``control``: ``broadcast_count`` requests sent without end while the control
  stream's replies are never read;
* ``initials``: a flood of real QUIC Initials from many source connection ids that
  never complete their handshake (against the Coordinator and against a listening
  client; figures per Initial, and the half-open counts seen);
* ``streams``: many proxied streams held open to one target.

One JSON line: MiB per attacking connection for each pattern (target <= 8; the
targets that never read, one per attacker in ``unread`` and ``streams``, count as
attacking connections too), with the command.

``python -m bench.attacks [--patterns gaps,initials,...] [--conns 4] [--streams 100]``

``python -m bench.attacks flood HOST PORT COUNT SECONDS`` only sends the Initials (the
flooder the tests run in a subprocess).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._common import (
    MP,
    STARTUP_TIMEOUT_S,
    Ctl,
    Procs,
    Stop,
    emit,
    make_self_signed,
    rss_kib,
    start_coord,
    wait_event,
)

HOST = "127.0.0.1"
COORD_NAME = "localhost"
PATTERNS = ("gaps", "partial", "unread", "control", "initials", "streams")
TARGET_MIB = 8.0
SAMPLE_S = 0.25
MIB = 1024 * 1024
#: The parent samples until the Coordinator's RSS has not reached a new peak
#: (by more than PLATEAU_KIB) for QUIET_S, or for at most --hold seconds.
QUIET_S = 1.5
PLATEAU_KIB = 256
#: Proxied streams each ``partial`` attacker opens to the victim.
PARTIAL_PROXIED = 24


# --------------------------------------------------------------------------- raw peers


class RawPeer:
    """One raw aioquic connection to a conec-actors endpoint, admitted with a hello.

    `quic` is the stock `QuicConnection`, for the attacks to misuse; `transmit()`
    sends what it has queued.
    """

    def __init__(self, protocol: Any, stack: contextlib.AsyncExitStack) -> None:
        self.protocol = protocol
        self.quic = protocol._quic
        self._stack = stack

    def transmit(self) -> None:
        self.protocol.transmit()

    @property
    def closed(self) -> tuple[int, str] | None:
        info: tuple[int, str] | None = self.protocol.close_info
        return info

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()


def _protocol_class() -> Any:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events

    from conec_actors import wire
    from conec_actors.framing import FrameDecoder

    class Protocol(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.welcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.control = FrameDecoder(1 << 20)
            self.read_control = True
            self.close_info: tuple[int, str] | None = None
            self.received: dict[int, int] = {}

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, events.StreamDataReceived):
                self.received[event.stream_id] = \
                    self.received.get(event.stream_id, 0) + len(event.data)
                if event.stream_id == 0 and not self.welcome.done():
                    for raw in self.control.feed(event.data):
                        msg = wire.decode(raw)
                        if isinstance(msg, wire.Welcome) and not self.welcome.done():
                            self.welcome.set_result(msg)
            elif isinstance(event, events.ConnectionTerminated):
                self.close_info = (event.error_code, event.reason_phrase)
                if not self.welcome.done():
                    self.welcome.set_exception(ConnectionError(
                        f"closed before the welcome: {event.error_code} "
                        f"{event.reason_phrase}"))

    return Protocol


async def raw_session(port: int, client_id: str, *, host: str = HOST,
                      timeout: float = 10.0, withhold_credit: bool = False) -> RawPeer:
    """Connect with raw aioquic (a self-signed certificate for `client_id`), send
    the hello and wait for the welcome. With `withhold_credit` the peer never
    grants flow-control credit beyond its initial windows (it reads nothing)."""
    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    from conec_actors import wire
    from conec_actors._quic import CONNECTION_ID_LENGTH
    from conec_actors.framing import frame
    from conec_actors.tlsconf import load_cert_key

    cfg = QuicConfiguration(is_client=True, alpn_protocols=[wire.ALPN],
                            server_name=COORD_NAME, connection_id_length=CONNECTION_ID_LENGTH,
                            verify_mode=ssl.CERT_NONE, idle_timeout=60.0)
    cert_pem, key_pem = make_self_signed(client_id)
    cfg.certificate, cfg.certificate_chain, cfg.private_key = load_cert_key(cert_pem, key_pem)
    stack = contextlib.AsyncExitStack()
    try:
        protocol: Any = await asyncio.wait_for(stack.enter_async_context(
            connect(host, port, configuration=cfg, create_protocol=_protocol_class())),
            timeout)
        hello = wire.Hello(id=client_id, version=wire.PROTOCOL_VERSION,
                           max_message_size=16 * MIB, idle_timeout=60.0,
                           max_datagram_size=1200)
        protocol._quic.send_stream_data(0, frame(wire.encode(hello)))
        protocol.transmit()
        await asyncio.wait_for(protocol.welcome, timeout)
        if withhold_credit:
            # aioquic grants credit as data arrives; this peer grants none.
            for name in ("_write_stream_limits", "_write_connection_limits"):
                setattr(protocol._quic, name, lambda **kw: None)
    except BaseException:
        await stack.aclose()
        raise
    return RawPeer(protocol, stack)


def send_gaps(peer: RawPeer) -> int:
    """Announce one byte at the end of the window on every stream id the peer
    grants (bidirectional and unidirectional), within QUIC flow control: the
    bytes before it are never sent. Returns the number of streams used."""
    quic = peer.quic
    n = 0
    for first, limit, window in (
            (4, quic._remote_max_streams_bidi, quic._remote_max_stream_data_bidi_remote),
            (2, quic._remote_max_streams_uni, quic._remote_max_stream_data_uni)):
        if window <= 0:
            continue
        for sid in range(first, 4 * limit, 4):
            quic.send_stream_data(sid, bytes(window))
            # Only the last byte is ever sent: the receiver must hold the gap.
            quic._streams[sid].sender._pending.subtract(0, window - 1)
            n += 1
    peer.transmit()
    return n


def send_initials(host: str, port: int, count: int, seconds: float) -> int:
    """Send `count` real QUIC Initials (each from a new connection with its own
    connection ids) to host:port over `seconds`, never answering anything."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    from conec_actors import wire
    from conec_actors._quic import CONNECTION_ID_LENGTH

    cfg = QuicConfiguration(is_client=True, alpn_protocols=[wire.ALPN],
                            server_name=COORD_NAME, connection_id_length=CONNECTION_ID_LENGTH)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    try:
        t0 = time.monotonic()
        for i in range(count):
            now = time.monotonic()
            q = QuicConnection(configuration=cfg)
            q.connect((host, port), now=now)
            for data, addr in q.datagrams_to_send(now=now):
                sock.sendto(data, addr)
            sent += 1
            ahead = t0 + seconds * (i + 1) / count - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    finally:
        sock.close()
    return sent


# --------------------------------------------------------------------------- processes


async def gap_attacker_main(port: int, conns: int, *, ctl: Ctl, stop: Stop) -> None:
    peers = [await raw_session(port, f"gap{i}") for i in range(conns)]
    try:
        streams = [send_gaps(p) for p in peers]
        ctl.put(("attacking", {"streams": streams}))
        await wait_event(stop)
        ctl.put(("refused", [p.closed for p in peers]))
    finally:
        for p in peers:
            await p.aclose()


def open_raw_stream(peer: RawPeer, kind: str, target: str, n: int) -> int:
    """Open a data stream with its header (to a client, or a broadcast)."""
    from conec_actors import wire
    from conec_actors.framing import frame

    sid = int(peer.quic.get_next_available_stream_id())
    peer.quic.send_stream_data(sid, frame(wire.encode(wire.StreamHeader(
        kind, target, n))))  # type: ignore[arg-type]
    return sid


async def pattern_attacker_main(pattern: str, port: int, conns: int, streams: int, *,
                                ctl: Ctl, stop: Stop) -> None:
    """The attackers of one pattern (and the sink some of them need)."""
    from conec_actors import wire
    from conec_actors.framing import frame

    peers: list[RawPeer] = []
    try:
        attackers = [await raw_session(port, f"{pattern}{i}",
                                       withhold_credit=pattern == "control")
                     for i in range(conns)]
        peers += attackers
        if pattern in ("unread", "streams"):
            # Each attacker's target never reads (no credit beyond its initial
            # windows); one target each keeps within its 128 streams.
            peers += [await raw_session(port, f"sink{i}", withhold_credit=True)
                      for i in range(conns)]
        ctl.put(("connected", len(peers)))
        chunk = bytes(64 * 1024)
        if pattern == "partial":
            # A 16 MiB message announced, then a trickle that never ends it.
            prefix = (16 * MIB).to_bytes(4, "big")
            for i, p in enumerate(attackers):
                for k in range(streams):
                    # A client takes 128 streams in all: the rest are broadcasts.
                    kind, target = ("proxied", "victim") if k < PARTIAL_PROXIED \
                        else ("broadcast", f"b{i}.{k}")
                    sid = open_raw_stream(p, kind, target, k)
                    p.quic.send_stream_data(sid, prefix)
                p.transmit()
            ctl.put(("attacking", {"connections": len(peers)}))
            while not stop.is_set():
                for p in attackers:
                    for sid in list(p.quic._streams):
                        if sid % 4 == 0 and sid != 0:
                            p.quic.send_stream_data(sid, bytes(4096))
                    p.transmit()
                await asyncio.sleep(0.05)
        elif pattern in ("unread", "streams"):
            for i, p in enumerate(attackers):
                for k in range(streams):
                    sid = open_raw_stream(p, "proxied", f"sink{i}", k)
                    if pattern == "unread":
                        for _ in range(16):  # 1 MiB each: far more than any window
                            p.quic.send_stream_data(sid, chunk)
                p.transmit()
            ctl.put(("attacking", {"connections": len(peers)}))
        elif pattern == "control":
            request = b"".join(frame(wire.encode(wire.BroadcastCount(i, "none")))
                               for i in range(1000))
            ctl.put(("attacking", {"connections": len(peers)}))
            while not stop.is_set():
                for p in attackers:
                    if p.quic._streams[0].sender.buffer_is_empty:
                        p.quic.send_stream_data(0, request * 8)
                    p.transmit()
                await asyncio.sleep(0.02)
        await wait_event(stop)
    finally:
        for p in peers:
            await p.aclose()


async def victim_main(port: int, ca: bytes, *, ctl: Ctl, stop: Stop) -> None:
    """A well-behaved client that reads every stream it is offered."""
    from conec_actors import Client, ClientConfig

    client = await Client.connect(ClientConfig("victim", COORD_NAME, addr=(HOST, port),
                                               ca=ca))
    tasks: set[asyncio.Task[None]] = set()

    async def read(incoming: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                await incoming.recv.recv()

    async def accept() -> None:
        async for incoming in client.incoming:
            task = asyncio.ensure_future(read(incoming))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = asyncio.ensure_future(accept())
    try:
        ctl.put(("victim", None))
        await wait_event(stop)
    finally:
        acceptor.cancel()
        for t in list(tasks):
            t.cancel()
        await client.close()


async def listening_client_main(port: int, ca: bytes, *, ctl: Ctl, stop: Stop) -> None:
    """A well-behaved listening client that reports its address and the most
    half-open handshakes its endpoint held."""
    from conec_actors import Client, ClientConfig

    client = await Client.connect(ClientConfig("listener", COORD_NAME, addr=(HOST, port),
                                               ca=ca))
    try:
        ep = client._endpoint
        ctl.put(("listening", ep.sock.getsockname()[1]))
        most = 0
        while not stop.is_set():
            most = max(most, ep.half_open)
            ctl.put(("half_open", {"now": ep.half_open, "most": most,
                                   "retries_sent": ep.retries_sent,
                                   "expired": getattr(ep, "handshakes_expired", None)}))
            await asyncio.sleep(SAMPLE_S)
    finally:
        await client.close()


def _sample(rss: Callable[[], int], until: Callable[[], bool],
            interval: float = SAMPLE_S) -> int:
    """The highest `rss()` seen, sampling until `until()`."""
    peak = 0
    while True:
        peak = max(peak, rss())
        if until():
            return peak
        time.sleep(interval)


# --------------------------------------------------------------------------- patterns


def run_gaps(conns: int, hold: float) -> dict[str, Any]:
    cert, key = make_self_signed(COORD_NAME)
    with Procs("attacks-gaps") as procs:
        coord = start_coord(procs, cert, key)
        time.sleep(0.5)
        baseline = coord.rss_kib()
        procs.start("attacker", gap_attacker_main, coord.port, conns)
        info = procs.expect("attacking")
        peak, seconds = _until_plateau(coord.rss_kib, hold)
        procs.stop("attacker")
        refused = procs.expect("refused")
    return {"connections": conns, "streams_per_connection": info["streams"],
            "seconds": seconds,
            "closed_by_coordinator": [r for r in refused if r is not None],
            "growth_mib": (peak - baseline) / 1024,
            "mib_per_connection": (peak - baseline) / 1024 / conns}


def run_pattern(pattern: str, conns: int, streams: int, hold: float) -> dict[str, Any]:
    cert, key = make_self_signed(COORD_NAME)
    with Procs(f"attacks-{pattern}") as procs:
        coord = start_coord(procs, cert, key)
        if pattern == "partial":
            procs.start("victim", victim_main, coord.port, cert)
            procs.expect("victim")
        time.sleep(0.5)
        baseline = coord.rss_kib()
        procs.start("attacker", pattern_attacker_main, pattern, coord.port, conns, streams)
        n = procs.expect("connected")
        procs.expect("attacking")
        peak, seconds = _until_plateau(coord.rss_kib, hold)
        stats = coord.stats()
    return {"connections": n, "streams_per_connection": streams, "seconds": seconds,
            "coord_streams": stats.get("streams"),
            "growth_mib": (peak - baseline) / 1024,
            "mib_per_connection": (peak - baseline) / 1024 / n}


def _until_plateau(rss: Callable[[], int], hold: float) -> tuple[int, float]:
    """(peak RSS, seconds sampled): until no new peak for QUIET_S, at most `hold` s."""
    t0 = time.monotonic()
    peak, peak_at = rss(), t0
    while (now := time.monotonic()) - t0 < hold and now - peak_at < QUIET_S:
        time.sleep(SAMPLE_S)
        kib = rss()
        if kib > peak + PLATEAU_KIB:
            peak_at = time.monotonic()
        peak = max(peak, kib)
    return peak, round(time.monotonic() - t0, 2)


def run_initials(count: int, seconds: float) -> dict[str, Any]:
    cert, key = make_self_signed(COORD_NAME)
    out: dict[str, Any] = {"initials": count, "seconds": seconds}
    with Procs("attacks-initials") as procs:
        coord = start_coord(procs, cert, key)
        time.sleep(0.5)
        baseline = coord.rss_kib()
        most = 0
        flooder = MP.Process(target=_flood_entry, args=(HOST, coord.port, count, seconds))
        flooder.start()
        try:
            def done() -> bool:
                nonlocal most
                most = max(most, coord.stats()["half_open"])
                return not flooder.is_alive()
            peak = _sample(coord.rss_kib, done)
        finally:
            flooder.join(STARTUP_TIMEOUT_S)
        stats = coord.stats()
        out["coordinator"] = {
            "growth_mib": (peak - baseline) / 1024,
            "kib_per_initial": (peak - baseline) / count,
            "half_open_most": most,
            "retries_sent": stats["retries_sent"],
        }
        # The same flood at a listening client (its address is what an
        # introduction hands out).
        procs.start("listener", listening_client_main, coord.port, cert)
        lport = procs.expect("listening")
        time.sleep(0.5)
        lpid = procs.pid("listener")
        lbase = rss_kib(lpid)
        flooder = MP.Process(target=_flood_entry, args=(HOST, lport, count, seconds))
        flooder.start()
        try:
            lpeak = _sample(lambda: rss_kib(lpid), lambda: not flooder.is_alive())
        finally:
            flooder.join(STARTUP_TIMEOUT_S)
        last: dict[str, Any] = {}
        end = time.monotonic() + 0.5
        while time.monotonic() < end or not last:
            with contextlib.suppress(Exception):
                last = procs.expect("half_open", timeout=1)
        out["listening_client"] = {
            "growth_mib": (lpeak - lbase) / 1024,
            "kib_per_initial": (lpeak - lbase) / count,
            "half_open_most": last.get("most"),
            "retries_sent": last.get("retries_sent"),
        }
    return out


def _flood_entry(host: str, port: int, count: int, seconds: float) -> None:
    send_initials(host, port, count, seconds)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["flood"]:
        host, port, count, seconds = argv[1], int(argv[2]), int(argv[3]), float(argv[4])
        print(send_initials(host, port, count, seconds), flush=True)
        return
    p = argparse.ArgumentParser(prog="python -m bench.attacks",
                                description=__doc__.split("\n")[0])
    p.add_argument("--patterns", default=",".join(PATTERNS),
                   help=f"comma-separated, among {','.join(PATTERNS)}")
    p.add_argument("--conns", type=int, default=4, help="attacking connections per pattern")
    p.add_argument("--streams", type=int, default=100,
                   help="streams per attacking connection (partial, unread, streams)")
    p.add_argument("--hold", type=float, default=10.0,
                   help="longest a pattern is sampled (seconds; it stops at a plateau)")
    p.add_argument("--initials", type=int, default=1500, help="Initials per flood")
    p.add_argument("--flood-seconds", type=float, default=4.0)
    args = p.parse_args(argv)
    patterns = [x for x in args.patterns.split(",") if x]
    unknown = set(patterns) - set(PATTERNS)
    if unknown or args.conns < 1 or args.initials < 1:
        p.error(f"unknown patterns {sorted(unknown)}" if unknown
                else "--conns and --initials must be positive")
    result: dict[str, Any] = {
        "bench": "attacks",
        "command": "python -m bench.attacks " + " ".join(argv),
        "target_mib_per_connection": f"<= {TARGET_MIB}",
    }
    for name in patterns:
        if name == "gaps":
            result[name] = run_gaps(args.conns, args.hold)
        elif name == "initials":
            result[name] = run_initials(args.initials, args.flood_seconds)
        else:
            result[name] = run_pattern(name, args.conns, args.streams, args.hold)
    emit(result)


if __name__ == "__main__":
    main()
