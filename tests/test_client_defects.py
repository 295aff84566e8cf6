"""Regression tests for correctness defects of the client and the actor layer
(issue 9): the drain on close, simultaneous channel opens, concurrent users
of one stream, a failing command task, replies and tells over a smaller
limit of the path."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from conec_actors import (
    Actor,
    ChannelExists,
    Client,
    ClientClosed,
    MessageTooLarge,
    RemoteError,
    StreamClosed,
    StreamReset,
)
from conec_actors.client.link import StreamLink

from .conftest import Harness, coordinator, wait_for

PATHS = ["proxied", "direct"]


async def pair(h: Harness, path: str, **b_kw: Any) -> tuple[Client, Client]:
    a, b = await h.client("alice"), await h.client("bob", **b_kw)
    if path == "direct":
        await a.new_channel("bob")
    return a, b


async def read_bodies(client: Client, n: int, timeout: float = 20.0) -> list[Any]:
    out: list[Any] = []

    async def run() -> None:
        async for env in client.mailbox:
            out.append(env.body)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


# --- close() delivers what tell() accepted ------------------------------------------

@pytest.mark.parametrize("n", [500, 3000])
@pytest.mark.parametrize("path", PATHS)
async def test_close_delivers_every_accepted_tell_in_order(path: str, n: int) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        reader = asyncio.create_task(read_bodies(b, n))
        for i in range(n):
            await a.tell("bob", [i, "x" * 100])
        await a.close()
        got = await reader
        assert [m[0] for m in got] == list(range(n))


@pytest.mark.parametrize("path", PATHS)
async def test_actor_stop_delivers_the_tells_it_made(path: str) -> None:
    class Quiet(Actor):
        async def receive(self, sender: str, body: Any) -> Any:
            return None

    async with coordinator() as h:
        b = await h.client("bob")
        actor = await Quiet.spawn(h.config("teller"))
        try:
            if path == "direct":
                await actor.client.new_channel("bob")
            reader = asyncio.create_task(read_bodies(b, 1000))
            for i in range(1000):
                await actor.client.tell("bob", [i, "x" * 100])
            await actor.stop()
            assert [m[0] for m in await reader] == list(range(1000))
        finally:
            await actor.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", PATHS)
async def test_a_receiver_that_does_not_read_bounds_the_drain(path: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        sent = 0

        async def writer() -> None:
            nonlocal sent
            while True:
                await a.tell("bob", [sent, b"x" * 500])
                sent += 1

        task = asyncio.create_task(writer())
        last = -1
        while sent != last:  # bob never reads: the writer stalls
            last = sent
            await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.wait_for(a.close(), 30)  # returns: the drain is bounded
        assert a.is_closed
        with pytest.raises(ClientClosed):
            await a.tell("bob", "late")
        # what arrived arrived in order
        got = await read_bodies(b, 100)
        assert [m[0] for m in got] == list(range(100))


# --- simultaneous new_channel ----------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("routing_workers", [1, 3])
async def test_simultaneous_new_channel_exactly_one_wins(routing_workers: int) -> None:
    async with coordinator(routing_workers=routing_workers) as h:
        for k in range(6):
            a = await h.client(f"a{k}")
            b = await h.client(f"b{k}")
            calls = [a.new_channel(b.id), b.new_channel(a.id)]
            if k % 2:  # the higher id starts first
                calls.reverse()
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True),
                                             20)
            winners = [r for r in results if r is None]
            losers = [r for r in results if isinstance(r, ChannelExists)]
            assert len(winners) == 1 and len(losers) == 1, results
            # the winner's channel is registered on both sides: streams go both ways
            assert a.channels() == [b.id] and b.channels() == [a.id]
            s1, _ = await a.new_direct_stream(b.id)
            s2, _ = await b.new_direct_stream(a.id)
            await s1.send(b"from a")
            await s2.send(b"from b")
            inc_b = await asyncio.wait_for(anext(b.incoming), 5)
            inc_a = await asyncio.wait_for(anext(a.incoming), 5)
            assert await inc_b.recv.recv() == b"from a"
            assert await inc_a.recv.recv() == b"from b"
            await a.close()
            await b.close()


# --- several tasks on one stream ----------------------------------------------------------

async def stream_pair(h: Harness) -> tuple[Any, Any]:
    a, b = await h.client("alice"), await h.client("bob")
    send, recv_back = await a.new_proxied_stream("bob")
    await send.send(b"hello")
    inc = await asyncio.wait_for(anext(b.incoming), 5)
    assert await inc.recv.recv() == b"hello"
    return (send, recv_back), inc


async def test_concurrent_senders_each_message_whole_and_once() -> None:
    async with coordinator() as h:
        (send, _), inc = await stream_pair(h)
        n, size = 60, 64 * 1024  # far above the high watermark: senders wait

        async def sender(tag: int) -> None:
            for i in range(n):
                await send.send(bytes([tag]) + i.to_bytes(4, "big") + bytes([tag]) * size)

        senders = asyncio.gather(sender(1), sender(2))
        await wait_for(lambda: len(send._core._writers) == 2)  # both wait on back-pressure
        got: list[tuple[int, int]] = []
        while len(got) < 2 * n:
            m = await asyncio.wait_for(inc.recv.recv(), 10)
            assert m[5:] == bytes([m[0]]) * size  # whole
            got.append((m[0], int.from_bytes(m[1:5], "big")))
        await asyncio.wait_for(senders, 10)
        for tag in (1, 2):
            assert [i for t, i in got if t == tag] == list(range(n))


async def test_concurrent_receivers_each_message_to_exactly_one() -> None:
    async with coordinator() as h:
        (send, _), inc = await stream_pair(h)

        async def receiver() -> list[int]:
            out: list[int] = []
            with pytest.raises(StreamClosed):
                while True:
                    out.append(int(await inc.recv.recv()))
                    await asyncio.sleep(0)
            return out

        readers = asyncio.gather(receiver(), receiver())
        await wait_for(lambda: len(inc.recv._core._readers) == 2)  # both are waiting
        for i in range(500):
            await send.send(str(i).encode())
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await send.finish()
        r1, r2 = await asyncio.wait_for(readers, 10)
        assert sorted(r1 + r2) == list(range(500))


async def test_concurrent_receivers_both_see_the_reset() -> None:
    async with coordinator() as h:
        (send, _), inc = await stream_pair(h)

        async def receiver() -> BaseException:
            try:
                await inc.recv.recv()
            except (StreamReset, StreamClosed) as exc:
                return exc
            raise AssertionError("got a message")

        readers = asyncio.gather(receiver(), receiver())
        await wait_for(lambda: len(inc.recv._core._readers) == 2)
        send.reset(7)
        r1, r2 = await asyncio.wait_for(readers, 10)
        assert isinstance(r1, StreamReset) and isinstance(r2, StreamReset)
        assert r1.code == r2.code == 7


async def test_concurrent_blocked_senders_both_end_when_the_reader_closes() -> None:
    async with coordinator() as h:
        (send, _), inc = await stream_pair(h)

        async def sender() -> BaseException:
            try:
                while True:
                    await send.send(b"x" * 65536)
            except (StreamReset, StreamClosed) as exc:
                return exc

        senders = asyncio.gather(sender(), sender())
        await wait_for(lambda: len(send._core._writers) == 2)  # both block: nobody reads
        inc.recv.close()
        r1, r2 = await asyncio.wait_for(senders, 10)
        assert isinstance(r1, StreamReset) and isinstance(r2, StreamReset)


# --- the command task fails closed ------------------------------------------------------------

async def test_a_bug_in_the_command_task_fails_every_call_with_client_closed(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async with coordinator() as h:
        a, _b = await h.client("alice"), await h.client("bob")
        pending_ask = asyncio.create_task(a.ask("bob", "never answered", timeout=None))
        await wait_for(lambda: a.mailbox.pending_asks == 1)

        def boom(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("injected bug")

        # One internal function, in this test only: opening a stream breaks.
        monkeypatch.setattr(StreamLink, "open_stream", boom)
        caplog.set_level(logging.ERROR)
        calls = await asyncio.wait_for(asyncio.gather(
            a.new_proxied_stream("bob"), a.new_proxied_stream("bob"),
            a.new_channel("bob"), a.close_channel("bob"), return_exceptions=True), 10)
        calls.append(await asyncio.wait_for(
            asyncio.gather(pending_ask, return_exceptions=True), 10))
        for later in (a.new_proxied_stream("bob"), a.new_channel("bob"),
                      a.new_direct_stream("bob"), a.tell("bob", 1), a.ask("bob", 1)):
            calls.append((await asyncio.wait_for(
                asyncio.gather(later, return_exceptions=True), 10))[0])
        for r in calls:
            r = r[0] if isinstance(r, list) else r
            assert isinstance(r, ClientClosed), r
            assert isinstance(r.__cause__, RuntimeError), r
        assert a.is_closed
        await asyncio.wait_for(a.close(), 10)
        logged = [r for r in caplog.records
                  if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
        assert len(logged) == 1


# --- limits of the path ----------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
async def test_a_reply_over_the_pair_limit_fails_the_ask_and_the_path_survives(
        path: str) -> None:
    # alice (the asker) allows 4 KiB, bob 16 MiB: bob's answers must fit 4 KiB.
    async with coordinator() as h:
        a = await h.client("alice", max_message_size=4096)
        b = await h.client("bob")
        if path == "direct":
            await a.new_channel("bob")
        errors: list[BaseException] = []

        async def serve() -> None:
            async for env in b.mailbox:
                try:
                    await env.reply(b"y" * env.body)
                except MessageTooLarge as exc:
                    errors.append(exc)

        server = asyncio.create_task(serve())
        try:
            assert await a.ask("bob", 10, timeout=5) == b"y" * 10
            with pytest.raises(RemoteError) as info:
                await a.ask("bob", 10_000, timeout=5)
            assert info.value.type_name == "MessageTooLarge"
            assert len(errors) == 1
            # the return path still works, also for replies that are batched
            for _ in range(3):
                got = await asyncio.wait_for(asyncio.gather(
                    *(a.ask("bob", 1500, timeout=5) for _ in range(8))), 10)
                assert got == [b"y" * 1500] * 8
        finally:
            server.cancel()


@pytest.mark.parametrize("path", PATHS)
async def test_tell_and_ask_over_the_pair_limit_raise_at_the_call(path: str) -> None:
    # alice allows 16 MiB, bob only 4 KiB: the pair's limit is bob's.
    async with coordinator() as h:
        a, b = await pair(h, path, max_message_size=4096)
        await a.tell("bob", 0)
        with pytest.raises(MessageTooLarge):
            await a.tell("bob", b"x" * 5000)
        with pytest.raises(MessageTooLarge):
            await a.ask("bob", b"x" * 5000, timeout=2)
        for i in range(1, 200):
            await a.tell("bob", i)
        assert await read_bodies(b, 200) == list(range(200))
        assert a.mailbox.route("bob") == path


@pytest.mark.parametrize("path", PATHS)
async def test_first_tell_over_the_pair_limit_raises(path: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path, max_message_size=4096)
        with pytest.raises(MessageTooLarge):
            await a.tell("bob", b"x" * 5000)
        await a.tell("bob", "after")
        assert await read_bodies(b, 1) == ["after"]
