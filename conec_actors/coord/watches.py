"""Death watch at the front-end, without I/O: who watches whom, and what
each watcher is told when a client's session ends.

A watcher (a connection, by its `conn_key`) asks to watch a client id with a
watch number of its own (`WatchRequest.req`). `Watches.watch` answers at
once: watching, "not-connected" (the id holds no admitted session here), or
refused (`MAX_WATCHES` per watcher, DESIGN 3.1: everything a peer can make
the Coordinator hold is bounded). When the session holding an id ends,
`target_gone` lists every watcher to tell, with the verdict: "left" when the
client closed its connection itself (`Code.CLIENT_CLOSED`, what
`Client.close` sends), "vanished" otherwise (idle timeout, connection lost,
closed by the Coordinator). The watches are then forgotten; so are a
watcher's own when it goes (`watcher_gone`) or cancels one (`cancel`).

A watch number used twice by one watcher while the first is active is a
protocol violation (`ProtocolError`): a client numbers its requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .. import wire
from ..errors import ProtocolError

#: Watches one client may hold at once (each costs the front-end a few
#: hundred bytes and one `PeerTerminated` when its target goes).
MAX_WATCHES = 1024

Reason = Literal["left", "vanished", "not-connected"]


def verdict(close_code: int) -> Reason:
    """The reason a session ended, from its connection's close code."""
    return "left" if close_code == wire.Code.CLIENT_CLOSED else "vanished"


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell watcher `watcher` (a conn_key) that watch `req` ended with `reason`."""

    watcher: int
    req: int
    reason: Reason


class Watches:
    """Every active watch of one front-end."""

    __slots__ = ("_by_target", "_by_watcher")

    def __init__(self) -> None:
        #: target id -> the (watcher, req) pairs watching it (insertion order)
        self._by_target: dict[str, dict[tuple[int, int], None]] = {}
        #: watcher conn_key -> {req: target id}
        self._by_watcher: dict[int, dict[int, str]] = {}

    def __len__(self) -> int:
        return sum(len(w) for w in self._by_watcher.values())

    def held_by(self, watcher: int) -> int:
        """How many watches `watcher` holds."""
        return len(self._by_watcher.get(watcher, ()))

    def watch(self, watcher: int, req: int, target: str, connected: bool) -> int:
        """`watcher` asks to watch `target` (`connected`: an admitted session
        holds that id now). Returns the `WatchReply` code: 0 (watching),
        `Code.NO_SUCH_PEER` or `Code.TOO_MANY_WATCHES`. `ProtocolError` if
        `req` is active already."""
        mine = self._by_watcher.get(watcher)
        if mine is not None and req in mine:
            raise ProtocolError(f"watch number {req} is in use")
        if not connected:
            return wire.Code.NO_SUCH_PEER
        if mine is None:
            mine = self._by_watcher[watcher] = {}
        if len(mine) >= MAX_WATCHES:
            return wire.Code.TOO_MANY_WATCHES
        mine[req] = target
        self._by_target.setdefault(target, {})[(watcher, req)] = None
        return 0

    def cancel(self, watcher: int, req: int) -> bool:
        """`watcher` stops watch `req`: True if it was active (a cancel
        that crossed the verdict finds nothing, which is fine)."""
        mine = self._by_watcher.get(watcher)
        target = mine.pop(req, None) if mine is not None else None
        if target is None:
            return False
        assert mine is not None
        if not mine:
            del self._by_watcher[watcher]
        self._unlink(target, watcher, req)
        return True

    def watcher_gone(self, watcher: int) -> None:
        """`watcher`'s connection ended: its watches end with it."""
        for req, target in self._by_watcher.pop(watcher, {}).items():
            self._unlink(target, watcher, req)

    def target_gone(self, target: str, reason: Reason) -> list[Notify]:
        """The admitted session holding `target` ended: whom to tell, in the
        order they started watching. Those watches are over."""
        pairs = self._by_target.pop(target, None)
        if not pairs:
            return []
        out: list[Notify] = []
        for watcher, req in pairs:
            mine = self._by_watcher[watcher]
            del mine[req]
            if not mine:
                del self._by_watcher[watcher]
            out.append(Notify(watcher, req, reason))
        return out

    def _unlink(self, target: str, watcher: int, req: int) -> None:
        pairs = self._by_target[target]
        del pairs[(watcher, req)]
        if not pairs:
            del self._by_target[target]
