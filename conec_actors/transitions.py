"""The one rule of every state machine in the package: a move not in the
table raises.

Sans-I/O. Each machine (the Coordinator's `coord.session.SessionCore`, the
client's `client.coord_session.CoordSession` and `client.hello.ChannelHandshake`,
the mailbox's pair and stream machines in `client.mailbox.state`) keeps its
states in an `enum`, its legal moves in a table ``{(state, event):
next_state}``, and moves with `move`, h11 ``_state.py`` style: what may
happen next is data, not scattered ``if``\\ s.

Who caused the move decides the error, as h11's Local/RemoteProtocolError
do: an event the peer caused (a message it sent) that the state does not
allow is the peer breaking the protocol, a `RemoteProtocolError` (a
`ProtocolError`: the connection or stream fails with ``Code.PROTOCOL``); an
event our own code caused is a bug in the driver, a `LocalProtocolError`.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from .errors import ProtocolError

S = TypeVar("S", bound=Enum)
E = TypeVar("E", bound=Enum)


def _describe(machine: str, state: Enum, event: Enum) -> str:
    return f"{machine}: {event.name} is not allowed in state {state.name}"


class LocalProtocolError(Exception):
    """Our own code asked a state machine for a move its state does not
    allow: a bug in the code that drives it, never the peer's doing."""

    def __init__(self, machine: str, state: Enum, event: Enum) -> None:
        self.machine = machine
        self.state = state
        self.event = event
        super().__init__(_describe(machine, state, event))


class RemoteProtocolError(ProtocolError):
    """The peer sent something the state machine's state does not allow."""

    def __init__(self, machine: str, state: Enum, event: Enum, detail: str = "") -> None:
        self.machine = machine
        self.state = state
        self.event = event
        super().__init__(detail or _describe(machine, state, event))


def move(machine: str, table: dict[tuple[S, E], S], state: S, event: E, *,
         by_peer: bool = False, detail: str = "") -> S:
    """The state `event` leads to from `state` in `table`.

    When the table has no such move: `RemoteProtocolError` (with `detail` as
    its message, if given) if the peer caused the event (`by_peer`),
    `LocalProtocolError` otherwise.
    """
    try:
        return table[state, event]
    except KeyError:
        if by_peer:
            raise RemoteProtocolError(machine, state, event, detail) from None
        raise LocalProtocolError(machine, state, event) from None
