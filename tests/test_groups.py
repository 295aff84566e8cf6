"""Groups with real clients and a real Coordinator (DESIGN 11): join, leave,
members, `tell_group`/`ask_group` to the least loaded member."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
from typing import Any

import pytest

from conec_actors import Actor, Client, NoResponders, PeerGone, ProtocolError
from conec_actors.client.group_pick import TELL_RUN
from conec_actors.coord import groups as coord_groups

from .conftest import client_process, coordinator, wait_for


async def test_join_leave_members() -> None:
    async with coordinator() as h:
        a = await h.client("a")
        b = await h.client("b")
        assert await a.group_members("g") == []
        await a.join_group("g")
        await b.join_group("g")
        await b.join_group("g")  # twice is fine
        assert await b.group_members("g") == ["a", "b"]
        await a.leave_group("g")
        await a.leave_group("g")  # not a member: fine
        assert await b.group_members("g") == ["b"]
        await b.close()  # closing leaves every group
        await wait_for(lambda: _members(a, "g", []))


async def _members(c: Client, name: str, want: list[str]) -> bool:
    return await c.group_members(name) == want


async def test_bad_names() -> None:
    async with coordinator() as h:
        a = await h.client("a")
        for bad in ("", "x" * 256, 3):
            with pytest.raises(ValueError):
                await a.join_group(bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await a.tell_group(bad, 1)  # type: ignore[arg-type]


async def test_empty_or_unknown_group_is_no_responders() -> None:
    async with coordinator() as h:
        a = await h.client("a")
        b = await h.client("b")
        with pytest.raises(NoResponders):
            await a.tell_group("nobody-here", 1)
        with pytest.raises(NoResponders):
            await a.ask_group("nobody-here", 1)
        await b.join_group("g")
        await b.leave_group("g")
        with pytest.raises(NoResponders):
            await a.ask_group("g", 1)


async def test_a_member_that_just_joined_answers_a_sender_whose_view_is_empty() -> None:
    async with coordinator() as h:
        a = await h.client("a")
        b = await h.client("b")
        with pytest.raises(NoResponders):
            await a.ask_group("g", 0)  # a follows "g" now, with nobody in it
        await b.join_group("g")
        task = asyncio.create_task(_answer(b))
        try:
            # As if the view with b's join were still on its way (views come
            # every VIEW_INTERVAL at most, and a reconnecting client's follow
            # can answer before its peers have joined again): the join has
            # returned, so b must be reached, not refused.
            a._groups.picker.view("g", [])
            assert await a.ask_group("g", 1) == ["b", 1]
            a._groups.picker.view("g", [])
            await a.tell_group("g", 2)
        finally:
            task.cancel()


async def _answer(c: Client) -> None:
    async for env in c.mailbox:
        if env.is_ask:
            await env.reply((c.id, env.body))


async def test_each_message_reaches_exactly_one_member() -> None:
    async with coordinator() as h:
        s = await h.client("s")
        ms = [await h.client(f"m{i}") for i in range(3)]
        for m in ms:
            await m.join_group("g")
        n = 3 * TELL_RUN
        for i in range(n):
            await s.tell_group("g", i)
        got: dict[str, list[Any]] = {m.id: [] for m in ms}

        async def count() -> bool:
            for m in ms:
                while m.mailbox.queued:
                    env = await anext(m.mailbox)
                    got[m.id].append(env.body)
            return sum(map(len, got.values())) >= n

        await wait_for(count)
        assert sorted(b for bodies in got.values() for b in bodies) == list(range(n))
        # An idle group shares the load: runs of tells, round-robin.
        assert all(bodies for bodies in got.values())
        tasks = [asyncio.create_task(_answer(m)) for m in ms]
        try:
            answers = [await s.ask_group("g", i) for i in range(9)]
            assert [body for _, body in answers] == list(range(9))
            assert {who for who, _ in answers} == {"m0", "m1", "m2"}
        finally:
            for t in tasks:
                t.cancel()


async def test_a_member_that_leaves_is_not_chosen() -> None:
    async with coordinator() as h:
        s = await h.client("s")
        a = await h.client("a")
        b = await h.client("b")
        await a.join_group("g")
        await b.join_group("g")
        await s.tell_group("g", "first")  # s follows g now
        await a.leave_group("g")
        await wait_for(lambda: s._groups.picker.members("g") == ["b"])
        for i in range(10):
            await s.tell_group("g", i)
        # All 11 arrived ("first" and the 10): at most "first" at a.
        await wait_for(lambda: a.mailbox.queued + b.mailbox.queued == 11)
        assert a.mailbox.queued <= 1


@pytest.mark.timeout(30)
async def test_a_killed_member_stops_being_chosen() -> None:
    async with coordinator() as h:
        s = await h.client("s")
        b = await h.client("b")
        await b.join_group("g")
        task = asyncio.create_task(_answer(b))
        body = """
            await client.join_group("g")
            print("ready", flush=True)
            async for env in client.mailbox:
                if env.is_ask:
                    await env.reply(("doomed", env.body))
        """
        try:
            async with client_process(h, "doomed", body) as proc:
                assert proc.stdout is not None
                assert await proc.stdout.readline() == b"ready\n"
                assert sorted(await s.group_members("g")) == ["b", "doomed"]
                # Both are chosen while both live (idle: round-robin).
                seen = {(await s.ask_group("g", i))[0] for i in range(4)}
                assert "doomed" in seen
                os.kill(proc.pid, signal.SIGKILL)
                # Within its idle timeout (1.5 s) the Coordinator drops it.
                await wait_for(lambda: s._groups.picker.members("g") == ["b"], timeout=10)
                for i in range(6):
                    who, _ = await s.ask_group("g", i)
                    assert who == "b"
        finally:
            task.cancel()


async def test_an_ask_to_a_member_that_goes_fails_with_peer_gone() -> None:
    async with coordinator() as h:
        s = await h.client("s")
        m = await h.client("m")
        await m.join_group("g")
        ask = asyncio.create_task(s.ask_group("g", "never answered", timeout=20))
        await wait_for(lambda: m.mailbox.queued == 1)
        await m.close()
        with pytest.raises(PeerGone):
            await ask


class Worker(Actor):
    groups = ("workers",)

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def receive(self, sender: str, body: Any) -> Any:
        await asyncio.sleep(self.delay)
        return self.id


@pytest.mark.timeout(60)
async def test_a_slow_member_gets_less() -> None:
    async with coordinator() as h:
        s = await h.client("s")
        actors = [await Worker.spawn(h.config(f"w{i}"), 0.1 if i == 0 else 0.01)
                  for i in range(4)]
        try:
            # Actor.groups joined on spawn.
            assert sorted(await s.group_members("workers")) == ["w0", "w1", "w2", "w3"]
            count: collections.Counter[str] = collections.Counter()
            todo = iter(range(200))

            async def asker() -> None:
                for _ in todo:
                    count[await s.ask_group("workers", None)] += 1

            await asyncio.gather(*(asker() for _ in range(8)))
            assert sum(count.values()) == 200
            assert count["w0"] < 50, count
        finally:
            for a in actors:
                await a.stop()


async def test_too_many_groups_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coord_groups, "MAX_GROUPS", 2)
    monkeypatch.setattr(coord_groups, "MAX_MEMBERS", 2)
    async with coordinator() as h:
        a = await h.client("a")
        await a.join_group("g1")
        await a.join_group("g2")
        with pytest.raises(ProtocolError, match="most groups"):
            await a.join_group("g3")
        b = await h.client("b")
        c = await h.client("c")
        await b.join_group("g1")
        with pytest.raises(ProtocolError, match="member limit"):
            await c.join_group("g1")
        assert await c.group_members("g1") == ["a", "b"]


async def test_a_member_busy_with_another_senders_asks_is_avoided() -> None:
    async with coordinator() as h:
        s = await h.client("s")
        other = await h.client("other")
        busy = await h.client("busy")
        idle = await h.client("idle")
        for m in (busy, idle):
            await m.join_group("g")
        held: list[Any] = []

        async def hold() -> None:  # takes asks and never answers them
            async for env in busy.mailbox:
                held.append(env)

        holder = asyncio.create_task(hold())
        answerer = asyncio.create_task(_answer(idle))
        try:
            asks = [asyncio.create_task(other.ask("busy", i, timeout=30)) for i in range(5)]
            await wait_for(lambda: len(held) == 5)
            assert busy.mailbox.asks_taken == 5
            await s.group_members("g")
            # s has no asks of its own at "busy": only busy's reports say it is loaded.
            await s.tell_group("g", "follow")
            await wait_for(lambda: s._groups.picker.reported("busy") == (5, 0))
            for i in range(8):
                who, _ = await s.ask_group("g", i)
                assert who == "idle"
            for env in held:
                await env.reply("late")
            assert await asyncio.gather(*asks) == ["late"] * 5
            assert busy.mailbox.asks_taken == 0
            await wait_for(lambda: s._groups.picker.reported("busy") == (0, 0))
        finally:
            holder.cancel()
            answerer.cancel()


async def test_a_stale_view_falls_back_to_a_member_that_is_there() -> None:
    async with coordinator() as h:
        s = await h.client("s")
        b = await h.client("b")
        await b.join_group("g")
        task = asyncio.create_task(_answer(b))
        try:
            await s.tell_group("g", "follow")
            # As if "ghost" had just left and the Coordinator's view was on its way.
            s._groups.picker.view("g", ["ghost", "b"])
            who, _ = await s.ask_group("g", 1)
            assert who == "b"
            # "b" reported a backlog: "ghost" is picked first for the tells.
            s._groups.picker.view("g", ["ghost", "b"], asks=[0, 0], tells=[0, 5])
            await s.tell_group("g", 2)
            await s.tell_group("g", 3)
            assert s._groups.picker.members("g") == ["b"]
            # A view with nobody left but "ghost": the Coordinator is asked
            # before NoResponders, and "b" is still a member.
            s._groups.picker.view("g", ["ghost"])
            who, _ = await s.ask_group("g", 4)
            assert who == "b"
            await b.leave_group("g")
            s._groups.picker.view("g", ["ghost"])
            with pytest.raises(NoResponders):
                await s.ask_group("g", 5)
        finally:
            task.cancel()
