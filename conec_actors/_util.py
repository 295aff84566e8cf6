"""Small shared helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

Item = TypeVar("Item")


class _Closable(Protocol):
    async def close(self) -> None: ...


T = TypeVar("T", bound=_Closable)


class AwaitableContext(Generic[T]):
    """Both `await f(...)` and `async with f(...) as x:` (closing x on exit),
    the way `websockets.connect` works."""

    __slots__ = ("_factory", "_obj")

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._factory = factory
        self._obj: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._factory().__await__()

    async def __aenter__(self) -> T:
        self._obj = await self._factory()
        return self._obj

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._obj is not None:
            await self._obj.close()


class Waiters:
    """Futures to wake together; each woken waiter checks its condition again."""

    __slots__ = ("_futs",)

    def __init__(self) -> None:
        self._futs: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futs.append(fut)
        try:
            await fut
        except BaseException:
            # Cancelled: forget the future unless `wake` already took it. (Only
            # here: a failed `remove` formats the future's repr, which is slow.)
            fut.cancel()
            with contextlib.suppress(ValueError):
                self._futs.remove(fut)
            raise

    def __len__(self) -> int:
        """How many are waiting (not yet woken)."""
        return len(self._futs)

    def wake(self) -> None:
        while self._futs:
            fut = self._futs.popleft()
            if not fut.done():
                fut.set_result(None)


class EndableQueue(Generic[Item]):
    """A FIFO any number of tasks read, which can end: after `end()`, `get`
    returns what is left, then None.

    It is bounded by `max_items` and, when `weigh` is given, by a total
    weight (`max_weight`, e.g. bytes): `offer` refuses an item while the
    queue is full or ended; `put` always takes it, for a producer that checks
    `full()` before reading more (the item in hand still goes in).
    """

    __slots__ = ("_getters", "_weigh", "ended", "items", "max_items", "max_weight", "weight")

    def __init__(self, max_items: int, max_weight: int = 0,
                 weigh: Callable[[Item], int] | None = None) -> None:
        self.items: deque[Item] = deque()
        self.max_items = max_items
        self.max_weight = max_weight
        self._weigh = weigh
        #: Total weight of the queued items (0 without `weigh`).
        self.weight = 0
        self.ended = False
        self._getters = Waiters()

    def __len__(self) -> int:
        return len(self.items)

    def full(self) -> bool:
        """True when `offer` would refuse for room."""
        return len(self.items) >= self.max_items or (
            self._weigh is not None and self.weight >= self.max_weight)

    def put(self, item: Item) -> None:
        """Queue `item` whatever the bound, and wake the readers."""
        self.items.append(item)
        if self._weigh is not None:
            self.weight += self._weigh(item)
        self._getters.wake()

    def offer(self, item: Item) -> bool:
        """Queue `item` unless the queue is full or ended; False if refused."""
        if self.ended or self.full():
            return False
        self.put(item)
        return True

    def get_nowait(self) -> Item | None:
        """The oldest item, or None if none is queued."""
        if not self.items:
            return None
        item = self.items.popleft()
        if self._weigh is not None:
            self.weight -= self._weigh(item)
        return item

    async def get(self) -> Item | None:
        """The oldest item, waiting for one; None once ended and empty."""
        while not self.items:
            if self.ended:
                return None
            await self._getters.wait()
        item = self.items.popleft()
        if self._weigh is not None:
            self.weight -= self._weigh(item)
        return item

    def end(self) -> None:
        """No more items will come: readers get what is left, then None."""
        self.ended = True
        self._getters.wake()
