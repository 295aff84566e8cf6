"""Death watch with real clients and a real Coordinator (DESIGN 11):
`client.watch(peer)` -> `Watch`, `await watch.wait()` -> `Terminated`."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from conec_actors import Actor, ClientClosed, ProtocolError, Terminated, Watch
from conec_actors.coord.watches import MAX_WATCHES

from .conftest import client_process, coordinator, wait_for


async def test_left_when_the_peer_closes() -> None:
    async with coordinator() as h:
        w = await h.client("w")
        p = await h.client("p")
        watch = await w.watch("p")
        assert isinstance(watch, Watch) and not watch.done()
        await p.close()
        assert await watch.wait() == Terminated("p", "left")
        # The same verdict every time it is awaited: one Terminated per Watch.
        assert await watch.wait() == Terminated("p", "left")
        assert watch.cancel() is False


async def test_not_connected() -> None:
    async with coordinator() as h:
        w = await h.client("w")
        for peer in ("nobody", "Not_An_Id"):
            watch = await w.watch(peer)
            assert await watch.wait() == Terminated(peer, "not-connected")
        # A peer that left before being watched is not connected either.
        p = await h.client("p")
        await p.close()
        await wait_for(lambda: _clients(h, 1))
        assert await (await w.watch("p")).wait() == Terminated("p", "not-connected")


async def _clients(h: Any, n: int) -> bool:
    return bool(await h.coord.num_clients() == n)


async def test_two_watches_on_one_peer_each_get_one() -> None:
    async with coordinator() as h:
        w = await h.client("w")
        x = await h.client("x")
        p = await h.client("p")
        w1, w2 = await w.watch("p"), await w.watch("p")
        wx = await x.watch("p")
        await p.close()
        # Every watcher gets the same verdict.
        got = await asyncio.gather(w1.wait(), w2.wait(), wx.wait())
        assert list(got) == [Terminated("p", "left")] * 3
        assert (await h.coord.stats())["watches"] == 0


async def test_cancel() -> None:
    async with coordinator() as h:
        w = await h.client("w")
        p = await h.client("p")
        cancelled = await w.watch("p")
        kept = await w.watch("p")
        waiter = asyncio.ensure_future(cancelled.wait())
        await asyncio.sleep(0)
        assert cancelled.cancel() is True
        with pytest.raises(asyncio.CancelledError):
            await waiter
        with pytest.raises(asyncio.CancelledError):
            await cancelled.wait()
        assert cancelled.done()
        # The Coordinator forgot it (only `kept` is left).
        await wait_for(lambda: _stat(h, "watches", 1))
        # Cancelling a wait() does not cancel the watch.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(kept.wait(), 0.05)
        await p.close()
        assert await kept.wait() == Terminated("p", "left")


async def _stat(h: Any, key: str, value: int) -> bool:
    return bool((await h.coord.stats())[key] == value)


async def test_watcher_losing_its_coordinator_gets_client_closed() -> None:
    async with coordinator() as h:
        w = await h.client("w")
        await h.client("p")
        watch = await w.watch("p")
        await h.coord.close()
        with pytest.raises(ClientClosed):
            await watch.wait()
        with pytest.raises(ClientClosed):
            await w.watch("p")


async def test_watcher_closing_ends_its_watches() -> None:
    async with coordinator() as h:
        w = await h.client("w")
        await h.client("p")
        watch = await w.watch("p")
        await w.close()
        with pytest.raises(ClientClosed):
            await watch.wait()
        # The Coordinator dropped the watches of the watcher that left.
        await wait_for(lambda: _stat(h, "watches", 0))


@pytest.mark.timeout(60)
async def test_watch_limit_per_client() -> None:
    async with coordinator() as h:
        w = await h.client("w")
        await h.client("p")
        watches = await asyncio.gather(*(w.watch("p") for _ in range(MAX_WATCHES)))
        with pytest.raises(ProtocolError):
            await w.watch("p")
        # Not-connected peers cost nothing and are still answered.
        assert await (await w.watch("nobody")).wait() == Terminated("nobody", "not-connected")
        # Another client has its own allowance.
        x = await h.client("x")
        assert not (await x.watch("p")).done()
        # A cancelled watch frees its place.
        watches[0].cancel()
        again = await w.watch("p")
        assert not again.done()


@pytest.mark.timeout(60)
async def test_terminated_comes_after_every_tell() -> None:
    n = 1000
    async with coordinator() as h:
        w = await h.client("w")
        p = await h.client("p")
        watch = await w.watch("p")
        for i in range(n):
            await p.tell("w", i)
        await p.close()
        assert await watch.wait() == Terminated("p", "left")
        # Every tell is in the mailbox already, in order.
        assert w.mailbox.queued == n
        got = []
        async for env in w.mailbox:
            got.append(env.body)
            if len(got) == n:
                break
        assert got == list(range(n))


@pytest.mark.timeout(60)
async def test_terminated_after_tells_over_a_direct_channel() -> None:
    n = 500
    async with coordinator() as h:
        w = await h.client("w")
        p = await h.client("p")
        await p.new_channel("w")
        watch = await w.watch("p")
        for i in range(n):
            await p.tell("w", i)
        await p.close()
        assert await watch.wait() == Terminated("p", "left")
        assert w.mailbox.queued == n


@pytest.mark.timeout(30)
async def test_vanished_when_the_peer_is_killed() -> None:
    async with coordinator() as h:
        w = await h.client("w")
        body = """
            print("ready", flush=True)
            await asyncio.sleep(3600)
        """
        async with client_process(h, "doomed", body) as proc:
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"ready\n"
            watch = await w.watch("doomed")
            assert not watch.done()
            os.kill(proc.pid, signal.SIGKILL)
            assert await watch.wait() == Terminated("doomed", "vanished")


class Watcher(Actor):
    def __init__(self) -> None:
        self.log: list[Any] = []
        self.ended = asyncio.Event()

    async def receive(self, sender: str, body: Any) -> Any:
        self.log.append((sender, body))
        if body == "watch":
            await self.watch(sender)
        await asyncio.sleep(0)  # a receive that yields: on_terminated must not interleave
        return None

    async def on_terminated(self, peer: str, reason: str) -> None:
        self.log.append(("terminated", peer, reason))
        self.ended.set()


@pytest.mark.timeout(60)
async def test_actor_on_terminated_after_the_peers_tells() -> None:
    async with coordinator() as h:
        async with await Watcher.spawn(h.config("watcher")) as actor:
            p = await h.client("p")
            await p.ask("watcher", "watch")  # the watch is in place once answered
            for i in range(300):
                await p.tell("watcher", i)
            await p.close()
            await asyncio.wait_for(actor.ended.wait(), 20)
            assert actor.log[-1] == ("terminated", "p", "left")
            assert actor.log[1:-1] == [("p", i) for i in range(300)]
            # Watching someone not connected calls back at once.
            actor.ended.clear()
            await actor.watch("ghost")
            await asyncio.wait_for(actor.ended.wait(), 5)
            assert actor.log[-1] == ("terminated", "ghost", "not-connected")


@pytest.mark.timeout(60)
async def test_the_verdict_waits_for_tells_the_watcher_has_not_read_yet() -> None:
    # More tells than the inbox holds, and the watcher does not read: the
    # rest stays in the mailbox stream, the peer's close gives up draining
    # (after client.CLOSE_DRAIN) and leaves. The verdict is held until the
    # watcher has read what that stream still brings.
    n = 1500
    async with coordinator() as h:
        w = await h.client("w")
        p = await h.client("p")
        watch = await w.watch("p")
        for i in range(n):
            await p.tell("w", i)
        await p.close()
        # The verdict came and is held (the watcher has not read).
        await wait_for(lambda: bool(w._watches._held), timeout=15)
        assert not watch.done()
        assert w.mailbox.reading_from("p")
        got: list[int] = []

        async def read() -> None:
            async for env in w.mailbox:
                got.append(env.body)

        reader = asyncio.ensure_future(read())
        try:
            assert await watch.wait() == Terminated("p", "left")
            # Everything the stream brought is in the inbox or read by now.
            assert not w.mailbox.reading_from("p")
            at_verdict = len(got) + w.mailbox.queued
            await wait_for(lambda: w.mailbox.queued == 0)  # the reader took the rest
            assert len(got) == at_verdict  # and nothing came after the verdict
            assert got == list(range(len(got))) and len(got) > 1024
        finally:
            reader.cancel()


async def test_a_cancelled_watch_call_leaves_no_watch_behind() -> None:
    async with coordinator() as h:
        w = await h.client("w")
        p = await h.client("p")
        first = await w.watch("p")
        call = asyncio.ensure_future(w.watch("p"))
        await asyncio.sleep(0)  # its request is on its way
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        last = await w.watch("p")  # answered after the cancel was acted on
        assert (await h.coord.stats())["watches"] == 2
        await p.close()
        assert [await first.wait(), await last.wait()] == [Terminated("p", "left")] * 2
