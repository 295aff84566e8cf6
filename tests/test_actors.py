"""tell / ask / mailbox / Actor, over proxied and direct paths."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
import pytest

from conec_actors import (
    Actor,
    Client,
    ClientClosed,
    Envelope,
    IncomingStream,
    MessageTooLarge,
    NoSuchPeer,
    PeerGone,
    RemoteError,
)

from .conftest import Harness, coordinator, wait_for

PATHS = ["proxied", "direct"]


async def pair(h: Harness, path: str, a_id: str = "alice", b_id: str = "bob"
               ) -> tuple[Client, Client]:
    a, b = await h.client(a_id), await h.client(b_id)
    if path == "direct":
        await a.new_channel(b_id)
    return a, b


async def collect(client: Client, n: int, timeout: float = 10.0) -> list[Envelope[Any]]:
    """Read `n` envelopes from `client`'s mailbox."""
    out: list[Envelope[Any]] = []

    async def run() -> None:
        async for env in client.mailbox:
            out.append(env)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def serve_asks(client: Client, fn: Any = lambda body: body) -> None:
    """Answer every ask with fn(body) (runs until cancelled)."""
    async for env in client.mailbox:
        await env.reply(fn(env.body))


# --- order -------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
async def test_order_per_pair_with_thousands_of_tells(path: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        c = await h.client("carol")
        n = 5000
        reader = asyncio.create_task(collect(b, 2 * n))

        async def send(client: Client) -> None:
            for i in range(n):
                await client.tell("bob", [client.id, i])
                if i % 500 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(send(a), send(c))
        envs = await reader
        for sender in ("alice", "carol"):
            got = [e.body[1] for e in envs if e.sender == sender]
            assert all(e.body[0] == e.sender for e in envs)
            assert got == list(range(n)), sender
        assert a.mailbox.route("bob") == path
        assert c.mailbox.route("bob") == "proxied"


async def test_direct_tells_do_not_cross_the_coordinator() -> None:
    async with coordinator() as h:
        a, b = await pair(h, "direct")
        await a.tell("bob", "warm-up")
        await collect(b, 1)
        before = (await h.coord.stats())["bytes_forwarded"]
        for i in range(100):
            await a.tell("bob", i)
        assert [e.body for e in await collect(b, 100)] == list(range(100))
        assert (await h.coord.stats())["bytes_forwarded"] == before


async def test_order_holds_when_a_channel_opens_mid_sequence() -> None:
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        n = 6000
        reader = asyncio.create_task(collect(b, n))
        for i in range(n):
            await a.tell("bob", i)
            if i == n // 3:
                assert a.mailbox.route("bob") == "proxied"
                await a.new_channel("bob")
            elif i % 200 == 0:
                await asyncio.sleep(0)
        assert [e.body for e in await reader] == list(range(n))
        assert a.mailbox.route("bob") == "direct"


@pytest.mark.parametrize("closer", ["sender", "receiver"])
async def test_order_holds_and_nothing_is_lost_when_a_channel_closes_mid_sequence(
        closer: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, "direct")
        n = 6000
        reader = asyncio.create_task(collect(b, n))
        for i in range(n):
            # messages of a few hundred bytes, so some are in flight at the close
            await a.tell("bob", [i, "x" * 300])
            if i == n // 2:
                assert a.mailbox.route("bob") == "direct"
                await (a.close_channel("bob") if closer == "sender"
                       else b.close_channel("alice"))
            elif i % 100 == 0:
                await asyncio.sleep(0)
        assert [e.body[0] for e in await reader] == list(range(n))
        assert a.mailbox.route("bob") == "proxied"


async def test_order_holds_across_several_path_changes() -> None:
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        n = 8000
        reader = asyncio.create_task(collect(b, n))
        for i in range(n):
            await a.tell("bob", i)
            if i in (1000, 5000):
                await a.new_channel("bob")
            elif i in (3000, 7000):
                await a.close_channel("bob")
            elif i % 100 == 0:
                await asyncio.sleep(0)
        assert [e.body for e in await reader] == list(range(n))


@pytest.mark.timeout(90)
async def test_asks_are_answered_while_channels_open_and_close_under_them() -> None:
    """An answer written on a direct stream that a closing channel resets is
    lost with it; the asker sends the (acknowledged) ask again on the next
    stream, and the receiver answers it again from what it kept, without
    running it twice."""
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        runs: dict[tuple[str, int], int] = {}

        async def serve(c: Client) -> None:
            async for env in c.mailbox:
                if env.is_ask:
                    key = (env.sender, env.body)
                    runs[key] = runs.get(key, 0) + 1
                    await env.reply(env.body)

        servers = [asyncio.create_task(serve(c)) for c in (a, b)]
        stop = asyncio.Event()

        async def asker(x: Client, peer: str) -> int:
            k = 0
            while not stop.is_set():
                k += 1
                assert await x.ask(peer, k, timeout=10) == k
                await asyncio.sleep(0.003)
            return k

        try:
            askers = [asyncio.create_task(asker(a, "bob")),
                      asyncio.create_task(asker(b, "alice"))]
            for i in range(30):
                await a.new_channel("bob")
                await asyncio.sleep(0.02 + (i % 5) * 0.03)
                await a.close_channel("bob")
                await asyncio.sleep(0.02 + (i % 3) * 0.03)
            stop.set()
            asked = await asyncio.gather(*askers)
            assert all(n > 30 for n in asked)
            # every ask ran exactly once at its receiver
            assert set(runs.values()) == {1}
            assert len(runs) == sum(asked)
        finally:
            for t in servers:
                t.cancel()


# --- back-pressure and coalescing -------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
async def test_tell_waits_when_the_receiver_does_not_read_then_resumes(path: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        n = 6000
        sent = 0

        async def writer() -> None:
            nonlocal sent
            for i in range(n):
                await a.tell("bob", [i, b"x" * 500])
                sent += 1

        task = asyncio.create_task(writer())
        # bob does not read: the writer stalls well before the end
        last = -1
        while sent != last:
            last = sent
            await asyncio.sleep(0.3)
        assert 0 < sent < n and not task.done()
        # reading resumes it, and everything arrives in order
        envs = await collect(b, n)
        await asyncio.wait_for(task, 5)
        assert [e.body[0] for e in envs] == list(range(n))


@pytest.mark.parametrize("path", PATHS)
async def test_small_tells_are_coalesced_under_load_but_an_idle_tell_goes_at_once(
        path: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        # idle line: one tell, one frame, delivered without waiting for more
        for k in range(3):
            frames = a.mailbox.frames_sent("bob")
            t0 = time.perf_counter()
            await a.tell("bob", k)
            env = await asyncio.wait_for(anext(b.mailbox), 2)
            assert env.body == k
            assert time.perf_counter() - t0 < 0.5
            assert a.mailbox.frames_sent("bob") == frames + 1
        # a burst: far fewer frames than tells
        n = 10_000
        frames = a.mailbox.frames_sent("bob")
        reader = asyncio.create_task(collect(b, n))
        for i in range(n):
            await a.tell("bob", i)
        assert [e.body for e in await reader] == list(range(n))
        used = a.mailbox.frames_sent("bob") - frames
        assert used < n / 20, used


async def test_batches_respect_the_message_size_limit() -> None:
    async with coordinator() as h:
        a = await h.client("alice", max_message_size=4096)
        b = await h.client("bob")
        assert a.max_message_size == 4096
        with pytest.raises(MessageTooLarge):
            await a.tell("bob", b"x" * 5000)
        n = 2000
        reader = asyncio.create_task(collect(b, n))
        for i in range(n):
            await a.tell("bob", [i, b"y" * 1000])  # ~4 per frame at most
        assert [e.body[0] for e in await reader] == list(range(n))
        assert a.mailbox.frames_sent("bob") >= n / 4
        # the stream survived the refusal
        await a.tell("bob", "after")
        assert (await collect(b, 1))[0].body == "after"


# --- NoSuchPeer -----------------------------------------------------------------------------

async def test_no_such_peer() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        with pytest.raises(NoSuchPeer):
            await a.tell("nobody", 1)
        with pytest.raises(NoSuchPeer):
            await a.tell("Not An Id", 1)
        with pytest.raises(NoSuchPeer):
            await a.ask("nobody", 1)
        assert a.mailbox.pending_asks == 0
        # a peer that connects later is reachable
        b = await h.client("nobody")
        await a.tell("nobody", 2)
        assert (await collect(b, 1))[0].body == 2


@pytest.mark.parametrize("path", PATHS)
async def test_tells_raise_no_such_peer_once_the_peer_left(path: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        await a.tell("bob", 1)
        await collect(b, 1)
        await b.close()

        async def raises() -> bool:
            try:
                await a.tell("bob", 2)
            except NoSuchPeer:
                return True
            return False

        await wait_for(raises, timeout=5)
        with pytest.raises(NoSuchPeer):  # and keeps raising while it is gone
            await a.tell("bob", 3)


# --- ask -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
async def test_ask_and_reply(path: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        server = asyncio.create_task(serve_asks(b, lambda body: {"double": body * 2}))
        try:
            assert await a.ask("bob", 21) == {"double": 42}
            replies = await asyncio.gather(*(a.ask("bob", i) for i in range(200)))
            assert replies == [{"double": 2 * i} for i in range(200)]
            assert a.mailbox.pending_asks == 0
        finally:
            server.cancel()


async def test_ask_yourself_and_typed_reply() -> None:
    class Answer(msgspec.Struct):
        value: int

    async with coordinator() as h:
        a = await h.client("alice")
        server = asyncio.create_task(serve_asks(a, lambda body: Answer(body + 1)))
        try:
            assert await a.ask("alice", 1) == {"value": 2}
            assert await a.ask("alice", 41, reply_type=Answer) == Answer(42)
        finally:
            server.cancel()


async def test_tell_envelope_reply_is_a_no_op() -> None:
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        await a.tell("bob", b"raw bytes")
        env = (await collect(b, 1))[0]
        assert env.body == b"raw bytes" and not env.is_ask and env.sender == "alice"
        await env.reply("ignored")


@pytest.mark.parametrize("path", PATHS)
async def test_ask_times_out_when_the_receiver_never_replies(path: str) -> None:
    async with coordinator() as h:
        a, _ = await pair(h, path)
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError):
            await a.ask("bob", "hello?", timeout=0.3)
        assert 0.25 < time.perf_counter() - t0 < 2
        assert a.mailbox.pending_asks == 0
        # (bob never gets the expired ask: tests/test_ask_failures.py.)


@pytest.mark.parametrize("path", PATHS)
async def test_cancelled_ask_forgets_its_slot_and_a_late_reply_is_dropped_quietly(
        path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="conec_actors")
    async with coordinator() as h:
        a, b = await pair(h, path)
        ask = asyncio.create_task(a.ask("bob", "slow", timeout=None))
        env = (await collect(b, 1))[0]
        assert a.mailbox.pending_asks == 1
        ask.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ask
        assert a.mailbox.pending_asks == 0
        await env.reply("too late")
        # the asker still works, and the late reply changed nothing
        server = asyncio.create_task(serve_asks(b))
        try:
            assert await a.ask("bob", "next") == "next"
        finally:
            server.cancel()
        assert a.mailbox.pending_asks == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", PATHS)
async def test_pending_ask_fails_with_peer_gone_when_the_peer_leaves(path: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        ask = asyncio.create_task(a.ask("bob", "never answered", timeout=30))
        env = (await collect(b, 1))[0]
        assert env.is_ask
        await b.close()
        with pytest.raises(PeerGone, match="'bob' went away"):
            await ask  # at once, not at the timeout
        assert a.mailbox.pending_asks == 0


async def test_pending_ask_fails_when_the_client_closes() -> None:
    async with coordinator() as h:
        a, _ = await pair(h, "proxied")
        ask = asyncio.create_task(a.ask("bob", "never answered", timeout=None))
        await wait_for(lambda: a.mailbox.pending_asks == 1)
        await a.close()
        with pytest.raises(ClientClosed):
            await ask
        with pytest.raises(ClientClosed):
            await a.tell("bob", 1)


# --- typed mailboxes ---------------------------------------------------------------------------

class Point(msgspec.Struct):
    x: int
    y: int


async def test_untyped_bodies_arrive_as_builtins() -> None:
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        for msg in (Point(1, 2), b"\x00\x01", "text", [1, 2.5, None], {"k": [1]}):
            await a.tell("bob", msg)
        bodies = [e.body for e in await collect(b, 5)]
        assert bodies == [{"x": 1, "y": 2}, b"\x00\x01", "text", [1, 2.5, None], {"k": [1]}]


@pytest.mark.parametrize("path", PATHS)
async def test_typed_mailbox(path: str, caplog: pytest.LogCaptureFixture) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        await a.tell("bob", Point(1, 2))
        await a.tell("bob", {"x": 3, "y": 4})  # same shape: decodes
        await a.tell("bob", "not a point")     # skipped, logged
        await a.tell("bob", Point(5, 6))
        points = b.mailbox.typed(Point)
        got = [(await asyncio.wait_for(anext(points), 5)).body for _ in range(3)]
        assert got == [Point(1, 2), Point(3, 4), Point(5, 6)]
        assert any("does not decode" in r.getMessage() for r in caplog.records)
        # an ask that does not decode is answered with a DecodeError failure
        ask = asyncio.create_task(a.ask("bob", [1, 2, 3]))
        ok = asyncio.create_task(a.ask("bob", Point(7, 8)))
        env = await asyncio.wait_for(anext(points), 5)
        assert env.body == Point(7, 8) and env.is_ask
        await env.reply("ok")
        with pytest.raises(RemoteError) as info:
            await ask
        assert info.value.type_name == "DecodeError"
        assert await ok == "ok"


# --- Actor ------------------------------------------------------------------------------------

class Recorder(Actor):
    def __init__(self, log: list[str], *, prefix: str = "") -> None:
        self.log = log
        self.prefix = prefix

    async def on_start(self) -> None:
        assert not self.client.is_closed
        self.log.append(f"start {self.id}")

    async def receive(self, sender: str, body: Any) -> Any:
        self.log.append(f"receive {body}")
        if body == "boom":
            raise ValueError("cannot handle boom")
        return f"{self.prefix}{body}"

    async def on_stop(self) -> None:
        assert not self.client.is_closed  # on_stop runs before the close
        self.log.append("stop")


async def test_actor_spawn_lifecycle_and_replies() -> None:
    async with coordinator() as h:
        events: list[str] = []
        actor = await Recorder.spawn(h.config("recorder"), events, prefix="re: ")
        assert actor.id == "recorder" and events == ["start recorder"]
        a = await h.client("alice")
        await a.tell("recorder", "hello")
        assert await a.ask("recorder", "there") == "re: there"
        await actor.stop()
        await actor.stop()  # idempotent
        assert events == ["start recorder", "receive hello", "receive there", "stop"]
        assert actor.client.is_closed and actor.stopped


@pytest.mark.parametrize("path", PATHS)
async def test_actor_receive_error_answers_remote_error_and_keeps_serving(
        path: str, caplog: pytest.LogCaptureFixture) -> None:
    async with coordinator() as h:
        events: list[str] = []
        async with await Recorder.spawn(h.config("recorder"), events) as actor:
            a = await h.client("alice")
            if path == "direct":
                await a.new_channel("recorder")
            with pytest.raises(RemoteError) as info:
                await a.ask("recorder", "boom")
            assert info.value.type_name == "ValueError"
            assert info.value.message == "cannot handle boom"
            assert any("receive failed" in r.getMessage() for r in caplog.records)
            await a.tell("recorder", "boom")  # a failing tell is logged only
            assert await a.ask("recorder", "still there") == "still there"
            assert a.mailbox.route("recorder") == path
        assert actor.stopped and events[-1] == "stop"


class Typed(Actor):
    message_type = Point

    async def receive(self, sender: str, body: Point) -> Any:
        return body.x + body.y


class StreamEcho(Actor):
    async def receive(self, sender: str, body: Any) -> Any:
        return body

    async def on_stream(self, incoming: IncomingStream) -> None:
        async for msg in incoming.recv:
            await incoming.send.send(b"echo " + msg)
        await incoming.send.finish()


async def test_actor_message_type_and_on_stream() -> None:
    async with coordinator() as h:
        typed = await Typed.spawn(h.config("typed"))
        echo = await StreamEcho.spawn(h.config("echo"))
        a = await h.client("alice")
        assert await a.ask("typed", Point(2, 3)) == 5
        with pytest.raises(RemoteError) as info:
            await a.ask("typed", "not a point")
        assert info.value.type_name == "DecodeError"
        send, recv = await a.new_proxied_stream("echo")
        await send.send(b"hi")
        assert await asyncio.wait_for(recv.recv(), 5) == b"echo hi"
        assert await a.ask("echo", "and a mailbox") == "and a mailbox"
        await typed.stop()
        await echo.stop()


async def test_actor_can_stop_itself_and_wait_stopped() -> None:
    class Quitter(Actor):
        async def receive(self, sender: str, body: Any) -> Any:
            if body == "quit":
                await self.stop()
            return body

    async with coordinator() as h:
        q = await Quitter.spawn(h.config("quitter"))
        a = await h.client("alice")
        assert await a.ask("quitter", "ping") == "ping"
        await a.tell("quitter", "quit")
        await asyncio.wait_for(q.wait_stopped(), 5)
        assert q.client.is_closed


async def test_failing_on_start_closes_the_client() -> None:
    class Broken(Actor):
        async def on_start(self) -> None:
            raise RuntimeError("no start")

        async def receive(self, sender: str, body: Any) -> Any:
            return None

    async with coordinator() as h:
        with pytest.raises(RuntimeError):
            await Broken.spawn(h.config("broken"))
        # the client was closed: the id is free again
        c = await h.client("broken")
        assert not c.is_closed


# --- the end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("ending", ["client closes", "no path is left"])
async def test_mailbox_iterator_ends(ending: str) -> None:
    # Either way nothing more can arrive: the reader sees what came, then the
    # end (no hang). "No path": the Coordinator is gone and there is no channel.
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        await a.tell("bob", 1)
        seen: list[Any] = []

        async def read() -> None:
            async for env in b.mailbox:
                seen.append(env.body)

        reader = asyncio.create_task(read())
        await wait_for(lambda: seen == [1])
        await (b.close() if ending == "client closes" else h.coord.close())
        await asyncio.wait_for(reader, 10)
        assert seen == [1]
        with pytest.raises(StopAsyncIteration):
            await anext(b.mailbox)


async def test_demo_tell_ask_figures() -> None:
    from conec_actors.actor import demo_tell_ask

    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        figures = await demo_tell_ask(a, b, 0.6)
        assert set(figures) == {"tells", "tells_per_s", "asks", "ask_p50_ms", "ask_p99_ms"}
        assert figures["tells"] > 0 and figures["tells_per_s"] > 0 and figures["asks"] > 0
        assert 0 < figures["ask_p50_ms"] <= figures["ask_p99_ms"]
        # b's mailbox is free again afterwards
        await a.tell("bob", "after")
        assert (await collect(b, 1))[0].body == "after"

