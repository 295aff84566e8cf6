"""Keepalive, idle timeout and clients that vanish without a word."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conec_actors import ClientClosed, StreamReset

from .conftest import coordinator, wait_for


async def _count(h: Any) -> int:
    return int(await h.coord.num_clients())


async def test_keepalive_keeps_an_idle_client_connected() -> None:
    async with coordinator(idle_timeout=1.0) as h:
        a = await h.client("alice", idle_timeout=1.0)
        b = await h.client("bob", idle_timeout=1.0)
        await asyncio.sleep(3.0)  # three idle timeouts with nothing to say
        assert not a.is_closed and await _count(h) == 2
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"still here")
        inc = await asyncio.wait_for(b.incoming.__aiter__().__anext__(), 5)
        assert await inc.recv.recv() == b"still here"


async def test_without_keepalive_an_idle_client_is_dropped() -> None:
    async with coordinator(idle_timeout=1.0) as h:
        a = await h.client("alice", keepalive=False, idle_timeout=5.0)
        await wait_for(lambda: a.is_closed, timeout=6)
        await wait_for(lambda: _zero(h), timeout=6)
        with pytest.raises(ClientClosed):
            await a.new_proxied_stream("alice")


async def _zero(h: Any) -> bool:
    return await _count(h) == 0


async def test_vanished_client_is_dropped_and_its_id_freed() -> None:
    async with coordinator(idle_timeout=1.0) as h:
        a = await h.client("alice")
        ghost = await h.client("ghost")
        send, recv = await a.new_proxied_stream("ghost")
        await send.send(b"x")
        await asyncio.wait_for(ghost.incoming.__aiter__().__anext__(), 5)
        ghost._endpoint.close()  # the process "dies": no close reaches anyone
        with pytest.raises(StreamReset):
            await asyncio.wait_for(recv.recv(), 6)
        await wait_for(lambda: _one(h), timeout=6)
        again = await h.client("ghost")  # the id is free again
        assert again.id == "ghost"


async def _one(h: Any) -> bool:
    return await _count(h) == 1
