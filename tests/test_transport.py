"""The datagram endpoint's reading policy, on a real loopback socket.

Light traffic is read one datagram per wake-up (no read of an empty socket);
a burst is still read completely, and in batches once the endpoint notices
it. A write no stream can carry is dropped; a handshake that does not
complete is dropped after its bound."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from conec_actors import transport
from conec_actors.streams import STREAM_WINDOW
from conec_actors.tlsconf import quic_configuration
from conec_actors.transport import (
    DRAIN_EVERY,
    READ_BATCH,
    Addr,
    Conn,
    Endpoint,
    ServerSettings,
)

from .conftest import coord_cert


class Recorder(Endpoint):
    """An endpoint that records which wake-up delivered each datagram."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.wakeups = 0
        self.got: list[tuple[int, bytes]] = []

    def _on_readable(self) -> None:
        self.wakeups += 1
        super()._on_readable()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.got.append((self.wakeups, data))


async def _recorder() -> tuple[Recorder, socket.socket]:
    ep = Recorder(_bound())
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.connect(ep.local_address)
    return ep, out


class CountingSocket(socket.socket):
    """Counts reads that found the socket empty."""

    empty_reads = 0

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Addr]:
        try:
            return super().recvfrom(bufsize, flags)
        except BlockingIOError:
            self.empty_reads += 1
            raise


def _bound() -> CountingSocket:
    sock = CountingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for the burst
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


async def test_a_burst_is_read_completely_and_then_in_batches() -> None:
    ep, out = await _recorder()
    try:
        n = 200
        for i in range(n):  # all queued before the loop looks at the socket
            out.send(i.to_bytes(2, "big"))
        await _until(lambda: len(ep.got) == n)
        assert [int.from_bytes(d, "big") for _, d in ep.got] == list(range(n))
        per_wakeup: dict[int, int] = {}
        for w, _ in ep.got:
            per_wakeup[w] = per_wakeup.get(w, 0) + 1
        # One at a time until the first drain notices the burst, then batches.
        assert max(per_wakeup.values()) == READ_BATCH
        assert ep.wakeups <= DRAIN_EVERY + n // READ_BATCH + 1
    finally:
        out.close()
        ep.close()


async def test_light_traffic_is_read_one_datagram_per_wakeup() -> None:
    ep, out = await _recorder()
    try:
        for i in range(1, 3 * DRAIN_EVERY + 1):
            out.send(b"x")
            await _until(lambda want=i: len(ep.got) == want)  # type: ignore[misc]
        assert [w for w, _ in ep.got] == list(range(1, 3 * DRAIN_EVERY + 1))
        # Only the periodic drains looked at an empty socket.
        assert isinstance(ep.sock, CountingSocket)
        assert ep.sock.empty_reads == 3
    finally:
        out.close()
        ep.close()


# -- connections ---------------------------------------------------------------------


class _Handler:
    """Records what a connection tells its owner."""

    def __init__(self) -> None:
        self.data: dict[int, bytearray] = {}
        self.ended: tuple[int, str] | None = None

    def handshake_completed(self, conn: Conn) -> None: ...

    def stream_data(self, conn: Conn, stream_id: int, data: bytes, fin: bool) -> None:
        self.data.setdefault(stream_id, bytearray()).extend(data)

    def stream_reset(self, conn: Conn, stream_id: int, code: int) -> None: ...
    def stop_sending(self, conn: Conn, stream_id: int, code: int) -> None: ...

    def terminated(self, conn: Conn, code: int, reason: str) -> None:
        self.ended = (code, reason)


def _configs() -> tuple[QuicConfiguration, QuicConfiguration]:
    cert = coord_cert()
    common: dict[str, Any] = dict(cert_pem=cert.cert_pem, key_pem=cert.key_pem,
                                  idle_timeout=30.0, max_datagram_size=1200,
                                  stream_window=STREAM_WINDOW)
    return (quic_configuration(is_client=False, **common),
            quic_configuration(is_client=True, server_name="localhost",
                               cadata=cert.cert_pem, **common))


async def test_a_write_no_stream_can_carry_is_dropped_not_raised() -> None:
    server_cfg, client_cfg = _configs()
    accepted = _Handler()
    server = await Endpoint.bind("127.0.0.1", 0, ServerSettings(
        server_cfg, STREAM_WINDOW, accept=lambda conn: accepted,
        request_client_certificate=False))
    client = await Endpoint.bind("127.0.0.1", 0)
    try:
        mine = _Handler()
        conn = client.connect(server.local_address, client_cfg, mine, STREAM_WINDOW)
        await conn.wait_handshake()
        # Stream 3 would be the server's unidirectional stream: aioquic raises
        # ValueError for a write to it (as for a write to a discarded stream).
        conn.send(3, b"nowhere")
        conn.send(0, b"still here")
        await _until(lambda: bytes(accepted.data.get(0, b"")) == b"still here")
        assert not conn.closed and mine.ended is None
    finally:
        client.close()
        server.close()


async def test_a_handshake_that_does_not_complete_is_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "HANDSHAKE_TIMEOUT", 0.3)
    server_cfg, client_cfg = _configs()
    server = await Endpoint.bind("127.0.0.1", 0, ServerSettings(
        server_cfg, STREAM_WINDOW, accept=lambda conn: _Handler()))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # A real Initial whose sender never answers.
        quic = QuicConnection(configuration=client_cfg)
        now = time.monotonic()
        quic.connect(server.local_address, now=now)
        for data, addr in quic.datagrams_to_send(now=now):
            sock.sendto(data, addr)
        await _until(lambda: server.half_open == 1)
        await _until(lambda: server.half_open == 0)
        assert server.handshakes_expired == 1
        assert not server.connections
    finally:
        sock.close()
        server.close()
