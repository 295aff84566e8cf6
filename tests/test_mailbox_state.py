"""The mailbox's state machines (`conec_actors.client.mailbox.state`): every
move of every table, legal and illegal, and the classes that hold a state."""

from __future__ import annotations

import itertools
from enum import Enum
from typing import Any

import pytest

from conec_actors.client.mailbox.inbound import InboundLog, KnownSender
from conec_actors.client.mailbox.outbound import OutboundLog, SendRoute
from conec_actors.client.mailbox.state import (
    PAIR_TRANSITIONS,
    RECV_TRANSITIONS,
    SEND_TRANSITIONS,
    PairEvent,
    PairState,
    RecvEvent,
    RecvState,
    SendEvent,
    SendState,
)
from conec_actors.errors import ClientClosed, NoSuchPeer, ProtocolError
from conec_actors.transitions import LocalProtocolError, RemoteProtocolError, move

P, PE = PairState, PairEvent
S, SE = SendState, SendEvent
R, RE = RecvState, RecvEvent

# The legal moves, written out: anything else must raise.
PAIR_LEGAL = {
    (P.OPENING, PE.ROUTED): P.OPEN,
    (P.OPENING, PE.DRAIN): P.DRAINING,
    (P.OPENING, PE.KILL): P.DEAD,
    (P.OPEN, PE.DRAIN): P.DRAINING,
    (P.OPEN, PE.KILL): P.DEAD,
    (P.DRAINING, PE.ROUTED): P.DRAINING,
    (P.DRAINING, PE.KILL): P.DEAD,
}
SEND_LEGAL = {
    (S.OPEN, SE.FINISH): S.FENCING,
    (S.OPEN, SE.BREAK): S.BROKEN,
    (S.OPEN, SE.RETURN_END): S.BROKEN,
    (S.FENCING, SE.DRAINED): S.DRAINED,
    (S.FENCING, SE.RETURN_END): S.DRAINED,
    (S.FENCING, SE.BREAK): S.BROKEN,
    (S.DRAINED, SE.RETURN_END): S.DRAINED,
    (S.DRAINED, SE.BREAK): S.BROKEN,
    (S.BROKEN, SE.DRAINED): S.BROKEN,
    (S.BROKEN, SE.RETURN_END): S.BROKEN,
    (S.BROKEN, SE.BREAK): S.BROKEN,
}
RECV_LEGAL = {
    (R.READING, RE.CLEAN_END): R.ENDED,
    (R.READING, RE.FAIL): R.CLOSED,
    (R.READING, RE.BACK_DONE): R.CLOSED,
    (R.ENDED, RE.FAIL): R.CLOSED,
    (R.ENDED, RE.BACK_DONE): R.CLOSED,
    (R.CLOSED, RE.BACK_DONE): R.CLOSED,
}

MACHINES: list[tuple[str, dict[Any, Any], dict[Any, Any], type[Enum], type[Enum]]] = [
    ("pair", PAIR_TRANSITIONS, PAIR_LEGAL, PairState, PairEvent),
    ("send", SEND_TRANSITIONS, SEND_LEGAL, SendState, SendEvent),
    ("recv", RECV_TRANSITIONS, RECV_LEGAL, RecvState, RecvEvent),
]
ALL_MOVES = [(name, table, legal, state, event)
             for name, table, legal, states, events in MACHINES
             for state, event in itertools.product(states, events)]


@pytest.mark.parametrize(("name", "table", "legal", "state", "event"), ALL_MOVES,
                         ids=[f"{m[0]}-{m[3].name}-{m[4].name}" for m in ALL_MOVES])
def test_every_move(name: str, table: dict[Any, Any], legal: dict[Any, Any],
                    state: Enum, event: Enum) -> None:
    if (state, event) in legal:
        assert move(name, table, state, event) is legal[state, event]
        assert move(name, table, state, event, by_peer=True) is legal[state, event]
    else:
        with pytest.raises(LocalProtocolError) as info:
            move(name, table, state, event)
        assert info.value.state is state and info.value.event is event
        assert state.name in str(info.value) and event.name in str(info.value)
        # Caused by the peer, the same move is the peer's protocol error.
        with pytest.raises(RemoteProtocolError) as remote:
            move(name, table, state, event, by_peer=True)
        assert isinstance(remote.value, ProtocolError)


def test_dead_and_closed_are_final() -> None:
    assert not [k for k in PAIR_TRANSITIONS if k[0] is P.DEAD]
    assert {v for k, v in RECV_TRANSITIONS.items() if k[0] is R.CLOSED} == {R.CLOSED}
    assert {v for k, v in SEND_TRANSITIONS.items() if k[0] is S.BROKEN} == {S.BROKEN}


# --- the classes that hold a state ----------------------------------------------------------

def test_send_route_fence() -> None:
    route = SendRoute("direct", now=10.0)
    seen = [route.state]
    route.handle(SE.FINISH)
    seen.append(route.state)
    route.receive(SE.DRAINED)
    seen.append(route.state)
    route.receive(SE.RETURN_END)
    seen.append(route.state)
    assert seen == [S.OPEN, S.FENCING, S.DRAINED, S.DRAINED]
    with pytest.raises(LocalProtocolError):
        route.handle(SE.FINISH)  # fenced once only


def test_send_route_drained_unasked_is_the_peers_error() -> None:
    route = SendRoute("proxied", now=0.0)
    with pytest.raises(ProtocolError):
        route.receive(SE.DRAINED)
    seen = [route.state]
    route.receive(SE.RETURN_END)  # ended without a fence: broken
    seen.append(route.state)
    route.receive(SE.DRAINED)  # late: changes nothing
    seen.append(route.state)
    assert seen == [S.OPEN, S.BROKEN, S.BROKEN]


def test_pair_life() -> None:
    log = OutboundLog("bob", 1000)
    seen = [log.state]
    log.handle(PE.ROUTED)
    seen.append(log.state)
    log.handle(PE.DRAIN)
    seen.append(log.state)
    err, for_asks = log.kill(ClientClosed("closed"))
    seen.append(log.state)
    assert seen == [P.OPENING, P.OPEN, P.DRAINING, P.DEAD]
    assert isinstance(err, ClientClosed) and log.dead is err and for_asks is err
    with pytest.raises(LocalProtocolError):
        log.kill(NoSuchPeer("again"))
    with pytest.raises(LocalProtocolError):
        log.handle(PE.ROUTED)


def test_inbound_route_life() -> None:
    sender = KnownSender()
    r = InboundLog()
    seen = [r.state]
    r.clean_end(sender)
    seen.append(r.state)
    with pytest.raises(LocalProtocolError):
        r.clean_end(sender)
    r.handle(RE.BACK_DONE)
    seen.append(r.state)
    assert seen == [R.READING, R.ENDED, R.CLOSED]
    with pytest.raises(LocalProtocolError):
        r.handle(RE.FAIL)
