"""Rules of a UDP endpoint that need no socket: the forms of a peer's
address, the admission of new connections (which datagrams may start
one, version negotiation, and when to demand a Retry, i.e. address
validation, under a flood of half-open handshakes), and when to answer a
datagram for a connection it does not hold with a stateless reset."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from typing import Any, Literal, NamedTuple

from ._quic import (
    CONNECTION_ID_LENGTH,
    RESET_MIN_SIZE,
    SMALLEST_MAX_DATAGRAM_SIZE,
    PacketInfo,
    RetryGate,
    reset_token,
    version_negotiation,
)

Addr = tuple[Any, ...]
"""A socket address as the socket module gives it: (host, port) for IPv4,
(host, port, flowinfo, scope_id) for IPv6."""
RetryMode = bool | Literal["auto"]
"""When a server demands a Retry: always (True), never (False), or under load."""

#: Half-open handshakes above which "auto" demands a Retry, and below which
#: it stops again.
RETRY_ON = 256
RETRY_OFF = 128
#: Stateless resets an endpoint sends per second at most, and in one burst:
#: a peer spraying datagrams for unknown ids gets no more answers than this,
#: for no more HMACs (a reset is always shorter than what triggered it).
RESET_RATE = 100.0
RESET_BURST = 100
#: The longest reset sent. RFC 9000 10.3 asks for one byte less than a
#: trigger of up to 43 bytes; a longer trigger needs no longer answer.
RESET_MAX_SIZE = 43


def unmap_address(addr: Addr) -> tuple[str, int]:
    """(host, port) with an IPv4-mapped IPv6 host turned back into IPv4."""
    host = str(addr[0])
    if host.startswith("::ffff:"):
        with contextlib.suppress(ValueError):
            return (str(ipaddress.IPv6Address(host).ipv4_mapped or host), int(addr[1]))
    return (host, int(addr[1]))


def normalize_address(addr: Addr, ipv6_socket: bool) -> Addr:
    """`addr` as a socket of that family reports peers: on an IPv6 (dual
    stack) socket a 4-tuple with IPv4 hosts mapped (``::ffff:a.b.c.d``), else
    (host, port)."""
    host, port = str(addr[0]), int(addr[1])
    if ipv6_socket:
        if ipaddress.ip_address(host).version == 4:
            return (f"::ffff:{host}", port, 0, 0)
        return (host, port, 0, 0)
    return (host, port)


class RetryDemand:
    """Whether a server demands a Retry of the next new connection, given its
    mode and how many handshakes are half open. In "auto" mode the demand
    switches on above `on` and off again below `off` (hysteresis, so it does
    not flap around one threshold)."""

    __slots__ = ("_demanding", "off", "on")

    def __init__(self, on: int = RETRY_ON, off: int = RETRY_OFF) -> None:
        self.on = on
        self.off = off
        self._demanding = False

    def needed(self, mode: RetryMode, half_open: int) -> bool:
        """True if a new connection must first answer a Retry."""
        if mode is True:
            return True
        if mode != "auto":
            return False
        if half_open > self.on:
            self._demanding = True
        elif half_open < self.off:
            self._demanding = False
        return self._demanding


class Reply(NamedTuple):
    """Answer the datagram's sender with `data`, keeping no state."""

    data: bytes
    #: The answer is a Retry (counted by the endpoint).
    is_retry: bool = False


class Accept(NamedTuple):
    """Start a server connection for the datagram."""

    #: The destination connection id of the client's first Initial.
    original_dcid: bytes
    #: When the client came back from a Retry: the Retry's source id.
    retry_scid: bytes | None


class Admission:
    """What a server endpoint does with a datagram that belongs to no
    connection it knows: ignore it (None), answer without keeping state
    (`Reply`: version negotiation, a Retry, or a close for a token that is not
    valid), or start a connection (`Accept`). Only a full-size Initial may
    start one, so knocks and junk cost no state."""

    __slots__ = ("_demand", "_gate")

    def __init__(self, gate: RetryGate | None = None) -> None:
        self._gate = gate or RetryGate()
        self._demand = RetryDemand()

    def consider(self, pkt: PacketInfo, size: int, addr: Addr, now: float, *,
                 versions: list[int], retry: RetryMode, half_open: int
                 ) -> Reply | Accept | None:
        """The verdict on a datagram of `size` bytes whose first header is
        `pkt`, from `addr`, for a server speaking `versions` in Retry mode
        `retry` with `half_open` handshakes under way."""
        if pkt.is_version_negotiation:
            return None
        if pkt.version is not None and pkt.version not in versions:
            if size >= SMALLEST_MAX_DATAGRAM_SIZE:
                return Reply(version_negotiation(pkt, versions))
            return None
        if not pkt.is_initial or size < SMALLEST_MAX_DATAGRAM_SIZE:
            return None
        if pkt.token:
            # Always honour a token that comes back, whatever the current mode:
            # a client that met a Retry must not meet a server ignoring it.
            odcid = self._gate.validate(pkt, addr, now)
            if odcid is None:
                return Reply(self._gate.invalid_token_close(pkt))
            return Accept(odcid, pkt.dcid)
        if self._demand.needed(retry, half_open):
            return Reply(self._gate.retry_packet(pkt, addr, now), is_retry=True)
        return Accept(pkt.dcid, None)


class StatelessResets:
    """When a server endpoint answers a short-header datagram whose
    connection id routes to no connection it holds (late packets of a
    connection it lost, say in a shard that was restarted) with a stateless
    reset (RFC 9000 10.3), and the reset's bytes: the fixed bits, random
    bytes, then the id's token under `key` (`reset_token`), which the peer
    holds if that id came from a connection of a process with the same key.

    Only a datagram of more than RESET_MIN_SIZE bytes gets an answer, and the
    answer is shorter than it (10.3.3: two endpoints cannot loop resets, and
    none is an amplifier); at most `rate` a second, `burst` at once.
    """

    __slots__ = ("_at", "_budget", "burst", "key", "limited", "rate", "sent")

    def __init__(self, key: bytes, rate: float = RESET_RATE, burst: int = RESET_BURST) -> None:
        if len(key) < 16:
            raise ValueError("a stateless reset key needs at least 16 bytes")
        self.key = key
        self.rate = rate
        self.burst = burst
        self._budget = float(burst)  # the token bucket...
        self._at = float("-inf")  # ...last filled then
        #: resets answered; datagrams that would have had one but for the rate
        self.sent = 0
        self.limited = 0

    @staticmethod
    def new_key() -> bytes:
        """A key: one per Coordinator start, shared by its shards."""
        return os.urandom(32)

    def consider(self, data: bytes, now: float) -> bytes | None:
        """The stateless reset that answers datagram `data` (whose id, if it
        has a short header, names no connection here) at time `now`, or
        None: not a short header, too short, or over the rate."""
        size = len(data)
        if size <= RESET_MIN_SIZE or data[0] & 0xC0 != 0x40:
            return None  # a long header, no fixed bit, or too short to undercut
        if now > self._at:
            self._budget = min(float(self.burst), self._budget + (now - self._at) * self.rate)
            self._at = now
        if self._budget < 1.0:
            self.limited += 1
            return None
        self._budget -= 1.0
        self.sent += 1
        token = reset_token(self.key, data[1:1 + CONNECTION_ID_LENGTH])
        head = os.urandom(min(size - 1, RESET_MAX_SIZE) - len(token))
        return bytes((0x40 | head[0] & 0x3F,)) + head[1:] + token
