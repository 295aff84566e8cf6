"""Every task and timer the Coordinator starts has an owner that ends it: once
`Coord` has stopped, nothing it started is still alive."""

from __future__ import annotations

import asyncio

import pytest

from conec_actors import BroadcastMessage

from .conftest import coordinator
from .test_proxied import next_incoming


def _armed_timers(loop: asyncio.AbstractEventLoop) -> set[asyncio.TimerHandle]:
    """Timers armed and not cancelled (the loop's list of them is private;
    asyncio has no public one)."""
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled", [])
    return {h for h in scheduled if not h.cancelled()}


@pytest.mark.timeout(60)
async def test_no_task_or_timer_of_the_coordinator_outlives_it() -> None:
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks()
    timers_before = _armed_timers(loop)
    async with coordinator(broadcast_workers=2) as h:
        a, b = await h.client("alice"), await h.client("bob")
        # a proxied stream
        send, recv = await a.new_proxied_stream("bob")
        await send.send(b"ping")
        inc = await next_incoming(b)
        assert await inc.recv.recv() == b"ping"
        await inc.send.send(b"pong")
        assert await recv.recv() == b"pong"
        # a broadcast
        sa, ra = await a.new_broadcast("room")
        _sb, rb = await b.new_broadcast("room")
        await sa.send(b"hi")
        assert await rb.recv() == BroadcastMessage("alice", b"hi")
        assert await ra.recv() == BroadcastMessage("alice", b"hi")
        # a channel introduction (arms the offer's and the dialing's timers)
        await a.new_channel("bob")
        # the workers run and answer
        assert (await h.coord.stats())["clients"] == 2
    # clients closed, Coordinator stopped
    left = asyncio.all_tasks() - before
    assert not left, left
    assert not _armed_timers(loop) - timers_before
