"""Pool instance process: `python -m conec_actors.pool_worker`, told on stdin
(one JSON line) which actor to run: ``{"cls": "module:qualname", "cfg":
"module:qualname", "index": i, "group": name, "ready_fd": fd}``.

Started by `ActorPool` as a plain subprocess (never by multiprocessing, so a
user's script without a `__main__` guard is not re-run as a program). It
imports the actor class and the config factory, builds instance `index`'s
`ClientConfig`, spawns the actor with `group` added to its groups, writes a
line to `ready_fd`, and serves until SIGTERM (a clean stop), SIGKILL, the
actor stopping by itself, or its parent dying.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from .actor import Actor
from .config import ClientConfig
from .coord.worker import _die_with_parent
from .pool import IMPORTING_ENV, resolve, spawn_retrying, with_group


def load(spec: dict[str, Any]) -> tuple[type[Actor], Callable[[int], ClientConfig]]:
    """Import the actor class and the config factory, outside any event loop
    and flagged (`IMPORTING_ENV`), so a module that starts a pool when
    imported fails with a clear error."""
    os.environ[IMPORTING_ENV] = spec["cls"].partition(":")[0]
    try:
        return with_group(resolve(spec["cls"]), spec["group"]), resolve(spec["cfg"])
    finally:
        del os.environ[IMPORTING_ENV]


async def serve(spec: dict[str, Any], cls: type[Actor],
                factory: Callable[[int], ClientConfig]) -> int:
    actor = await spawn_retrying(cls, factory(spec["index"]))
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_term() -> None:
        if not stopping:
            stopping.append(loop.create_task(actor.stop()))

    loop.add_signal_handler(signal.SIGTERM, on_term)
    with os.fdopen(spec["ready_fd"], "w") as ready:
        ready.write(f"{os.getpid()}\n")
    await actor.wait_stopped()
    # Stopped by the pool: a clean exit. Stopped by itself (its client
    # closed): a death the pool counts and restarts.
    return 0 if stopping else 1


def main() -> int:
    _die_with_parent()
    # The pool stops us with SIGTERM; Ctrl-C in a terminal reaches the whole
    # process group, and the parent decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spec = json.loads(sys.stdin.readline())
    except ValueError as exc:
        print(f"conec-actors pool worker: bad spec on stdin: {exc}", file=sys.stderr)
        return 2
    cls, factory = load(spec)
    return asyncio.run(serve(spec, cls, factory))


if __name__ == "__main__":
    sys.exit(main())
