"""Small shared helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar


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
