"""Proxied stream slots between pairs of clients, without I/O.

One client has at most MAX_STREAMS_PER_PAIR proxied streams open to one
target (DESIGN 3.1); further opens wait here, in a queue per opener, and the
target sees nothing of them. Opens also wait while the target's QUIC stream
limit has no room (the caller says whether it has). Clients are named by
their `conn_key`; what waits is whatever the caller queues (a leg).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

#: Proxied streams open at once from one client to one target; further
#: opens wait (and count as pending opens) until one of them ends.
MAX_STREAMS_PER_PAIR = 32

L = TypeVar("L")


class Pairing(Generic[L]):
    """Open streams per (opener, target) pair and the opens waiting for a slot."""

    def __init__(self, per_pair: int = MAX_STREAMS_PER_PAIR) -> None:
        self.per_pair = per_pair
        self._open: dict[tuple[int, int], int] = {}
        #: target -> opener -> opens waiting, in order
        self._waiting: dict[int, dict[int, deque[L]]] = {}

    def open_count(self, opener: int, target: int) -> int:
        """Streams open from `opener` to `target`."""
        return self._open.get((opener, target), 0)

    def must_wait(self, opener: int, target: int, room: bool) -> bool:
        """Whether an open from `opener` must queue: earlier ones of the pair
        wait, its slots are taken, or the target has no `room` for a stream."""
        queues = self._waiting.get(target)
        return bool(queues and queues.get(opener)) or not room or \
            self._open.get((opener, target), 0) >= self.per_pair

    def wait(self, opener: int, target: int, item: L) -> None:
        """Queue an open (after `must_wait` said so)."""
        self._waiting.setdefault(target, {}).setdefault(opener, deque()).append(item)

    def opened(self, opener: int, target: int) -> None:
        """A stream of the pair was opened: it holds a slot until `closed`."""
        key = (opener, target)
        self._open[key] = self._open.get(key, 0) + 1

    def closed(self, opener: int, target: int) -> bool:
        """A stream of the pair ended; True if opens wait toward `target`."""
        key = (opener, target)
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)
        return target in self._waiting

    def has_waiting(self, target: int) -> bool:
        return target in self._waiting

    def admit(self, target: int, alive: Callable[[L], bool],
              room: Callable[[], bool]) -> Iterator[tuple[L, bool]]:
        """Take the opens toward `target` that may proceed, each opener's in
        order: yields (item, True) to open now (the caller opens it, which
        must call `opened`, before resuming) and (item, False) for one no
        longer `alive`, dropped. Stops when the target has no `room`."""
        queues = self._waiting.get(target)
        if queues is None:
            return
        for opener, queue in list(queues.items()):
            blocked = False
            while queue:
                item = queue[0]
                if not alive(item):
                    queue.popleft()
                    yield item, False
                    continue
                if not room():
                    blocked = True
                    break
                if self._open.get((opener, target), 0) >= self.per_pair:
                    break
                queue.popleft()
                yield item, True
            if not queue:  # (a nested call, while this one yielded, may have)
                queues.pop(opener, None)
            if blocked:
                break
        if not queues and self._waiting.get(target) is queues:
            del self._waiting[target]

    def drop_target(self, target: int) -> list[L]:
        """`target` left: every open waiting toward it, in no given order."""
        queues = self._waiting.pop(target, {})
        return [item for queue in queues.values() for item in queue]
