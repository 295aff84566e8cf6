"""Rules of a UDP endpoint that need no socket: the forms of a peer's
address, and when to demand a Retry from new connections (address
validation) under a flood of half-open handshakes."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any, Literal

Addr = tuple[Any, ...]
"""A socket address as the socket module gives it: (host, port) for IPv4,
(host, port, flowinfo, scope_id) for IPv6."""
RetryMode = bool | Literal["auto"]
"""When a server demands a Retry: always (True), never (False), or under load."""

#: Half-open handshakes above which "auto" demands a Retry, and below which
#: it stops again.
RETRY_ON = 256
RETRY_OFF = 128


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
