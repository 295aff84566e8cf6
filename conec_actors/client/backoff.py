"""A client's hold on its Coordinator, without I/O: whether it is connected,
what `Client.events()` says, and how long to wait before dialling again.

`Presence` is the state machine (`CONNECTED` -> `DISCONNECTED` ->
`CONNECTED` ... -> `CLOSED`), moved by `transitions.move`; `Backoff` gives
the delays between reconnect attempts (0.1 s doubling to 5 s, each drawn
from the upper half of its step so that clients cut off together do not
come back together). Time and randomness come in as arguments. The asyncio
driver is `client.reconnect.Reconnector`.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from typing import NamedTuple

from ..errors import CertificateError, ConecError, DuplicateId, InvalidId
from ..transitions import move

#: The first delay before dialling again, and the largest.
FIRST_DELAY = 0.1
MAX_DELAY = 5.0
#: A delay is drawn from [(1 - JITTER) * step, step].
JITTER = 0.5
#: How long a mailbox route that had opened waits for its peer to come back
#: (it may have lost the same Coordinator and be reconnecting too: at most
#: `MAX_DELAY` plus a handshake after it is back) before the route is dead.
PEER_GRACE = 2 * MAX_DELAY


class Disconnected(NamedTuple):
    """`Client.events()`: the client lost its Coordinator (`reason` says
    how). With `ClientConfig.reconnect` it is reconnecting; without, this is
    the last event."""

    reason: str


class Reconnected(NamedTuple):
    """`Client.events()`: the client is connected to its Coordinator again
    (same id, same certificate); its groups, follows and watches are being
    restored."""


ClientEvent = Disconnected | Reconnected


def permanent(err: ConecError) -> bool:
    """Whether dialling again cannot help after `err`: the id is held by
    another certificate (or this session was replaced by a newer one with
    the same certificate), or the id or certificate is refused."""
    return isinstance(err, DuplicateId | CertificateError | InvalidId)


class Backoff:
    """Delays between reconnect attempts: exponential from `first` to `cap`,
    with jitter (`random()` in [0, 1) draws within the step)."""

    __slots__ = ("_random", "attempts", "cap", "first", "jitter")

    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY,
                 jitter: float = JITTER, random: Callable[[], float] = _random.random
                 ) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"need 0 < first <= cap, got {first} and {cap}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter is a fraction in [0, 1], got {jitter}")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._random = random
        #: Attempts since the last `reset`.
        self.attempts = 0

    def step(self) -> float:
        """The step the next delay is drawn in: `first` * 2**attempts, capped."""
        return min(self.cap, self.first * 2.0 ** min(self.attempts, 64))

    def next_delay(self) -> float:
        """The delay before the next attempt (counts the attempt)."""
        step = self.step()
        self.attempts += 1
        return step * (1.0 - self.jitter * self._random())

    def reset(self) -> None:
        """Connected again: the next outage starts from `first`."""
        self.attempts = 0


class LinkState(enum.Enum):
    #: Connected to the Coordinator (welcomed).
    CONNECTED = enum.auto()
    #: Lost it; reconnecting.
    DISCONNECTED = enum.auto()
    #: Closed, or lost it for good: nothing more happens.
    CLOSED = enum.auto()


class LinkEvent(enum.Enum):
    LOST = enum.auto()         #: the connection to the Coordinator ended
    RECONNECTED = enum.auto()  #: a new connection was welcomed
    GIVE_UP = enum.auto()      #: a refusal dialling again cannot help (`permanent`)
    CLOSE = enum.auto()        #: the client closes


LINK_TRANSITIONS: dict[tuple[LinkState, LinkEvent], LinkState] = {
    (LinkState.CONNECTED, LinkEvent.LOST): LinkState.DISCONNECTED,
    # Lost without `reconnect`, or replaced by a newer session (`permanent`).
    (LinkState.CONNECTED, LinkEvent.GIVE_UP): LinkState.CLOSED,
    (LinkState.CONNECTED, LinkEvent.CLOSE): LinkState.CLOSED,
    (LinkState.DISCONNECTED, LinkEvent.RECONNECTED): LinkState.CONNECTED,
    (LinkState.DISCONNECTED, LinkEvent.GIVE_UP): LinkState.CLOSED,
    (LinkState.DISCONNECTED, LinkEvent.CLOSE): LinkState.CLOSED,
    (LinkState.CLOSED, LinkEvent.CLOSE): LinkState.CLOSED,
}


class Presence:
    """Whether a client is connected to its Coordinator, and the events
    that say so. Without `reconnect`, losing it closes the client."""

    __slots__ = ("reconnect", "state")

    def __init__(self, reconnect: bool) -> None:
        self.reconnect = reconnect
        self.state = LinkState.CONNECTED

    @property
    def connected(self) -> bool:
        return self.state is LinkState.CONNECTED

    def lost(self, err: ConecError) -> tuple[bool, list[ClientEvent]]:
        """The connection ended with `err`: (whether to dial again, the
        events to show). Nothing after a close; `LocalProtocolError` while
        already disconnected (only a connection that was up can end)."""
        if self.state is LinkState.CLOSED:
            return False, []
        again = self.reconnect and not permanent(err)
        self.state = move("presence", LINK_TRANSITIONS, self.state,
                          LinkEvent.LOST if again else LinkEvent.GIVE_UP)
        return again, [Disconnected(str(err))]

    def reconnected(self) -> Reconnected:
        """A new connection was welcomed."""
        self.state = move("presence", LINK_TRANSITIONS, self.state, LinkEvent.RECONNECTED)
        return Reconnected()

    def give_up(self) -> None:
        """Dialling was refused for good (`permanent`)."""
        self.state = move("presence", LINK_TRANSITIONS, self.state, LinkEvent.GIVE_UP)

    def close(self) -> None:
        """The client closes."""
        self.state = move("presence", LINK_TRANSITIONS, self.state, LinkEvent.CLOSE)
