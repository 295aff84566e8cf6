"""Channel introductions at the front-end (coord/intros.py), without a
Coordinator: offers, answers, the dial and the deadlines."""

from __future__ import annotations

from conec_actors.coord import ipc
from conec_actors.coord.intros import OFFER_TIMEOUT, Dialing, Introductions

ALICE, BOB, CAROL = 1, 2, 3  # conn_keys


def entry(client_id: str, key: int) -> ipc.Entry:
    return ipc.Entry(client_id, "fe0", key, ("192.0.2.1", 4000 + key), b"cert")


def test_only_the_target_answers_and_only_once() -> None:
    intros = Introductions()
    o = intros.offer(ALICE, 7, entry("bob", BOB), now=10.0)
    assert intros.answered(o, CAROL) is None  # not carol's to answer
    offer = intros.answered(o, BOB)
    assert offer is not None and (offer.opener, offer.req) == (ALICE, 7)
    assert intros.answered(o, BOB) is None  # late
    assert intros.next_deadline() is None


def test_offers_get_distinct_ids() -> None:
    intros = Introductions()
    ids = {intros.offer(ALICE, r, entry("bob", BOB), now=0.0) for r in range(5)}
    assert len(ids) == 5


def test_an_accepted_offer_waits_for_the_dial() -> None:
    intros = Introductions()
    offer = intros.answered(intros.offer(ALICE, 7, entry("bob", BOB), now=0.0), BOB)
    assert offer is not None
    intros.accepted(offer, "alice", now=1.0)
    assert intros.next_deadline() == 1.0 + OFFER_TIMEOUT
    assert intros.dialed(ALICE, 8) is None
    assert intros.dialed(ALICE, 7) == Dialing(BOB, "alice", 1.0 + OFFER_TIMEOUT)
    assert intros.dialed(ALICE, 7) is None


def test_unanswered_offers_expire_in_order_and_only_when_due() -> None:
    intros = Introductions()
    first = intros.offer(ALICE, 1, entry("bob", BOB), now=0.0)
    intros.offer(ALICE, 2, entry("carol", CAROL), now=1.0)
    assert intros.next_deadline() == OFFER_TIMEOUT
    assert intros.expire(OFFER_TIMEOUT - 0.001) == []
    assert [o.req for o in intros.expire(OFFER_TIMEOUT)] == [1]
    assert intros.answered(first, BOB) is None
    assert intros.next_deadline() == 1.0 + OFFER_TIMEOUT
    assert [o.req for o in intros.expire(100.0)] == [2]
    assert intros.next_deadline() is None


def test_a_dial_that_never_comes_is_forgotten() -> None:
    intros = Introductions()
    offer = intros.answered(intros.offer(ALICE, 7, entry("bob", BOB), now=0.0), BOB)
    assert offer is not None
    intros.accepted(offer, "alice", now=0.0)
    assert intros.expire(OFFER_TIMEOUT) == []  # nobody is told
    assert intros.dialed(ALICE, 7) is None and intros.next_deadline() is None


def test_a_client_that_leaves_drops_its_offers_and_fails_those_to_it() -> None:
    intros = Introductions()
    intros.offer(ALICE, 1, entry("bob", BOB), now=0.0)  # alice's own
    to_alice = intros.offer(CAROL, 2, entry("alice", ALICE), now=0.0)
    intros.offer(CAROL, 3, entry("bob", BOB), now=0.0)  # not alice's business
    gone = intros.drop(ALICE)
    assert [(o.opener, o.req) for o in gone] == [(CAROL, 2)]
    assert intros.answered(to_alice, ALICE) is None
    assert [o.req for o in intros.expire(100.0)] == [3]
