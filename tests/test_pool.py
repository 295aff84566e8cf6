"""ActorPool: instances in worker processes (or tasks) in one group,
restarted when killed, stopped for good after 3 deaths in 10 s."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from conec_actors import ActorPool, NoResponders, PeerGone, PoolFailed
from conec_actors.pool import import_path

from .conftest import Harness, coordinator, process_alive, wait_for
from .pool_actors import CA_ENV, PORT_ENV, Echo, broken_config, echo_config


def _env(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PORT_ENV, str(h.coord.port))
    monkeypatch.setenv(CA_ENV, h.cert.cert_pem.decode())


async def _members(h: Harness, n: int) -> None:
    caller = h.clients[0]

    async def full() -> bool:
        return len(await caller.group_members("echo")) == n
    await wait_for(full, timeout=20)


@pytest.mark.timeout(60)
async def test_pool_of_three_answers_group_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    async with coordinator() as h:
        _env(h, monkeypatch)
        caller = await h.client("caller")
        pool = await ActorPool.start(Echo, echo_config, 3)
        try:
            assert pool.group == "echo"
            assert sorted(await caller.group_members("echo")) == ["echo-0", "echo-1", "echo-2"]
            pids = set(pool.pids())
            assert len(pids) == 3 and os.getpid() not in pids
            answers = [await caller.ask_group("echo", n) for n in range(9)]
            assert [a["body"] for a in answers] == list(range(9))
            assert {a["pid"] for a in answers} <= pids
            await caller.tell_group("echo", "hello")  # taken by some member
        finally:
            await pool.stop()
        await pool.wait_closed()  # a stopped pool closes without error


async def _ask_until(caller: Any, ask: Any, want: set[int]) -> set[int]:
    """Ask until a pid of `want` answered (30 s at most): the pids seen. An
    ask the caller had routed to a killed instance fails with PeerGone or
    NoResponders (the group semantics) while the successor connects, which
    it does once the Coordinator dropped the killed connection (idle timeout)."""
    seen: set[int] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not want <= seen and loop.time() < deadline:
        try:
            seen.add((await ask())["pid"])
        except (PeerGone, NoResponders):
            pass
        await asyncio.sleep(0.02)
    return seen


@pytest.mark.timeout(90)
async def test_killed_instance_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    async with coordinator() as h:
        _env(h, monkeypatch)
        caller = await h.client("caller")
        async with await ActorPool.start(Echo, echo_config, 3) as pool:
            old = pool.pids()
            os.kill(old[0], signal.SIGKILL)
            await wait_for(lambda: len(pool.pids()) == 3 and old[0] not in pool.pids(),
                           timeout=20)
            new = set(pool.pids()) - set(old)
            assert len(new) == 1
            # the successor is instance 0 again, with a new process
            assert new <= await _ask_until(
                caller, lambda: caller.ask("echo-0", "hi", timeout=5), new)
            await _members(h, 3)
            assert pool.restarts == 1
            # asks to the group keep being answered
            answers = [await caller.ask_group("echo", n, timeout=10) for n in range(6)]
            assert [a["body"] for a in answers] == list(range(6))
        assert not pool.pids()


@pytest.mark.timeout(90)
async def test_group_asks_reach_the_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    async with coordinator() as h:
        _env(h, monkeypatch)
        caller = await h.client("caller")
        async with await ActorPool.start(Echo, echo_config, 3) as pool:
            for n in range(6):
                await caller.ask_group("echo", n)
            old = pool.pids()
            os.kill(old[0], signal.SIGKILL)
            await wait_for(lambda: len(pool.pids()) == 3 and old[0] not in pool.pids(),
                           timeout=20)
            new = set(pool.pids()) - set(old)
            assert new <= await _ask_until(
                caller, lambda: caller.ask_group("echo", "hi", timeout=5), new)


@pytest.mark.timeout(90)
async def test_three_deaths_in_ten_seconds_stop_the_pool(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with coordinator() as h:
        _env(h, monkeypatch)
        pool = await ActorPool.start(Echo, echo_config, 3)
        first = pool.pids()
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(PoolFailed, match=r"Echo instances died 3 times within 10 s"):
            await pool.wait_closed()
        assert pool.closed
        assert not pool.pids()
        await pool.stop()  # idempotent, does not raise
        for pid in first:
            assert not process_alive(pid)


@pytest.mark.timeout(60)
async def test_stop_leaves_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    async with coordinator() as h:
        _env(h, monkeypatch)
        caller = await h.client("caller")
        pool = await ActorPool.start(Echo, echo_config, 2, group="workers")
        pids = pool.pids()
        assert len(pids) == 2 and all(process_alive(p) for p in pids)
        assert sorted(await caller.group_members("workers")) == ["echo-0", "echo-1"]
        await pool.stop()
        for pid in pids:
            assert not process_alive(pid), f"instance {pid} outlived stop()"
        assert pool.restarts == 0  # a stop is not a death
        assert await caller.group_members("workers") == []  # they left cleanly


@pytest.mark.timeout(60)
async def test_pool_of_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    async with coordinator() as h:
        _env(h, monkeypatch)
        caller = await h.client("caller")
        async with await ActorPool.start(Echo, echo_config, 3, processes=False) as pool:
            assert pool.pids() == []
            assert len(pool.actors) == 3
            assert sorted(await caller.group_members("echo")) == ["echo-0", "echo-1", "echo-2"]
            answers = [await caller.ask_group("echo", n) for n in range(6)]
            assert {a["pid"] for a in answers} == {os.getpid()}
            # an instance that stops by itself is restarted
            await pool.actors[0].stop()
            await wait_for(lambda: pool.restarts == 1 and len(pool.actors) == 3
                           and not any(a.stopped for a in pool.actors), timeout=20)
            await _members(h, 3)
        assert all(a.stopped for a in pool.actors)


def test_import_path_needs_a_module_level_object() -> None:
    assert import_path(Echo) == "tests.pool_actors:Echo"
    assert import_path(echo_config) == "tests.pool_actors:echo_config"

    def local() -> None: ...
    with pytest.raises(TypeError, match="importable"):
        import_path(local)


async def test_pool_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        await ActorPool.start(Echo, echo_config, 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("processes", [True, False])
async def test_start_raises_when_instances_keep_dying(processes: bool) -> None:
    with pytest.raises(PoolFailed, match="Echo instances died 3 times"):
        await ActorPool.start(Echo, broken_config, 2, processes=processes)


UNGUARDED = '''
import asyncio, sys
from conec_actors import Actor, ActorPool, ClientConfig, Coord, CoordConfig, PoolFailed
from conec_actors.certs import self_signed

class Worker(Actor):
    pass

def config(i):
    return ClientConfig(f"w-{i}", "localhost", addr=("127.0.0.1", 1), ca=b"")

async def main():
    ck = self_signed(["localhost"])
    async with Coord.start(CoordConfig(ck.cert_pem, ck.key_pem, port=0)):
        try:
            await ActorPool.start(Worker, config, 1)
        except PoolFailed as exc:
            print("parent:", exc)
            sys.exit(3)

asyncio.run(main())  # no __main__ guard
'''


@pytest.mark.timeout(90)
async def test_a_script_that_starts_a_pool_when_imported_fails_clearly(
        tmp_path: Path) -> None:
    """A pool worker re-imports a script without a `__main__` guard: the
    pool it would start there fails with a clear error, no pool of pools."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 80)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 3, (out, err)
    assert b"died 3 times" in out
    # each worker's own attempt said why (the script prints it to the shared stdout)
    assert b"starts a pool when imported" in out
    assert b"never retrieved" not in err
