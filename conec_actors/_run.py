"""Running a program's top level: the event loop (uvloop when installed) and
SIGINT/SIGTERM handling, shared by the command line and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: The signals that stop a program run from a terminal or a service manager.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop is installed (extra ``fast``), else None
    (the default asyncio loop)."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: what `run` will use."""
    return "asyncio" if loop_factory() is None else "uvloop"


def running_loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop running now."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on uvloop if it is installed, else on asyncio."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` on SIGINT/SIGTERM while inside. Outside the main thread
    (where the loop cannot install handlers) it does nothing."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, callback)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
