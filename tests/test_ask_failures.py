"""Asks that fail fast and carry their deadline (DESIGN section 11), with real
clients and a real Coordinator: `NoResponders` when nobody is there,
`PeerGone` when the peer goes away while an ask is pending (it closes, or its
process is killed), and asks whose deadline passed never handed out."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from conec_actors import (
    Actor,
    Client,
    ConecError,
    NoResponders,
    NoSuchPeer,
    PeerGone,
)

from .conftest import Harness, client_process, coordinator, wait_for

PATHS = ["proxied", "direct"]

#: A peer in its own process (`client_process`, idle timeout 1 s): says
#: "ready", then reads one message, says "got <is_ask>" and holds it unanswered.
PEER = """
print("ready", flush=True)
async for env in client.mailbox:
    print("got", env.is_ask, flush=True)
    await asyncio.sleep(3600)
"""


async def pair(h: Harness, path: str) -> tuple[Client, Client]:
    a, b = await h.client("alice"), await h.client("bob")
    if path == "direct":
        await a.new_channel("bob")
    return a, b


async def next_body(client: Client) -> Any:
    async for env in client.mailbox:
        return env.body
    raise AssertionError("the mailbox ended")


# --- NoResponders ------------------------------------------------------------------------

async def test_tell_and_ask_to_a_peer_not_connected_raise_no_responders() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        for call in (a.tell("nobody", 1), a.ask("nobody", 1, timeout=30)):
            with pytest.raises(NoResponders, match="'nobody'") as info:
                await call
            # Handlers written for NoSuchPeer keep working.
            assert isinstance(info.value, NoSuchPeer)
        with pytest.raises(NoResponders, match="not a valid id"):
            await a.tell("Not An Id", 1)


async def test_after_the_peer_left_the_next_tell_raises_no_responders() -> None:
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        await a.tell("bob", "hi")
        assert await next_body(b) == "hi"
        await b.close()

        async def refused() -> bool:
            try:
                await a.tell("bob", "anyone?")
            except NoResponders:
                return True
            return False

        await wait_for(refused)


# --- PeerGone ----------------------------------------------------------------------------

@pytest.mark.timeout(20)
@pytest.mark.parametrize("path", PATHS)
async def test_pending_ask_fails_with_peer_gone_when_the_peer_process_is_killed(
        path: str) -> None:
    async with coordinator() as h:
        async with client_process(h, "bob", PEER, idle_timeout=1.0) as proc:
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"ready\n"
            a = await h.client("alice")
            if path == "direct":
                await a.new_channel("bob")
            ask = asyncio.create_task(a.ask("bob", "never answered", timeout=30))
            assert await proc.stdout.readline() == b"got True\n"
            proc.kill()  # SIGKILL: no close, no goodbye
            await proc.wait()
            # Within bob's idle timeout (1 s) plus a little, not at 30 s.
            with pytest.raises(PeerGone, match="'bob' went away"):
                await ask
            assert a.mailbox.pending_asks == 0
            with pytest.raises(NoResponders):
                await a.ask("bob", "again?", timeout=30)


@pytest.mark.timeout(20)
async def test_peer_gone_is_not_no_responders() -> None:
    # A handler of NoSuchPeer around an ask does not swallow PeerGone: the
    # peer was there and took the ask.
    assert not issubclass(PeerGone, NoSuchPeer)
    assert issubclass(PeerGone, ConecError) and issubclass(NoResponders, ConecError)
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        ask = asyncio.create_task(a.ask("bob", "hold", timeout=30))
        assert await next_body(b) == "hold"
        await b.close()
        with pytest.raises(PeerGone):
            await ask


# --- deadlines ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
async def test_an_ask_whose_deadline_passed_is_never_handed_out(path: str) -> None:
    async with coordinator() as h:
        a, b = await pair(h, path)
        await a.tell("bob", "first")
        # bob is busy (not reading its mailbox) past the ask's deadline.
        with pytest.raises(TimeoutError):
            await a.ask("bob", "too late", timeout=0.3)
        await a.tell("bob", "later")
        # Let the deadline pass on bob's clock too (it starts at arrival).
        await asyncio.sleep(1.0)
        bodies = [await next_body(b), await next_body(b)]
        assert bodies == ["first", "later"]
        assert len(b.mailbox._inbox) == 0  # nothing else is left to hand out
        # The pair still works both ways.
        ask = asyncio.create_task(a.ask("bob", "in time", timeout=30))
        async for env in b.mailbox:
            assert env.body == "in time"
            await env.reply("ok")
            break
        assert await ask == "ok"


async def test_an_ask_sent_with_no_time_left_is_dropped_on_arrival() -> None:
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        await a.tell("bob", "open the route")
        assert await next_body(b) == "open the route"
        reader = asyncio.create_task(next_body(b))  # bob reads all along
        with pytest.raises(TimeoutError):
            await a.ask("bob", "expired", timeout=0)
        await a.tell("bob", "after")
        assert await asyncio.wait_for(reader, 10) == "after"


class Point(msgspec.Struct):
    x: int


async def test_a_typed_mailbox_never_hands_out_an_expired_ask() -> None:
    async with coordinator() as h:
        a, b = await pair(h, "proxied")
        with pytest.raises(TimeoutError):
            await a.ask("bob", Point(1), timeout=0.3)
        await a.tell("bob", Point(2))
        await asyncio.sleep(1.0)  # the deadline passes on bob's clock too
        async for env in b.mailbox.typed(Point):
            assert env.body == Point(2) and not env.is_ask
            break


class Blocking(Actor):
    """Blocks in `receive` on "block" until `gate` is set; records every body."""

    def __init__(self, seen: list[Any], gate: asyncio.Event) -> None:
        self.seen = seen
        self.gate = gate

    async def receive(self, sender: str, body: Any) -> Any:
        self.seen.append(body)
        if body == "block":
            await self.gate.wait()
        return body


async def test_an_actor_never_receives_an_expired_ask() -> None:
    async with coordinator() as h:
        seen: list[Any] = []
        gate = asyncio.Event()
        actor = await Blocking.spawn(h.config("slow"), seen, gate)
        try:
            a = await h.client("alice")
            await a.tell("slow", "block")
            await wait_for(lambda: seen == ["block"])
            with pytest.raises(TimeoutError):
                await a.ask("slow", "too late", timeout=0.3)
            await a.tell("slow", "later")
            await asyncio.sleep(1.0)  # the deadline passes on the actor's clock too
            gate.set()
            assert await a.ask("slow", "in time", timeout=30) == "in time"
            assert seen == ["block", "later", "in time"]
        finally:
            await actor.stop()
