"""The packet numbers a connection has received, for dropping duplicates,
in a few dozen bytes.

aioquic keeps them per packet space in a `set` it prunes only once it holds
twice its window (256 numbers): an idle client's connection, receiving a
keepalive every few seconds, grows that set (and its table) for ~35 minutes
to ~16 KiB, which 1,000 idle clients' Coordinator sees as a steady RSS rise
(`bench.soak`). This keeps the same window (`SIZE` numbers below the
largest received; anything older counts as received) as one int bitmask.
"""

from __future__ import annotations

#: Packet numbers below the largest received that are told apart (aioquic's
#: window: 2 x MAX_ACK_RANGES); anything older counts as a duplicate.
SIZE = 128


class PacketWindow:
    """Drop-in for aioquic's `QuicPacketNumberWindow` (`add`, `in`)."""

    __slots__ = ("_bits", "_lower")

    def __init__(self) -> None:
        self._lower = 0  # numbers below it count as received
        self._bits = 0  # bit i: number _lower + i was received

    def add(self, packet_number: int) -> None:
        offset = packet_number - self._lower
        if offset < 0:
            return
        if offset >= SIZE:
            # Slide so that this number is the window's upper bound.
            shift = offset - SIZE + 1
            self._bits >>= shift
            self._lower += shift
            offset = SIZE - 1
        self._bits |= 1 << offset

    def __contains__(self, packet_number: int) -> bool:
        offset = packet_number - self._lower
        return offset < 0 or (offset < SIZE and (self._bits >> offset) & 1 == 1)
