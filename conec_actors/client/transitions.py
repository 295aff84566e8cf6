"""The one rule of the client's state machines: a move not in the table raises.

Sans-I/O. Each machine (`session.CoordSession`, `hello.ChannelHandshake`)
keeps its states in an `enum`, its legal moves in a table
``{(state, event): next_state}``, and moves with `move`, h11 `_state.py`
style: what may happen next is data, not scattered ``if``\\ s.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from ..errors import ProtocolError

S = TypeVar("S", bound=Enum)
E = TypeVar("E", bound=Enum)


class IllegalTransition(ProtocolError):
    """An event the machine's current state does not allow. From the peer it
    is a broken protocol (the connection closes with `Code.PROTOCOL`); from
    our own side, a bug."""

    def __init__(self, machine: str, state: Enum, event: Enum, detail: str = "") -> None:
        self.state = state
        self.event = event
        super().__init__(detail or f"{machine}: {event.name} is not allowed in state "
                         f"{state.name}")


def move(machine: str, table: dict[tuple[S, E], S], state: S, event: E,
         detail: str = "") -> S:
    """The state `event` leads to from `state`; `IllegalTransition` (with
    `detail` as its message, if given) when the table has no such move."""
    try:
        return table[state, event]
    except KeyError:
        raise IllegalTransition(machine, state, event, detail) from None
