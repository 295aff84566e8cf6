"""Every task the mailbox starts is owned: `Client.close` cancels and awaits
the pairs' writers and the return halves' writers."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import coordinator

MAILBOX_TASKS = ("Outbox._write", "Receiver._write_back")


def mailbox_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") in MAILBOX_TASKS]


@pytest.mark.parametrize("path", ["proxied", "direct"])
async def test_close_awaits_every_mailbox_task(path: str) -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        if path == "direct":
            await a.new_channel("bob")

        async def serve() -> None:
            async for env in b.mailbox:
                await env.reply(env.body)

        server = asyncio.create_task(serve())
        await a.tell("bob", b"hello")
        assert await a.ask("bob", b"ping") == b"ping"
        await b.tell("alice", b"back")  # a pair writer on each side
        # Each side has a pair writer and a return-half writer at least.
        assert len(mailbox_tasks()) >= 4
        await a.close()
        await b.close()
        # No sleep: close() itself awaited them.
        assert mailbox_tasks() == []
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
