"""Tests for conec_actors.client.knocks: when a channel's target knocks
toward the opener, and with which TTL (no sockets, no Coordinator)."""

from __future__ import annotations

import itertools

import pytest

from conec_actors.client.knocks import (
    EARLY_KNOCK_TTL,
    EARLY_KNOCKS,
    FULL_KNOCKS,
    KNOCK_TRANSITIONS,
    Knock,
    KnockEvent,
    Knocks,
    KnockState,
)
from conec_actors.transitions import LocalProtocolError, RemoteProtocolError

T0 = 100.0


def drain(k: Knocks) -> list[tuple[float, Knock]]:
    """Every further knock, each asked for exactly at its deadline."""
    out = []
    while (at := k.deadline) is not None:
        knock = k.due(at)
        assert knock is not None
        out.append((at, knock))
    return out


def accepted(now: float = T0) -> Knocks:
    k = Knocks()
    k.accept(now)
    return k


# -- the early phase --------------------------------------------------------------------


def test_accepting_gives_a_short_ttl_knock_at_once() -> None:
    """The driver sends it before its answer: no clock stands between them."""
    k = Knocks()
    assert k.deadline is None
    assert k.accept(T0) == Knock(EARLY_KNOCK_TTL)
    assert k.state is KnockState.EARLY
    assert k.sent == 1
    assert k.deadline == pytest.approx(T0 + EARLY_KNOCKS[0])


def test_early_knocks_follow_their_schedule_then_stop() -> None:
    k = accepted()
    rest = drain(k)
    assert [knock for _, knock in rest] == [Knock(EARLY_KNOCK_TTL)] * len(EARLY_KNOCKS)
    gaps = [b - a for a, b in itertools.pairwise([T0] + [at for at, _ in rest])]
    assert gaps == pytest.approx(list(EARLY_KNOCKS))
    assert k.sent == 1 + len(EARLY_KNOCKS)
    assert k.deadline is None
    assert k.due(T0 + 1000) is None
    assert k.state is KnockState.EARLY  # the opener may still dial


def test_nothing_is_due_before_the_deadline() -> None:
    k = accepted()
    at = k.deadline
    assert at is not None
    assert k.due(at - 0.001) is None
    assert k.deadline == at and k.sent == 1


def test_a_late_wakeup_sends_one_knock_and_keeps_the_spacing() -> None:
    k = accepted()
    late = T0 + 3.0  # far past several deadlines
    assert k.due(late) == Knock(EARLY_KNOCK_TTL)
    assert k.due(late) is None
    assert k.deadline == pytest.approx(late + EARLY_KNOCKS[1])


# -- the opener dials -------------------------------------------------------------------


def test_peer_dialing_gives_a_full_knock_at_once_and_full_knocks_after() -> None:
    k = accepted()
    k.due(k.deadline or 0.0)
    now = T0 + 0.2
    assert k.peer_dialing(now) == Knock(None)
    assert k.state is KnockState.FULL
    assert k.deadline == pytest.approx(now + FULL_KNOCKS[0])
    rest = drain(k)
    assert [knock for _, knock in rest] == [Knock(None)] * len(FULL_KNOCKS)
    assert k.sent == 2 + 1 + len(FULL_KNOCKS)
    assert k.deadline is None


def test_peer_dialing_after_the_early_schedule_ran_out_still_knocks() -> None:
    k = accepted()
    drain(k)
    assert k.peer_dialing(T0 + 20) == Knock(None)
    assert k.deadline is not None


def test_a_second_dialing_notice_changes_nothing() -> None:
    k = accepted()
    k.peer_dialing(T0 + 0.1)
    at, sent = k.deadline, k.sent
    assert k.peer_dialing(T0 + 0.12) is None
    assert (k.deadline, k.sent, k.state) == (at, sent, KnockState.FULL)


# -- stopping ------------------------------------------------------------------------------


@pytest.mark.parametrize("dialing", [False, True])
def test_stopped_knocks_give_nothing_more(dialing: bool) -> None:
    k = accepted()
    if dialing:
        k.peer_dialing(T0 + 0.1)
    k.stop()
    assert k.state is KnockState.STOPPED
    assert k.deadline is None
    assert k.due(T0 + 1000) is None
    assert k.peer_dialing(T0 + 1) is None  # a notice that crossed the channel opening
    k.stop()
    assert k.state is KnockState.STOPPED


def test_stopping_before_accepting() -> None:
    k = Knocks()
    k.stop()
    assert k.state is KnockState.STOPPED and k.deadline is None and k.sent == 0


# -- illegal moves -------------------------------------------------------------------------


@pytest.mark.parametrize("state", [KnockState.EARLY, KnockState.FULL, KnockState.STOPPED])
def test_accepting_twice_or_after_stopping_is_a_driver_bug(state: KnockState) -> None:
    k = accepted()
    if state is KnockState.FULL:
        k.peer_dialing(T0)
    elif state is KnockState.STOPPED:
        k.stop()
    with pytest.raises(LocalProtocolError):
        k.accept(T0 + 1)
    assert k.state is state


def test_a_dialing_notice_before_we_accepted_is_the_peers_doing() -> None:
    k = Knocks()
    with pytest.raises(RemoteProtocolError):
        k.peer_dialing(T0)
    assert k.state is KnockState.IDLE and k.sent == 0


def test_the_table_has_exactly_the_moves_the_methods_make() -> None:
    missing = {(s, e) for s in KnockState for e in KnockEvent} - set(KNOCK_TRANSITIONS)
    assert missing == {(KnockState.IDLE, KnockEvent.PEER_DIALING),
                       (KnockState.EARLY, KnockEvent.ACCEPT),
                       (KnockState.FULL, KnockEvent.ACCEPT),
                       (KnockState.STOPPED, KnockEvent.ACCEPT)}
    assert all(KNOCK_TRANSITIONS[s, KnockEvent.STOP] is KnockState.STOPPED for s in KnockState)
