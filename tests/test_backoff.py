"""Tests for conec_actors.client.backoff: the reconnect delays and the
client's presence state machine (no sockets, no Coordinator)."""

from __future__ import annotations

import pytest

from conec_actors import ClientClosed, ConnectFailed, Disconnected, DuplicateId, Reconnected
from conec_actors.client.backoff import (
    FIRST_DELAY,
    LINK_TRANSITIONS,
    MAX_DELAY,
    Backoff,
    LinkEvent,
    LinkState,
    Presence,
    permanent,
)
from conec_actors.errors import CertificateError, InvalidId, ProtocolError
from conec_actors.transitions import LocalProtocolError

# -- Backoff ------------------------------------------------------------------------


def test_steps_double_from_first_to_the_cap() -> None:
    b = Backoff(random=lambda: 0.0)  # no jitter drawn: the step itself
    delays = [b.next_delay() for _ in range(10)]
    assert delays[:7] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert delays[7:] == [MAX_DELAY] * 3
    assert b.attempts == 10


def test_jitter_draws_within_the_upper_half_of_the_step() -> None:
    lowest = Backoff(random=lambda: 0.999999)
    assert lowest.next_delay() == pytest.approx(FIRST_DELAY / 2, rel=1e-4)
    draws = iter([0.0, 0.5, 0.25])
    b = Backoff(random=lambda: next(draws))
    assert [b.next_delay() for _ in range(3)] == pytest.approx([0.1, 0.15, 0.35])


def test_never_above_the_cap_nor_below_half_a_step() -> None:
    for r in (0.0, 0.3, 0.99):
        b = Backoff(random=lambda r=r: r)
        for _ in range(200):  # far past the cap: no overflow either
            step = b.step()
            d = b.next_delay()
            assert step / 2 <= d <= step <= MAX_DELAY


def test_reset_starts_again_from_first() -> None:
    b = Backoff(random=lambda: 0.0)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.attempts == 0
    assert b.next_delay() == FIRST_DELAY


@pytest.mark.parametrize(("first", "cap", "jitter"), [
    (0.0, 5.0, 0.5), (1.0, 0.5, 0.5), (0.1, 5.0, -0.1), (0.1, 5.0, 1.5)])
def test_bad_settings_raise(first: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(first, cap, jitter)


# -- what a refusal means ---------------------------------------------------------------


@pytest.mark.parametrize("err", [DuplicateId("x"), CertificateError("x"), InvalidId("x")])
def test_refusals_that_dialling_again_cannot_help(err: Exception) -> None:
    assert permanent(err)  # type: ignore[arg-type]


@pytest.mark.parametrize("err", [ConnectFailed("x"), ClientClosed("x"), ProtocolError("x")])
def test_losses_worth_dialling_again(err: Exception) -> None:
    assert not permanent(err)  # type: ignore[arg-type]


# -- Presence -----------------------------------------------------------------------------


def test_reconnecting_client_goes_down_and_up() -> None:
    p = Presence(reconnect=True)
    assert p.connected
    again, events = p.lost(ConnectFailed("idle timeout"))
    assert again and events == [Disconnected("idle timeout")]
    assert p.state is LinkState.DISCONNECTED and not p.connected
    assert p.reconnected() == Reconnected()
    assert p.connected
    again, events = p.lost(ClientClosed("the Coordinator is shutting down"))
    assert again and events == [Disconnected("the Coordinator is shutting down")]


def test_without_reconnect_a_loss_closes() -> None:
    p = Presence(reconnect=False)
    again, events = p.lost(ConnectFailed("gone"))
    assert not again and events == [Disconnected("gone")]
    assert p.state is LinkState.CLOSED


def test_a_replaced_session_does_not_reconnect() -> None:
    p = Presence(reconnect=True)
    again, events = p.lost(DuplicateId("replaced by a newer connection"))
    assert not again and events == [Disconnected("replaced by a newer connection")]
    assert p.state is LinkState.CLOSED


def test_refused_while_reconnecting_gives_up() -> None:
    p = Presence(reconnect=True)
    p.lost(ConnectFailed("x"))
    p.give_up()
    assert p.state is LinkState.CLOSED


@pytest.mark.parametrize("start", [LinkState.CONNECTED, LinkState.DISCONNECTED])
def test_close_from_anywhere_and_the_loss_that_follows_says_nothing(start: LinkState) -> None:
    p = Presence(reconnect=True)
    p.state = start
    p.close()
    assert p.state is LinkState.CLOSED
    assert p.lost(ConnectFailed("x")) == (False, [])
    p.close()  # twice is fine
    assert p.state is LinkState.CLOSED


def test_losing_twice_without_reconnecting_is_a_driver_bug() -> None:
    p = Presence(reconnect=True)
    p.lost(ConnectFailed("x"))
    with pytest.raises(LocalProtocolError):
        p.lost(ConnectFailed("again"))


@pytest.mark.parametrize(("state", "event"), [
    (s, e) for s in LinkState for e in LinkEvent
    if (s, e) not in LINK_TRANSITIONS and not (s is LinkState.CLOSED and e is LinkEvent.LOST)])
def test_illegal_moves_raise(state: LinkState, event: LinkEvent) -> None:
    p = Presence(reconnect=True)
    p.state = state
    call = {LinkEvent.LOST: lambda: p.lost(ConnectFailed("x")),
            LinkEvent.RECONNECTED: p.reconnected,
            LinkEvent.GIVE_UP: p.give_up,
            LinkEvent.CLOSE: p.close}[event]
    with pytest.raises(LocalProtocolError):
        call()
    assert p.state is state
