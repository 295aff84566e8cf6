"""`coord.watches`: who watches whom at the front-end, and whom to tell what
when a session ends (no Coordinator, no sockets)."""

from __future__ import annotations

import pytest

from conec_actors import ProtocolError, wire
from conec_actors.coord.watches import MAX_WATCHES, Notify, Watches, verdict

W, X = 1, 2  # watchers' conn_keys


def test_a_watch_of_a_connected_peer_is_told_once_when_it_goes() -> None:
    ws = Watches()
    assert ws.watch(W, 5, "p", connected=True) == 0
    assert ws.held_by(W) == 1 and len(ws) == 1
    assert ws.target_gone("p", "left") == [Notify(W, 5, "left")]
    assert len(ws) == 0 and ws.held_by(W) == 0
    assert ws.target_gone("p", "left") == []  # over: nobody is told twice


def test_a_peer_not_connected_is_answered_at_once_and_not_kept() -> None:
    ws = Watches()
    assert ws.watch(W, 1, "ghost", connected=False) == wire.Code.NO_SUCH_PEER
    assert len(ws) == 0 and ws.target_gone("ghost", "vanished") == []


def test_every_watch_of_a_peer_is_told_in_the_order_they_began() -> None:
    ws = Watches()
    ws.watch(W, 1, "p", True)
    ws.watch(X, 1, "p", True)
    ws.watch(W, 2, "p", True)  # the same peer twice: two watches
    ws.watch(W, 3, "q", True)
    assert ws.target_gone("p", "vanished") == [
        Notify(W, 1, "vanished"), Notify(X, 1, "vanished"), Notify(W, 2, "vanished")]
    assert ws.held_by(W) == 1 and ws.held_by(X) == 0


def test_a_watch_number_in_use_breaks_the_protocol() -> None:
    ws = Watches()
    ws.watch(W, 1, "p", True)
    with pytest.raises(ProtocolError):
        ws.watch(W, 1, "q", True)
    with pytest.raises(ProtocolError):
        ws.watch(W, 1, "q", False)
    assert ws.watch(X, 1, "p", True) == 0  # numbers are per watcher
    ws.target_gone("p", "left")
    assert ws.watch(W, 1, "q", True) == 0  # free again once over


def test_watches_per_client_are_bounded() -> None:
    ws = Watches()
    for i in range(MAX_WATCHES):
        assert ws.watch(W, i, f"p{i % 3}", True) == 0
    assert ws.watch(W, MAX_WATCHES, "p0", True) == wire.Code.TOO_MANY_WATCHES
    assert ws.held_by(W) == MAX_WATCHES
    assert ws.watch(X, 0, "p0", True) == 0  # another watcher's allowance
    # Not-connected answers hold nothing, so they are answered even at the bound.
    assert ws.watch(W, MAX_WATCHES + 1, "ghost", False) == wire.Code.NO_SUCH_PEER
    assert ws.cancel(W, 0)
    assert ws.watch(W, MAX_WATCHES + 2, "p0", True) == 0
    ws.target_gone("p1", "left")  # a verdict frees places too
    assert ws.held_by(W) == MAX_WATCHES - (MAX_WATCHES + 1) // 3


def test_cancel_forgets_one_watch() -> None:
    ws = Watches()
    ws.watch(W, 1, "p", True)
    ws.watch(W, 2, "p", True)
    assert ws.cancel(W, 1) is True
    assert ws.cancel(W, 1) is False  # twice, or crossing the verdict: nothing
    assert ws.cancel(X, 2) is False  # not another watcher's
    assert ws.target_gone("p", "left") == [Notify(W, 2, "left")]
    assert ws.cancel(W, 2) is False
    assert len(ws) == 0


def test_a_watcher_that_leaves_takes_its_watches_along() -> None:
    ws = Watches()
    ws.watch(W, 1, "p", True)
    ws.watch(W, 2, "q", True)
    ws.watch(X, 1, "p", True)
    ws.watcher_gone(W)
    ws.watcher_gone(W)  # twice: nothing more
    assert len(ws) == 1
    assert ws.target_gone("q", "left") == []
    assert ws.target_gone("p", "left") == [Notify(X, 1, "left")]


def test_a_client_watching_itself_is_not_told_after_it_left() -> None:
    ws = Watches()
    ws.watch(W, 1, "w", True)
    ws.watcher_gone(W)  # the front-end forgets the watcher first
    assert ws.target_gone("w", "left") == []


@pytest.mark.parametrize(("code", "reason"), [
    (wire.Code.CLIENT_CLOSED, "left"),  # what Client.close sends
    (0x1, "vanished"),  # aioquic's idle timeout (INTERNAL_ERROR, "Idle timeout")
    (0, "vanished"),  # a close without a code
    (wire.Code.PROTOCOL, "vanished"),  # closed by the Coordinator
    (wire.Code.COORD_SHUTDOWN, "vanished"),
])
def test_the_verdict_comes_from_the_close_code(code: int, reason: str) -> None:
    assert verdict(code) == reason
