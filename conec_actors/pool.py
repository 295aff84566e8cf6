"""`ActorPool`: `size` instances of an `Actor` subclass, each in its own
process (or, with ``processes=False``, as tasks in this one), all in one
group, restarted when they die.

Processes are started like the Coordinator's workers: ``python -m
conec_actors.pool_worker`` (never multiprocessing, so a user's script
without a ``__main__`` guard is not re-run as a program), told on stdin the
"module:qualname" of the actor class and of the config factory, and the
instance's index. The child gets this process's `sys.path` (as PYTHONPATH),
so whatever imports here imports there. It says it is ready (connected,
serving, in the group) on a pipe of its own, so its stdout stays the user's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .actor import Actor
from .config import ClientConfig
from .errors import DuplicateId, PoolFailed
from .restarts import RestartBudget

log = logging.getLogger(__name__)

__all__ = ["ActorPool"]

#: This many deaths (of any instance) within DEATH_WINDOW seconds stop the pool.
DEATH_LIMIT = 3
DEATH_WINDOW = 10.0
#: How long a stopping instance has between SIGTERM and SIGKILL.
STOP_GRACE = 5.0
#: How long `start` waits for every instance to be ready.
START_TIMEOUT = 60.0
#: Set in a pool worker while it imports the actor class's module: a module
#: that starts a pool when imported (a script without a `__main__` guard)
#: gets a clear error there instead of starting pools of pools.
IMPORTING_ENV = "CONEC_ACTORS_POOL_IMPORTING"
#: How long a restarted instance retries an id its killed predecessor still
#: holds at the Coordinator (until that connection's idle timeout).
DUPLICATE_RETRY_FOR = 30.0
DUPLICATE_RETRY_DELAY = 0.2


def import_path(obj: Any) -> str:
    """"module:qualname" by which a child process can import `obj`. An object
    of a script run as ``python script.py`` is imported as module ``script``
    (its top level runs again in the child: keep the program under
    ``if __name__ == "__main__":``)."""
    qualname: str = obj.__qualname__
    if "<locals>" in qualname:
        raise TypeError(f"{qualname} is defined in a function: a pool needs an "
                        "importable (module-level) class and config factory")
    module: str = obj.__module__
    if module == "__main__":
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        else:
            module = Path(main.__file__ or "").stem
    return f"{module}:{qualname}"


def resolve(path: str) -> Any:
    """The object named by "module:qualname"."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def with_group(cls: type[Actor], group: str) -> type[Actor]:
    """`cls` with `group` added to its `groups` (a subclass of the same name)."""
    if group in cls.groups:
        return cls
    return type(cls.__name__, (cls,), {"groups": (*cls.groups, group),
                                       "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


async def spawn_retrying(cls: type[Actor], cfg: ClientConfig) -> Actor:
    """`cls.spawn(cfg)`, retrying while the id is still held by a dead
    predecessor whose connection the Coordinator has not timed out yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DUPLICATE_RETRY_FOR
    while True:
        try:
            return await cls.spawn(cfg)
        except DuplicateId:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(DUPLICATE_RETRY_DELAY)


def _child_env() -> dict[str, str]:
    paths = [p or os.getcwd() for p in sys.path]
    old = os.environ.get("PYTHONPATH")
    if old:
        paths.append(old)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


class _Instance:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.actor: Actor | None = None
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class ActorPool:
    """`size` instances of an `Actor` subclass in group `group`, each restarted
    when it dies. Start with `await ActorPool.start(...)`; reach the
    instances with `client.tell_group(pool.group, ...)` /
    `client.ask_group(pool.group, ...)`; stop with `await pool.stop()` (or
    ``async with``). If instances die `DEATH_LIMIT` (3) times within
    `DEATH_WINDOW` (10) seconds, the pool stops every instance and
    `wait_closed()` raises `PoolFailed`."""

    def __init__(self, cls: type[Actor], cfg_factory: Callable[[int], ClientConfig],
                 size: int, *, processes: bool = True, group: str | None = None) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one instance, not {size}")
        self.cls = cls
        self.cfg_factory = cfg_factory
        self.size = size
        self.processes = processes
        self.group = group if group is not None else cls.__name__.lower()
        #: Instance restarts so far.
        self.restarts = 0
        self._spec = ({"cls": import_path(cls), "cfg": import_path(cfg_factory),
                       "group": self.group} if processes else {})
        self._budget = RestartBudget(DEATH_LIMIT, DEATH_WINDOW)
        self._instances = [_Instance(i) for i in range(size)]
        self._closing = False
        self._error: PoolFailed | None = None
        self._closed = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, actor_cls: type[Actor],
                    cfg_factory: Callable[[int], ClientConfig], size: int, *,
                    processes: bool = True, group: str | None = None) -> ActorPool:
        """Start the pool and wait until every instance serves its mailbox and
        is in the group. Raises `PoolFailed` if instances keep dying."""
        importing = os.environ.get(IMPORTING_ENV)
        if importing:
            raise PoolFailed(
                f"a pool worker importing {importing!r} to find the actor class ran "
                "ActorPool.start: that module starts a pool when imported; put its "
                'program under `if __name__ == "__main__":`, or the Actor class in a '
                "module of its own")
        pool = cls(actor_cls, cfg_factory, size, processes=processes, group=group)
        loop = asyncio.get_running_loop()
        for inst in pool._instances:
            inst.task = loop.create_task(pool._run(inst))
        all_ready: asyncio.Future[list[bool]] = asyncio.gather(
            *(i.ready.wait() for i in pool._instances))
        closed: asyncio.Future[bool] = loop.create_task(pool._closed.wait())
        try:
            done, _ = await asyncio.wait((all_ready, closed), timeout=START_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await pool.stop()
            raise
        finally:
            all_ready.cancel()
            closed.cancel()
            # Retrieve what the cancelled waits ended with (no "never retrieved").
            await asyncio.gather(all_ready, closed, return_exceptions=True)
        if all_ready not in done or all_ready.cancelled():
            await pool.stop()
            if pool._error is not None:
                raise pool._error
            raise PoolFailed(f"{pool.size} {actor_cls.__name__} instances did not "
                             f"start within {START_TIMEOUT:.0f} s")
        return pool

    # -- one instance's life -------------------------------------------------------

    async def _run(self, inst: _Instance) -> None:
        while not self._closing:
            try:
                if self.processes:
                    await self._run_process(inst)
                else:
                    await self._run_task(inst)
            except Exception:
                log.exception("pool %r: instance %d failed to start", self.group,
                              inst.index)
            inst.ready.clear()
            if self._closing:
                return
            if not self._budget.record(time.monotonic()):
                self._fail()
                return
            self.restarts += 1
            log.warning("pool %r: instance %d died; restarting", self.group, inst.index)

    async def _run_process(self, inst: _Instance) -> None:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "conec_actors.pool_worker",
                stdin=asyncio.subprocess.PIPE, pass_fds=(w,), env=_child_env())
        finally:
            os.close(w)
        inst.proc = proc
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
        try:
            assert proc.stdin is not None
            spec = {**self._spec, "index": inst.index, "ready_fd": w}
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            proc.stdin.close()
            if self._closing:
                self._signal(proc, signal.SIGTERM)
            # A line once it serves; end of file if it died first.
            if await reader.readline():
                inst.ready.set()
        finally:
            transport.close()
        code = await proc.wait()
        if not self._closing:
            log.warning("pool %r: instance %d (pid %d) exited with %s", self.group,
                        inst.index, proc.pid, code)

    async def _run_task(self, inst: _Instance) -> None:
        cls = with_group(self.cls, self.group)
        inst.actor = actor = await spawn_retrying(cls, self.cfg_factory(inst.index))
        if self._closing:
            await actor.stop()
            return
        inst.ready.set()
        await actor.wait_stopped()

    def _fail(self) -> None:
        deaths = self._budget.recent
        self._error = PoolFailed(
            f"pool {self.group!r}: {self.cls.__name__} instances died {deaths} times "
            f"within {DEATH_WINDOW:.0f} s; the pool stopped")
        log.error("%s", self._error)
        self._stop_task = self._stop_task or asyncio.get_running_loop().create_task(
            self._stop())

    # -- stopping ------------------------------------------------------------------

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def stop(self) -> None:
        """Stop every instance (processes: SIGTERM, then SIGKILL after
        `STOP_GRACE` seconds; all reaped) and wait until none is left.
        Idempotent; does not raise a failure (`wait_closed` does)."""
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self._closing = True
        me = asyncio.current_task()
        tasks = [i.task for i in self._instances if i.task is not None and i.task is not me]
        if self.processes:
            for inst in self._instances:
                if inst.proc is not None:
                    self._signal(inst.proc, signal.SIGTERM)
            if tasks:
                await asyncio.wait(tasks, timeout=STOP_GRACE)
                for inst in self._instances:
                    if inst.proc is not None:
                        self._signal(inst.proc, signal.SIGKILL)
        else:
            await asyncio.gather(*(i.actor.stop() for i in self._instances
                                   if i.actor is not None), return_exceptions=True)
        for t in tasks:
            if not t.done() and not self.processes:
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for inst in self._instances:  # reaped: every process has been waited for
            if inst.proc is not None and inst.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    inst.proc.kill()
                await inst.proc.wait()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until the pool has stopped; raises `PoolFailed` if it stopped
        because its instances kept dying."""
        await self._closed.wait()
        if self._error is not None:
            raise self._error

    # -- looking in ------------------------------------------------------------------

    def pids(self) -> list[int]:
        """The live instance processes' pids (empty with ``processes=False``)."""
        return [i.proc.pid for i in self._instances
                if i.proc is not None and i.proc.returncode is None]

    @property
    def actors(self) -> list[Actor]:
        """The instances (``processes=False`` only)."""
        return [i.actor for i in self._instances if i.actor is not None]

    @property
    def closed(self) -> bool:
        """True once the pool has stopped."""
        return self._closed.is_set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return f"<ActorPool {self.group!r} {self.cls.__name__} x{self.size} {state}>"

