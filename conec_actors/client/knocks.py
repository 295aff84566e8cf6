"""When a channel's target knocks toward the opener, and how far (sans-I/O).

A knock is a small datagram the target sends from its channel socket to the
opener's public address, so that the target's NAT maps that flow and lets
the opener's packets in. Two orderings decide whether a channel opens
through NATs that accept traffic on their WAN side (a bare Linux box with
`masquerade`): there, a datagram that arrives before the local side has sent
anything on that flow is taken in by the router itself, and its conntrack
entry makes the NAT give the local side's own flow another public port,
which the far NAT then refuses. So:

- the target's first knock must leave before its acceptance of the offer
  does: the opener only dials once the Coordinator relays that acceptance,
  so its first packet reaches the target's NAT after the mapping exists
  (`Knocks.accept` gives that knock; the driver sends it, then answers).
  Sending it later, on a timer, loses that race when the target's process
  is not scheduled for a few milliseconds after answering: measured 2 of
  20 channels failing with both cores busy, each NAT then holding an
  unreplied inbound entry for 30 s that every retransmission refreshes,
  so no retry on these ports can recover;
- until the opener's first packet has left, a knock must not reach the
  opener's NAT: early knocks get a TTL that crosses the target's own NAT
  and dies soon after (`EARLY_KNOCK_TTL`); once the Coordinator relays that
  the opener is dialing (`Knocks.peer_dialing`, sent after its first
  packet), knocks go all the way, the first one at once.

`Knocks` is the state machine (`IDLE` -> `EARLY` -> `FULL`, any -> `STOPPED`)
moved by `transitions.move`; time comes in as `now`, the next knock's time
goes out as `deadline`. The asyncio driver is `client.channels.Channels`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..transitions import move

#: The knock datagram: small, and nothing a QUIC endpoint acts upon.
KNOCK = b"conec-actors knock"
#: Early knocks' TTL: one hop through the target's NAT, then one more (the
#: NAT's upstream router), where they die.
EARLY_KNOCK_TTL = 2
#: A phase's first knock goes at once; these are the delays after it before
#: each further one. Early knocks keep the target's mapping fresh while the
#: opener is told and dials; full ones cover the channel's 5 s bound.
EARLY_KNOCKS = (0.05,) * 10 + (0.25,) * 18
FULL_KNOCKS = (0.05,) * 20 + (0.25,) * 16


@dataclass(frozen=True, slots=True)
class Knock:
    """Send `KNOCK` toward the opener now, with IP TTL `ttl` (None: the
    system's)."""

    ttl: int | None


class KnockState(enum.Enum):
    #: Created, the offer not yet accepted.
    IDLE = enum.auto()
    #: The offer is accepted: short-TTL knocks.
    EARLY = enum.auto()
    #: The opener is dialing: knocks go all the way.
    FULL = enum.auto()
    #: The channel opened or ended (or the schedule ran out): no more knocks.
    STOPPED = enum.auto()


class KnockEvent(enum.Enum):
    ACCEPT = enum.auto()        #: we accept the offer (the driver answers next)
    PEER_DIALING = enum.auto()  #: the Coordinator relays that the opener dials
    STOP = enum.auto()          #: the channel opened or ended


KNOCK_TRANSITIONS: dict[tuple[KnockState, KnockEvent], KnockState] = {
    (KnockState.IDLE, KnockEvent.ACCEPT): KnockState.EARLY,
    (KnockState.EARLY, KnockEvent.PEER_DIALING): KnockState.FULL,
    # The Coordinator relays one notice per attempt; one more changes nothing.
    (KnockState.FULL, KnockEvent.PEER_DIALING): KnockState.FULL,
    # A notice after the channel opened, ended or gave up knocking.
    (KnockState.STOPPED, KnockEvent.PEER_DIALING): KnockState.STOPPED,
    (KnockState.IDLE, KnockEvent.STOP): KnockState.STOPPED,
    (KnockState.EARLY, KnockEvent.STOP): KnockState.STOPPED,
    (KnockState.FULL, KnockEvent.STOP): KnockState.STOPPED,
    (KnockState.STOPPED, KnockEvent.STOP): KnockState.STOPPED,
}


class Knocks:
    """The knocks of one introduction at its target."""

    __slots__ = ("_at", "_delays", "_next", "_ttl", "sent", "state")

    def __init__(self) -> None:
        self.state = KnockState.IDLE
        self._delays: tuple[float, ...] = ()
        self._next = 0  # index in `_delays` of the delay before the next knock
        self._at = 0.0  # when the next knock is due
        self._ttl: int | None = None
        #: Knocks given out so far (both phases).
        self.sent = 0

    @property
    def deadline(self) -> float | None:
        """When `due` has the next knock (None: none is coming; the driver
        waits for `peer_dialing` or stops)."""
        if self.state not in (KnockState.EARLY, KnockState.FULL):
            return None
        return self._at if self._next < len(self._delays) else None

    def accept(self, now: float) -> Knock:
        """We accept the offer: the first, short-TTL knock, to send before
        the acceptance. `LocalProtocolError` unless `IDLE`."""
        self.state = move("knocks", KNOCK_TRANSITIONS, self.state, KnockEvent.ACCEPT)
        return self._phase(EARLY_KNOCKS, EARLY_KNOCK_TTL, now)

    def peer_dialing(self, now: float) -> Knock | None:
        """The opener's first packets are out: a full-TTL knock to send at
        once, and full-TTL knocks from now on (None if already so, or
        stopped). A notice before we accepted is the Coordinator breaking
        the protocol: `RemoteProtocolError`."""
        before = self.state
        self.state = move("knocks", KNOCK_TRANSITIONS, self.state, KnockEvent.PEER_DIALING,
                          by_peer=True)
        if before is not KnockState.EARLY:
            return None
        return self._phase(FULL_KNOCKS, None, now)

    def due(self, now: float) -> Knock | None:
        """The knock to send at `now`, if one is due (at most one: a driver
        that woke late sends one knock, not a burst)."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return None
        return self._take(now)

    def stop(self) -> None:
        """The channel opened or ended: no more knocks."""
        self.state = move("knocks", KNOCK_TRANSITIONS, self.state, KnockEvent.STOP)

    def _phase(self, delays: tuple[float, ...], ttl: int | None, now: float) -> Knock:
        self._delays = delays
        self._ttl = ttl
        self._next = -1
        return self._take(now)

    def _take(self, now: float) -> Knock:
        # `now`, not the deadline: a driver that woke late keeps the spacing.
        self._next += 1
        if self._next < len(self._delays):
            self._at = now + self._delays[self._next]
        self.sent += 1
        return Knock(self._ttl)
