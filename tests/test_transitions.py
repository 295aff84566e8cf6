"""The one rule of every state machine: a move not in the table raises, and
who caused the move decides which error."""

from __future__ import annotations

from enum import Enum, auto

import pytest

from conec_actors.errors import ProtocolError
from conec_actors.transitions import LocalProtocolError, RemoteProtocolError, move


class Door(Enum):
    SHUT = auto()
    OPEN = auto()


class Push(Enum):
    OPEN = auto()
    CLOSE = auto()


TABLE = {(Door.SHUT, Push.OPEN): Door.OPEN, (Door.OPEN, Push.CLOSE): Door.SHUT}


def test_a_listed_move_gives_the_next_state() -> None:
    assert move("door", TABLE, Door.SHUT, Push.OPEN) is Door.OPEN
    assert move("door", TABLE, Door.OPEN, Push.CLOSE, by_peer=True) is Door.SHUT


def test_an_unlisted_move_of_ours_is_a_local_error_naming_the_machine() -> None:
    with pytest.raises(LocalProtocolError) as info:
        move("door", TABLE, Door.OPEN, Push.OPEN)
    err = info.value
    assert (err.machine, err.state, err.event) == ("door", Door.OPEN, Push.OPEN)
    assert str(err) == "door: OPEN is not allowed in state OPEN"
    assert not isinstance(err, ProtocolError)  # a bug here, not the peer's doing


def test_an_unlisted_move_the_peer_caused_is_its_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        move("door", TABLE, Door.SHUT, Push.CLOSE, by_peer=True, detail="shut already")
    assert isinstance(info.value, ProtocolError)
    assert str(info.value) == "shut already"
    assert info.value.state is Door.SHUT and info.value.event is Push.CLOSE
