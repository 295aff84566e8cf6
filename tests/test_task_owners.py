"""Every task a Client or an Actor starts has an owner that ends it: after
`Client.close()` / `Actor.stop()` returns, none of them is still alive."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from conec_actors import Actor, Client, ConecError, IncomingStream

from .conftest import Harness, coordinator, wait_for


def alive_since(before: set[asyncio.Task[Any]]) -> list[str]:
    """Tasks started since `before` that are not done (the test's own aside)."""
    me = asyncio.current_task()
    return sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks()
                  if t not in before and t is not me and not t.done())


async def next_incoming(client: Client) -> IncomingStream:
    return await asyncio.wait_for(client.incoming.__aiter__().__anext__(), 10)


async def use_every_path(h: Harness, a: Client, b: Client) -> None:
    """Proxied and direct streams, a channel, a broadcast, tell and ask."""
    send, _ = await a.new_proxied_stream("bob")
    await send.send(b"proxied")
    inc = await next_incoming(b)
    assert await inc.recv.recv() == b"proxied"
    await a.new_channel("bob")
    dsend, _ = await a.new_direct_stream("bob")
    await dsend.send(b"direct")
    dinc = await next_incoming(b)
    assert await dinc.recv.recv() == b"direct"
    sa, ra = await a.new_broadcast("room")
    _sb, rb = await b.new_broadcast("room")
    await sa.send(b"all")
    assert (await rb.recv()).data == b"all"
    assert (await ra.recv()).data == b"all"

    async def serve() -> None:
        async for env in b.mailbox:
            if env.is_ask:
                await env.reply(env.body)

    server = asyncio.get_running_loop().create_task(serve())
    try:
        await a.tell("bob", "told")
        assert await a.ask("bob", "asked", timeout=10) == "asked"
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


async def test_no_task_outlives_a_closed_client() -> None:
    async with coordinator() as h:
        before = set(asyncio.all_tasks())
        a, b = await h.client("alice"), await h.client("bob")
        await use_every_path(h, a, b)
        assert alive_since(before)  # the clients do run tasks meanwhile
        await a.close()
        await b.close()
        assert alive_since(before) == []


async def test_no_task_outlives_clients_closed_while_a_channel_opens() -> None:
    async with coordinator() as h:
        before = set(asyncio.all_tasks())
        a, b = await h.client("alice"), await h.client("bob")
        # bob never accepts the dial: alice keeps dialling, bob keeps knocking
        b._endpoint.server = None
        opening = asyncio.get_running_loop().create_task(a.new_channel("bob"))
        await wait_for(lambda: "alice" in b.channels() or "alice" in b._channels)
        await asyncio.sleep(0.2)  # bob's knocks and alice's dial are under way
        await b.close()
        await a.close()
        with contextlib.suppress(ConecError):
            await opening
        assert alive_since(before) == []


class Echo(Actor):
    async def receive(self, sender: str, body: Any) -> Any:
        return body

    async def on_stream(self, incoming: IncomingStream) -> None:
        with contextlib.suppress(ConecError):  # the caller stops first
            async for msg in incoming.recv:
                await incoming.send.send(msg)


async def test_no_task_outlives_a_stopped_actor() -> None:
    async with coordinator() as h:
        before = set(asyncio.all_tasks())
        echo = await Echo.spawn(h.config("echo"))
        caller = await Echo.spawn(h.config("caller"))
        await caller.client.new_channel("echo")
        assert await caller.client.ask("echo", "hi", timeout=10) == "hi"
        await caller.client.tell("echo", "told")
        send, recv = await caller.client.new_proxied_stream("echo")
        await send.send(b"ping")
        assert await recv.recv() == b"ping"
        dsend, drecv = await caller.client.new_direct_stream("echo")
        await dsend.send(b"pong")
        assert await drecv.recv() == b"pong"
        bsend, brecv = await caller.client.new_broadcast("room")
        await bsend.send(b"all")
        assert (await brecv.recv()).data == b"all"
        assert alive_since(before)
        await caller.stop()
        await echo.stop()
        assert alive_since(before) == []


async def test_no_task_outlives_an_actor_whose_client_closed_under_it() -> None:
    async with coordinator() as h:
        before = set(asyncio.all_tasks())
        echo = await Echo.spawn(h.config("echo"))
        await echo.client.close()  # the mailbox ends: the actor stops itself
        await asyncio.wait_for(echo.wait_stopped(), 10)
        await echo.stop()
        assert alive_since(before) == []
