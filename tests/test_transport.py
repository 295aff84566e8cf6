"""The datagram endpoint's reading policy, on a real loopback socket.

Light traffic is read one datagram per wake-up (no read of an empty socket);
a burst is still read completely, and in batches once the endpoint notices
it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from conec_actors.transport import DRAIN_EVERY, READ_BATCH, Addr, Endpoint


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
