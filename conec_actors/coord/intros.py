"""Channel introductions in progress at the front-end, without I/O.

A channel request the routing worker found a target for becomes an offer to
the target; the target has OFFER_TIMEOUT to answer. An accepted offer is
remembered (for as long again) until the opener says it is dialing, so the
target can be told who dials it. Clients are named by their `conn_key`;
time comes in as `now`, and the driver arms one timer for `next_deadline`.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ipc

OFFER_TIMEOUT = 5.0  # how long a channel target has to answer


@dataclass(frozen=True, slots=True)
class Offer:
    """An introduction waiting for the target's answer."""

    opener: int  # conn_key
    req: int  # the opener's request id
    target: ipc.Entry  # the target's directory entry
    deadline: float


@dataclass(frozen=True, slots=True)
class Dialing:
    """An accepted introduction waiting for the opener to dial."""

    target: int  # conn_key
    opener_id: str
    deadline: float


class Introductions:
    """Offers waiting for an answer and accepted ones waiting for the dial.

    Every deadline is `now + OFFER_TIMEOUT` with `now` never going back, so
    both tables are in deadline order: the earliest is always the first.
    """

    def __init__(self, first: int = 1, step: int = 1) -> None:
        # Offer ids first, first + step, ...: with shards, `id % n` names
        # the shard that holds the offer.
        self._next_offer = first
        self._step = step
        self.offers: dict[int, Offer] = {}
        #: (opener conn_key, request id) -> the accepted introduction
        self.dialing: dict[tuple[int, int], Dialing] = {}

    def offer(self, opener: int, req: int, target: ipc.Entry, now: float) -> int:
        """Record an offer to `target`: its id (what the target answers)."""
        offer_id = self._next_offer
        self._next_offer += self._step
        self.offers[offer_id] = Offer(opener, req, target, now + OFFER_TIMEOUT)
        return offer_id

    def answered(self, offer_id: int, target: int) -> Offer | None:
        """`target` answered `offer_id`: the offer, unless it is late or
        not that client's to answer."""
        offer = self.offers.get(offer_id)
        if offer is None or offer.target.conn_key != target:
            return None
        del self.offers[offer_id]
        return offer

    def cancel(self, offer_id: int) -> Offer | None:
        """Forget `offer_id` (its target was not there): the offer, if known."""
        return self.offers.pop(offer_id, None)

    def accepted(self, offer: Offer, opener_id: str, now: float) -> None:
        """The target accepted: remember whom to tell once the opener dials."""
        self.dialing[offer.opener, offer.req] = Dialing(offer.target.conn_key, opener_id,
                                                        now + OFFER_TIMEOUT)

    def dialed(self, opener: int, req: int) -> Dialing | None:
        """The opener says it is dialing: who to tell, if still known."""
        return self.dialing.pop((opener, req), None)

    def next_deadline(self) -> float | None:
        """When `expire` has something to do next (None: nothing waits)."""
        first = [d for d in (next(iter(self.offers.values()), None),
                             next(iter(self.dialing.values()), None)) if d is not None]
        return min((d.deadline for d in first), default=None)

    def expire(self, now: float) -> list[Offer]:
        """Forget what is due at `now`: the offers nobody answered are
        returned (their openers are told)."""
        expired = []
        while self.offers:
            offer_id, offer = next(iter(self.offers.items()))
            if offer.deadline > now:
                break
            del self.offers[offer_id]
            expired.append(offer)
        while self.dialing:
            key, dialing = next(iter(self.dialing.items()))
            if dialing.deadline > now:
                break
            del self.dialing[key]
        return expired

    def drop(self, client: int) -> list[Offer]:
        """`client` left: its own offers are forgotten, and the offers made
        to it are returned (their openers are told)."""
        gone = []
        for offer_id, offer in list(self.offers.items()):
            if offer.opener == client:
                del self.offers[offer_id]
            elif offer.target.conn_key == client:
                del self.offers[offer_id]
                gone.append(offer)
        return gone
