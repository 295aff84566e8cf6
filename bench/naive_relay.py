"""Baseline: a naive single-process aioquic relay between two clients.

Three processes take part in every run:

* the **relay**: one ``aioquic.asyncio.serve`` server on 127.0.0.1 (port 0).  Every
  client opens one bidirectional stream and announces itself with a role line,
  ``b"B\\n"`` (receiver, connects first) or ``b"A\\n"`` (sender).  From then on the
  relay copies every byte A sends to B's stream and every byte B sends to A's
  stream, the obvious way: on each ``StreamDataReceived`` it calls
  ``send_stream_data`` on the peer connection and schedules the peer's
  ``transmit()`` (coalesced to once per event-loop turn).  No back-pressure, no
  worker processes;
* the **sender A**, which writes length-prefixed frames (see :func:`bench._common.frame`)
  with ``send_stream_data`` + ``transmit()``, pausing while more than
  :data:`SEND_LIMIT` bytes of its stream are still unsent;
* the **receiver B**, which counts complete frames and reports the time between the
  first and the last one (throughput mode), or echoes everything back (ping mode).

``python -m bench.naive_relay`` runs every size in :data:`bench._common.SIZES` plus
the ping measurement and prints one JSON line per result.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import multiprocessing.context
import multiprocessing.queues
import multiprocessing.synchronize
import queue
import socket
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bench._common import SIZES, FrameCounter, emit, frame, make_self_signed, ping_result, rates

IMPL = "naive-relay"
ALPN = "bench-relay"
HOST = "127.0.0.1"
SERVER_NAME = "localhost"

#: The sender stops writing while more than this many bytes of its stream are unsent.
SEND_LIMIT = 1 << 20

#: aioquic's default (and the smallest allowed) UDP payload size.
DEFAULT_MAX_DATAGRAM_SIZE = 1200

#: Rough msgs/s of this relay on a 2-core box; only used to size a run.
TARGET_RATE: dict[int, float] = {64: 50_000.0, 1024: 8_000.0, 65536: 150.0}
MIN_COUNT = 200

PING_SIZE = 64
PING_WARMUP = 20

#: Generous bound on any single wait in the parent (process start, a whole run, ...).
STARTUP_TIMEOUT_S = 20.0

Mode = Literal["throughput", "ping"]


class Net(NamedTuple):
    """Transport settings every endpoint of a run uses."""

    max_datagram_size: int = DEFAULT_MAX_DATAGRAM_SIZE
    #: SO_RCVBUF/SO_SNDBUF in bytes for every UDP socket; 0 keeps the OS default.
    socket_buffer: int = 0


def set_socket_buffers(transport: Any, size: int) -> None:
    """Enlarge a UDP socket's buffers as conec_actors does: the ``*FORCE`` options
    where permitted (root), which ignore ``net.core.[rw]mem_max``, else the plain ones."""
    if size <= 0 or transport is None:
        return
    sock = transport.get_extra_info("socket")
    for force, plain in (
        ("SO_RCVBUFFORCE", socket.SO_RCVBUF),
        ("SO_SNDBUFFORCE", socket.SO_SNDBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, force), size)
        except (AttributeError, OSError):
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


#: Control queue, children -> parent: ``(kind, payload)`` tuples.
Ctl: TypeAlias = "multiprocessing.queues.Queue[tuple[str, Any]]"
Stop = multiprocessing.synchronize.Event

_MP = multiprocessing.get_context("spawn")


# --------------------------------------------------------------------------- relay


_PEER: dict[bytes, bytes] = {b"A": b"B", b"B": b"A"}  # role -> role it talks to


@dataclass
class _Endpoint:
    """One announced client: its connection protocol and the stream it opened."""

    protocol: RelayProtocol
    stream_id: int


@dataclass
class RelayState:
    """Who is connected as A and B, plus bytes waiting for a peer that is not there yet."""

    endpoints: dict[bytes, _Endpoint] = field(default_factory=dict)
    pending: dict[bytes, list[bytes]] = field(default_factory=dict)

    def register(self, role: bytes, endpoint: _Endpoint) -> None:
        """Record *endpoint* as *role* and hand it whatever was sent to it meanwhile."""
        if role not in _PEER:
            raise ValueError(f"unknown role {role!r}")
        self.endpoints[role] = endpoint
        for data in self.pending.pop(role, []):
            endpoint.protocol.send_soon(endpoint.stream_id, data)

    def forward(self, from_role: bytes, data: bytes) -> None:
        """Send *data* coming from *from_role* to the other side (or queue it)."""
        to_role = _PEER[from_role]
        peer = self.endpoints.get(to_role)
        if peer is None:
            self.pending.setdefault(to_role, []).append(data)
        else:
            peer.protocol.send_soon(peer.stream_id, data)

    def drop(self, protocol: RelayProtocol) -> None:
        """Forget every role held by *protocol* (its connection is gone)."""
        for role, endpoint in list(self.endpoints.items()):
            if endpoint.protocol is protocol:
                del self.endpoints[role]


class FlushSoonProtocol(QuicConnectionProtocol):
    """A connection that can queue stream data and flush itself once per loop turn."""

    _flush_scheduled = False

    def send_soon(self, stream_id: int, data: bytes) -> None:
        """Queue *data* on *stream_id* and flush this connection on the next loop turn.

        We are usually running inside the *other* connection's datagram callback, which
        only transmits for that other connection; hence the explicit (coalesced) flush.
        """
        self._quic.send_stream_data(stream_id, data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.transmit()


class RelayProtocol(FlushSoonProtocol):
    """Relay side of one client connection: parse the role line, then copy bytes over."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        state: RelayState,
    ) -> None:
        super().__init__(quic, stream_handler)
        self._state = state
        self._role: bytes | None = None
        self._line = bytearray()

    def quic_event_received(self, event: QuicEvent) -> None:
        """Dispatch stream data; forget this client when its connection ends."""
        if isinstance(event, StreamDataReceived):
            self._on_stream_data(event.stream_id, event.data)
        elif isinstance(event, ConnectionTerminated):
            self._state.drop(self)

    def _on_stream_data(self, stream_id: int, data: bytes) -> None:
        if self._role is None:
            self._line += data
            newline = self._line.find(b"\n")
            if newline < 0:
                if len(self._line) > 16:
                    self.close(reason_phrase="no role line")
                return
            role = bytes(self._line[:newline])
            data = bytes(self._line[newline + 1 :])
            self._line.clear()
            self._role = role
            self._state.register(role, _Endpoint(self, stream_id))
            if not data:
                return
        self._state.forward(self._role, data)


def server_config(cert_pem: bytes, key_pem: bytes, net: Net) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], max_datagram_size=net.max_datagram_size
    )
    config.certificate = x509.load_pem_x509_certificate(cert_pem)
    config.private_key = load_pem_private_key(key_pem, password=None)
    return config


async def start_server(
    cert_pem: bytes, key_pem: bytes, net: Net, create_protocol: Callable[..., Any]
) -> tuple[QuicServer, int]:
    """``serve`` on :data:`HOST`, port 0, with *net*'s settings; the server and its port."""
    server = await serve(
        HOST,
        0,
        configuration=server_config(cert_pem, key_pem, net),
        create_protocol=create_protocol,
    )
    # aioquic has no public accessor for the bound address (aioquic is pinned).
    transport = server._transport
    assert transport is not None
    set_socket_buffers(transport, net.socket_buffer)
    port: int = transport.get_extra_info("sockname")[1]
    return server, port


async def _relay_main(cert_pem: bytes, key_pem: bytes, net: Net, ctl: Ctl, stop: Stop) -> None:
    state = RelayState()
    server, port = await start_server(
        cert_pem, key_pem, net, functools.partial(RelayProtocol, state=state)
    )
    try:
        ctl.put(("port", port))
        await _wait_stop(stop)
    finally:
        server.close()


# --------------------------------------------------------------------------- clients


class ClientProtocol(QuicConnectionProtocol):
    """Client connection that hands stream data to a callback and signals progress."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self.on_data: Callable[[bytes], None] = lambda data: None
        self._progress = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        """Pass every stream chunk to :attr:`on_data`."""
        if isinstance(event, StreamDataReceived):
            self.on_data(event.data)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """Process the datagram as usual, then wake anyone waiting for send progress."""
        super().datagram_received(data, addr)
        self._progress.set()

    def open_stream(self, hello: bytes) -> int:
        """Open a bidirectional stream, send *hello* on it and return its id."""
        stream_id: int = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(stream_id, hello)
        self.transmit()
        return stream_id

    def send(self, stream_id: int, data: bytes) -> None:
        """``send_stream_data`` + ``transmit``."""
        self._quic.send_stream_data(stream_id, data)
        self.transmit()

    def unsent(self, stream_id: int) -> int:
        """Bytes written to *stream_id* but never put on the wire yet (aioquic internals)."""
        sender = self._quic._streams[stream_id].sender
        return int(sender._buffer_stop - sender.highest_offset)

    async def wait_progress(self, timeout: float = 0.01) -> None:
        """Wait for the next received datagram (ACKs free the send window), or *timeout*."""
        self._progress.clear()
        try:
            await asyncio.wait_for(self._progress.wait(), timeout)
        except TimeoutError:
            pass


def client_config(cert_pem: bytes, net: Net) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=SERVER_NAME,
        max_datagram_size=net.max_datagram_size,
    )
    config.load_verify_locations(cadata=cert_pem)
    return config


@contextlib.asynccontextmanager
async def open_client(port: int, cert_pem: bytes, net: Net) -> AsyncIterator[ClientProtocol]:
    """A :class:`ClientProtocol` connection to the server on *port*, with *net*'s settings."""
    async with connect(
        HOST, port, configuration=client_config(cert_pem, net), create_protocol=ClientProtocol
    ) as proto:
        assert isinstance(proto, ClientProtocol)
        set_socket_buffers(proto._transport, net.socket_buffer)
        yield proto


async def _receiver_main(
    port: int, cert_pem: bytes, net: Net, mode: Mode, count: int, ctl: Ctl, stop: Stop
) -> None:
    async with open_client(port, cert_pem, net) as proto:
        stream_id = proto.open_stream(b"B\n")

        if mode == "ping":
            # Echo raw bytes: frames survive because the byte stream is preserved.
            proto.on_data = lambda data: proto._quic.send_stream_data(stream_id, data)
            ctl.put(("ready", "B"))
            await _wait_stop(stop)
            return

        counter = FrameCounter()
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        t_first = 0.0

        def on_data(data: bytes) -> None:
            nonlocal t_first
            if counter.feed(data):
                now = time.perf_counter()
                if not t_first:
                    t_first = now
                if counter.count >= count and not done.done():
                    done.set_result(now - t_first)

        proto.on_data = on_data
        ctl.put(("ready", "B"))
        elapsed = await done
        ctl.put(("result", {"seconds": elapsed, "payload_bytes": counter.payload_bytes}))
        await _wait_stop(stop)


async def _sender_main(
    port: int,
    cert_pem: bytes,
    net: Net,
    mode: Mode,
    size: int,
    count: int,
    ctl: Ctl,
    stop: Stop,
) -> None:
    async with open_client(port, cert_pem, net) as proto:
        stream_id = proto.open_stream(b"A\n")
        message = frame(bytes(size))

        if mode == "ping":
            ctl.put(("ping", await ping(proto, stream_id, message, count)))
            await _wait_stop(stop)
            return

        for _ in range(count):
            while proto.unsent(stream_id) > SEND_LIMIT:
                await proto.wait_progress()
            proto.send(stream_id, message)
        # Keep the connection up until B has everything and the parent says stop.
        await _wait_stop(stop)


async def ping(proto: ClientProtocol, stream_id: int, message: bytes, n: int) -> list[float]:
    """Send *message* and wait for its echo, *n* times (after a warm-up); RTTs in µs."""
    counter = FrameCounter()
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] | None = None

    def on_data(data: bytes) -> None:
        if counter.feed(data) and waiter is not None and not waiter.done():
            waiter.set_result(None)

    proto.on_data = on_data
    rtts: list[float] = []
    for i in range(PING_WARMUP + n):
        waiter = loop.create_future()
        t0 = time.perf_counter_ns()
        proto.send(stream_id, message)
        await asyncio.wait_for(waiter, STARTUP_TIMEOUT_S)
        if i >= PING_WARMUP:
            rtts.append((time.perf_counter_ns() - t0) / 1000)
    return rtts


async def _wait_stop(stop: Stop) -> None:
    while not stop.is_set():
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- processes


def _child(name: str, ctl: Ctl, main: Callable[..., Any], *args: Any) -> None:
    """Process entry point: run *main* under asyncio, report any failure on *ctl*."""
    try:
        asyncio.run(main(*args))
    except BaseException:
        # The parent re-raises this; exit non-zero without printing it a second time.
        ctl.put(("error", f"{name}: {traceback.format_exc()}"))
        raise SystemExit(1) from None


def _relay_proc(cert_pem: bytes, key_pem: bytes, net: Net, ctl: Ctl, stop: Stop) -> None:
    _child("relay", ctl, _relay_main, cert_pem, key_pem, net, ctl, stop)


def _receiver_proc(
    port: int, cert_pem: bytes, net: Net, mode: Mode, count: int, ctl: Ctl, stop: Stop
) -> None:
    _child("receiver", ctl, _receiver_main, port, cert_pem, net, mode, count, ctl, stop)


def _sender_proc(
    port: int,
    cert_pem: bytes,
    net: Net,
    mode: Mode,
    size: int,
    count: int,
    ctl: Ctl,
    stop: Stop,
) -> None:
    _child("sender", ctl, _sender_main, port, cert_pem, net, mode, size, count, ctl, stop)


class _Run:
    """The three processes of one measurement; always torn down by :meth:`close`."""

    def __init__(self, net: Net | None = None) -> None:
        self.net = net or Net()
        self.ctl: Ctl = _MP.Queue()
        self.stop: Stop = _MP.Event()
        self.procs: list[multiprocessing.context.SpawnProcess] = []
        self.cert_pem, self.key_pem = make_self_signed(SERVER_NAME)

    def start(self, target: Callable[..., None], *args: Any) -> None:
        proc = _MP.Process(target=target, args=(*args, self.ctl, self.stop), daemon=True)
        proc.start()
        self.procs.append(proc)

    def expect(self, kind: str, timeout: float = STARTUP_TIMEOUT_S) -> Any:
        """Return the payload of the next *kind* message; raise on error, death or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got_kind, payload = self.ctl.get(timeout=0.1)
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"{IMPL}: child exited with {dead[0].exitcode}") from None
                continue
            if got_kind == "error":
                raise RuntimeError(f"{IMPL} child failed:\n{payload}")
            if got_kind != kind:
                raise RuntimeError(f"{IMPL}: expected {kind!r}, got {got_kind!r}")
            return payload
        raise TimeoutError(f"{IMPL}: no {kind!r} within {timeout:.0f} s")

    def launch(self, mode: Mode, size: int, count: int) -> None:
        """Start relay, then receiver B, then sender A (each waits for the previous)."""
        self.start(_relay_proc, self.cert_pem, self.key_pem, self.net)
        port = self.expect("port")
        self.start(_receiver_proc, port, self.cert_pem, self.net, mode, count)
        self.expect("ready")
        self.start(_sender_proc, port, self.cert_pem, self.net, mode, size, count)

    def close(self) -> None:
        """Ask every child to stop, then join; terminate/kill stragglers."""
        self.stop.set()
        for proc in self.procs:
            proc.join(timeout=3)
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.ctl.close()
        self.ctl.join_thread()


def _count_for(size: int, duration_s: float) -> int:
    rate = TARGET_RATE.get(size) or 5e6 / max(size, 1)  # ~5 MB/s for unlisted sizes
    return max(MIN_COUNT, int(rate * duration_s))


def run_naive_relay(
    size: int,
    duration_s: float = 2.0,
    *,
    count: int | None = None,
    max_datagram_size: int = DEFAULT_MAX_DATAGRAM_SIZE,
    socket_buffer: int = 0,
) -> dict[str, Any]:
    """Stream ``count`` messages of *size* bytes A -> relay -> B; return throughput.

    Unless given, ``count`` is sized from :data:`TARGET_RATE` so the run lasts roughly
    *duration_s* (at the default *max_datagram_size*, which every endpoint uses).
    ``seconds`` is measured at B from the first to the last complete message.
    *socket_buffer* > 0 sets SO_RCVBUF/SO_SNDBUF on every UDP socket (0: OS default).
    """
    if size < 0 or duration_s <= 0:
        raise ValueError("size must be >= 0 and duration_s > 0")
    if count is None:
        count = _count_for(size, duration_s)
    elif count < 2:
        raise ValueError("count must be at least 2")
    run = _Run(Net(max_datagram_size, socket_buffer))
    try:
        run.launch("throughput", size, count)
        result = run.expect("result", timeout=STARTUP_TIMEOUT_S + 10 * duration_s)
    finally:
        run.close()
    seconds = float(result["seconds"])
    if result["payload_bytes"] != size * count:
        raise RuntimeError(f"{IMPL}: B got {result['payload_bytes']} payload bytes")
    return {
        "impl": IMPL,
        "size": size,
        "msgs": count,
        "seconds": seconds,
        **rates(size, count, seconds),
    }


def run_naive_relay_ping(
    n: int = 200,
    *,
    max_datagram_size: int = DEFAULT_MAX_DATAGRAM_SIZE,
    socket_buffer: int = 0,
) -> dict[str, Any]:
    """Round trips of one 64-byte message A -> relay -> B -> relay -> A, one at a time."""
    run = _Run(Net(max_datagram_size, socket_buffer))
    try:
        run.launch("ping", PING_SIZE, n)
        rtts: list[float] = run.expect("ping")
    finally:
        run.close()
    return ping_result(IMPL, PING_SIZE, rtts)


def main() -> None:
    """Run every size once plus the ping; one JSON line per result."""
    for size in SIZES:
        emit(run_naive_relay(size))
    emit(run_naive_relay_ping())


if __name__ == "__main__":
    main()
