"""Back-pressure per stream with many stalled streams (DESIGN 5): a reader
that stops reading makes its writer wait, while every other stream on the
same connections keeps flowing, however many streams stall.

With a connection window of 6 MiB and 256 KiB per stream, 24 stalled
streams used to exhaust a connection's credit and stall all of it. Here 40
streams stall, through a real Coordinator (which holds what it could not
forward, on the writer's connection) and over a direct channel, and the
writer's and the reader's other streams, asks and control messages carry
several megabytes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from conec_actors import Client, IncomingStream, OutStream

from .conftest import coordinator

STALLED = 40
CHUNK = b"s" * 65536
#: More than a connection window: credit left over from before the stall
#: cannot carry it.
FLOW_BYTES = 8 * 1024 * 1024


async def fill(sends: list[OutStream]) -> tuple[list[asyncio.Task[None]], list[int]]:
    """Write to every stream until its writer has to wait; returns the
    writers (still waiting) and how many chunks each got out."""
    counts = [0] * len(sends)

    async def writer(i: int, send: OutStream) -> None:
        while True:
            await send.send(CHUNK)
            counts[i] += 1

    tasks = [asyncio.create_task(writer(i, s)) for i, s in enumerate(sends)]
    last: list[int] = []
    while counts != last:  # until no writer moved for a while
        last = list(counts)
        await asyncio.sleep(0.5)
    assert all(counts), "every stalled stream got some data out"
    assert not any(t.done() for t in tasks)
    return tasks, counts


async def stream_through(send: OutStream, recv: IncomingStream | Any, nbytes: int) -> None:
    """Send `nbytes` on one stream while the other end reads them all."""
    chunk = b"f" * 32768
    n = nbytes // len(chunk)

    async def write() -> None:
        for _ in range(n):
            await send.send(chunk)

    async def read() -> None:
        for _ in range(n):
            assert await recv.recv() == chunk

    await asyncio.gather(write(), read())


async def serve_asks(client: Client) -> None:
    async for env in client.mailbox:
        await env.reply(env.body)


async def cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


@pytest.mark.timeout(120)
async def test_forty_unread_proxied_streams_stall_only_themselves() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        c, d = await h.client("carol"), await h.client("dave")
        e, f = await h.client("erin"), await h.client("frank")
        servers = [asyncio.create_task(serve_asks(x)) for x in (c, d)]
        incoming = b.incoming.__aiter__()
        incoming_e = e.incoming.__aiter__()
        sends, unread = [], []
        # One opener may hold at most 32 streams to one target (DESIGN 3.1),
        # so 40 stall on alice's connection (to bob and to erin) and 40 on
        # bob's (from alice and from frank).
        for opener, target, at in ((a, "bob", incoming), (a, "erin", incoming_e),
                                   (f, "bob", incoming)):
            for _ in range(STALLED // 2):
                send, _ = await opener.new_proxied_stream(target)
                sends.append(send)
                unread.append(await asyncio.wait_for(anext(at), 5))  # never read
        writers: list[asyncio.Task[None]] = []
        try:
            writers, counts = await fill(sends)
            # Alice's other streams through her connection: a new stream
            # (opened over the control stream), megabytes on it, asks.
            send_c, _ = await a.new_proxied_stream("carol")
            at_c = await asyncio.wait_for(anext(c.incoming.__aiter__()), 5)
            await asyncio.wait_for(stream_through(send_c, at_c.recv, FLOW_BYTES), 60)
            for i in range(20):
                assert await a.ask("carol", i) == i
            # Bob's other streams through his: from Dave, and his own asks.
            send_d, _ = await d.new_proxied_stream("bob")
            at_b = await asyncio.wait_for(anext(incoming), 5)
            assert at_b.peer == "dave"
            await asyncio.wait_for(stream_through(send_d, at_b.recv, FLOW_BYTES), 60)
            for i in range(20):
                assert await b.ask("dave", i) == i
            # The stalled writers are still waiting, and nothing was lost:
            # a stalled stream read now gives every chunk, in order.
            assert not any(t.done() for t in writers)
            before = counts[0]
            for _ in range(before):
                assert await unread[0].recv.recv() == CHUNK
        finally:
            await cancel(writers + servers)


@pytest.mark.timeout(120)
async def test_forty_unread_direct_streams_stall_only_themselves() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        servers = [asyncio.create_task(serve_asks(x)) for x in (a, b)]
        await a.new_channel("bob")
        incoming = b.incoming.__aiter__()
        sends, unread = [], []
        for _ in range(STALLED):
            send, _ = await a.new_direct_stream("bob")
            sends.append(send)
            await send.send(b"hello")  # a direct stream shows up with its first data
            unread.append(await asyncio.wait_for(anext(incoming), 5))  # never read
        writers: list[asyncio.Task[None]] = []
        try:
            writers, counts = await fill(sends)
            # The same channel's other streams, both ways, and asks both ways.
            send_ab, _ = await a.new_direct_stream("bob")
            await send_ab.send(b"hello")
            at_b = await asyncio.wait_for(anext(incoming), 5)
            assert await at_b.recv.recv() == b"hello"
            await asyncio.wait_for(stream_through(send_ab, at_b.recv, FLOW_BYTES), 60)
            send_ba, _ = await b.new_direct_stream("alice")
            await send_ba.send(b"hello")
            at_a = await asyncio.wait_for(anext(a.incoming.__aiter__()), 5)
            assert await at_a.recv.recv() == b"hello"
            await asyncio.wait_for(stream_through(send_ba, at_a.recv, FLOW_BYTES), 60)
            for i in range(20):
                assert await b.ask("alice", i) == i
                assert await a.ask("bob", i) == i
            assert a.mailbox.route("bob") == "direct"
            assert not any(t.done() for t in writers)
            assert await unread[0].recv.recv() == b"hello"
            for _ in range(counts[0]):
                assert await unread[0].recv.recv() == CHUNK
        finally:
            await cancel(writers + servers)
