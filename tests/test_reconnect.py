"""Clients that outlive their Coordinator (`ClientConfig.reconnect`): a
Coordinator in a process of its own is killed with SIGKILL and restarted on
the same port with the same certificate; and a stale session (its client
process stopped with SIGSTOP) is replaced by the same client reconnecting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conec_actors import (
    Actor,
    Client,
    ClientClosed,
    ClientConfig,
    ConecError,
    ConnectFailed,
    Disconnected,
    DuplicateId,
    NoResponders,
    Reconnected,
    StreamReset,
)
from conec_actors.certs import CertKey, self_signed

from .conftest import coord_cert, coordinator, wait_for

#: Short, so that the loss of the Coordinator is noticed within seconds.
IDLE = 2.0

_COORD_SCRIPT = """
import asyncio, sys
from conec_actors import Coord, CoordConfig

async def main() -> None:
    cert, key, port = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3])
    async with Coord.start(CoordConfig(cert, key, port=port)) as coord:
        print(coord.address[1], flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


class CoordProcess:
    """A Coordinator in a process group of its own: `start` (on `port`, 0
    for any), `kill` (SIGKILL to the group: the front-end and its workers)."""

    def __init__(self, cert: CertKey) -> None:
        self.cert = cert
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _COORD_SCRIPT, self.cert.cert_pem.decode(),
            self.cert.key_pem.decode(), str(self.port), stdout=asyncio.subprocess.PIPE,
            start_new_session=True)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        self.port = int(line)

    async def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

    def config(self, client_id: str, **kw: Any) -> ClientConfig:
        kw.setdefault("idle_timeout", IDLE)
        kw.setdefault("reconnect", True)
        return ClientConfig(client_id, "localhost", addr=("127.0.0.1", self.port),
                            ca=self.cert.cert_pem, **kw)


@contextlib.asynccontextmanager
async def coord_process() -> AsyncIterator[CoordProcess]:
    cp = CoordProcess(coord_cert())
    try:
        await cp.start()
        yield cp
    finally:
        await cp.kill()


async def next_event(events: Any, timeout: float = 30.0) -> Disconnected | Reconnected:
    event: Disconnected | Reconnected = await asyncio.wait_for(anext(events), timeout)
    return event


@pytest.mark.timeout(150)
async def test_tells_survive_a_coordinator_killed_and_restarted() -> None:
    clients: list[Client] = []
    tasks: list[asyncio.Task[Any]] = []
    async with coord_process() as cp:
        try:
            a = await Client.connect(cp.config("a"))
            clients.append(a)
            b = await Client.connect(cp.config("b"))
            clients.append(b)
            events = {c.id: c.events() for c in clients}
            #: what `tell` accepted (returned without error), and what arrived
            sent: dict[str, list[int]] = {"a": [], "b": []}
            got: dict[str, list[int]] = {"a": [], "b": []}
            stop = asyncio.Event()

            async def teller(src: Client, dst: str) -> None:
                n = 0
                while not stop.is_set():
                    try:
                        await src.tell(dst, n)
                    except NoResponders:  # not sent: the same number again
                        await asyncio.sleep(0.05)
                        continue
                    sent[src.id].append(n)
                    n += 1
                    await asyncio.sleep(0.002)

            async def reader(c: Client) -> None:
                async for env in c.mailbox:
                    if env.is_ask:
                        await env.reply(["pong", env.body])
                    else:
                        got[c.id].append(env.body)

            tasks += [asyncio.create_task(reader(a)), asyncio.create_task(reader(b)),
                      asyncio.create_task(teller(a, "b")), asyncio.create_task(teller(b, "a"))]
            await wait_for(lambda: len(got["a"]) > 50 and len(got["b"]) > 50, 20)
            assert a.connected and b.connected
            await a.join_group("g")
            assert await b.ask_group("g", "pre") == ["pong", "pre"]  # b follows g
            watch = await a.watch("b")

            await cp.kill()
            for c in clients:
                assert isinstance(await next_event(events[c.id]), Disconnected)
            assert not a.connected and not b.connected
            assert not a.is_closed
            with pytest.raises(ConnectFailed):
                await a.new_proxied_stream("b")
            # An ask across the outage answers, or times out at its own timeout.
            asking = asyncio.create_task(a.ask("b", "ping", timeout=15.0))
            before = len(sent["a"]), len(sent["b"])

            await cp.start()  # the same port, the same certificate
            for c in clients:
                assert isinstance(await next_event(events[c.id]), Reconnected)
            assert a.connected and b.connected
            try:
                assert await asking == ["pong", "ping"]
            except TimeoutError:
                pass
            # Telling goes on over the new Coordinator.
            await wait_for(lambda: len(sent["a"]) > before[0] + 50
                           and len(sent["b"]) > before[1] + 50, 30)
            assert await a.ask("b", "after", timeout=10.0) == ["pong", "after"]
            # a joined g again, and b follows it again.
            await wait_for(lambda: b.group_members("g"), 15)
            assert await b.group_members("g") == ["a"]
            assert await b.ask_group("g", "post", timeout=10.0) == ["pong", "post"]
            stop.set()
            await asyncio.gather(*tasks[2:])
            # Every tell accepted arrives, once and in order.
            await wait_for(lambda: len(got["a"]) >= len(sent["b"])
                           and len(got["b"]) >= len(sent["a"]), 30)
            assert got["b"] == sent["a"]
            assert got["a"] == sent["b"]
            # a's watch of b is re-armed at the new Coordinator (asked again
            # every REARM_RETRY while b was not back yet: wait for it, or b
            # would leave unseen and the verdict be "vanished" after the grace).
            await wait_for(lambda: len(a._watches._active) == 1, 15)
            assert not watch.done()
            await b.close()
            assert await asyncio.wait_for(watch.wait(), 15) == ("b", "left")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in clients:
                await c.close()


async def test_a_client_whose_connection_drops_replaces_its_session_at_once() -> None:
    async with coordinator(idle_timeout=60.0) as h:
        a = await h.client("a", reconnect=True, idle_timeout=60.0)
        b = await h.client("b")
        await a.join_group("g")
        events = a.events()
        # Forget the connection here without telling the Coordinator, which
        # keeps the session (stale) until its idle timeout, a minute away.
        a._conn.abort()
        assert isinstance(await next_event(events), Disconnected)
        assert isinstance(await next_event(events), Reconnected)
        assert a.connected and await h.coord.num_clients() == 2
        await b.tell("a", "hello again")
        env = await asyncio.wait_for(anext(a.mailbox), 10)
        assert (env.sender, env.body) == ("b", "hello again")
        await wait_for(lambda: b.group_members("g"), 10)
        assert await b.group_members("g") == ["a"]


class Echo(Actor):
    async def receive(self, sender: str, msg: Any) -> Any:
        return msg


@pytest.mark.timeout(120)
async def test_channels_keep_running_and_proxied_streams_reset_during_the_outage() -> None:
    clients: list[Client] = []
    actor: Echo | None = None
    async with coord_process() as cp:
        try:
            a = await Client.connect(cp.config("a"))
            clients.append(a)
            b = await Client.connect(cp.config("b"))
            clients.append(b)
            actor = await Echo.spawn(cp.config("echo"))
            events = a.events()
            await a.new_channel("b")
            out_p, in_p = await a.new_proxied_stream("b")
            await out_p.send(b"proxied")
            incoming = await asyncio.wait_for(anext(b.incoming), 10)
            assert await incoming.recv.recv() == b"proxied"
            _bcast_out, bcast_in = await a.new_broadcast("news")

            await cp.kill()
            assert isinstance(await next_event(events), Disconnected)
            # The proxied stream ends with StreamReset at both ends ...
            with pytest.raises(StreamReset):
                await asyncio.wait_for(in_p.recv(), 10)
            with pytest.raises(StreamReset):
                await asyncio.wait_for(incoming.recv.recv(), 10)
            with pytest.raises(StreamReset):  # and so does the broadcast
                await asyncio.wait_for(bcast_in.recv(), 10)
            with pytest.raises(ConnectFailed):
                await a.new_broadcast("news")
            # ... while the direct channel carries new streams and tells.
            assert a.channels() == ["b"]
            out_d, in_d = await a.new_direct_stream("b")
            await out_d.send(b"direct")
            inc_d = await asyncio.wait_for(anext(b.incoming), 10)
            assert await inc_d.recv.recv() == b"direct"
            await inc_d.send.send(b"back")
            assert await in_d.recv() == b"back"
            await a.tell("b", "over the channel")
            env = await asyncio.wait_for(anext(b.mailbox), 10)
            assert env.body == "over the channel"
            assert not actor.stopped

            await cp.start()
            assert isinstance(await next_event(events), Reconnected)
            # The actor kept running and serves again through the new Coordinator.
            await wait_for(lambda: b.connected and actor is not None
                           and actor.client.connected, 30)
            assert await b.ask("echo", "still here", timeout=15.0) == "still here"
            out2, _in2 = await a.new_proxied_stream("b")
            await out2.send(b"again")
            inc2 = await asyncio.wait_for(anext(b.incoming), 10)
            assert await inc2.recv.recv() == b"again"

            # Closing while reconnecting ends at once, and ends the events.
            await cp.kill()
            assert isinstance(await next_event(events), Disconnected)
            await a.close()
            assert a.is_closed and not a.connected
            assert [e async for e in events] == []
            with pytest.raises(ClientClosed):
                await a.tell("b", "x")
        finally:
            if actor is not None:
                await actor.stop()
            for c in clients:
                await c.close()


_STALE_CLIENT = """
import asyncio, sys
from conec_actors import Client, ClientConfig

async def main() -> None:
    port, ca, cert, key = sys.argv[1:5]
    client = await Client.connect(ClientConfig(
        "alice", "localhost", addr=("127.0.0.1", int(port)), ca=ca.encode(),
        cert=cert.encode(), key=key.encode(), idle_timeout=60.0, reconnect=True))
    print("ready", flush=True)
    async for event in client.events():
        print(type(event).__name__, flush=True)
    print("ended", client.is_closed, flush=True)

asyncio.run(main())
"""


@pytest.mark.timeout(90)
async def test_the_same_certificate_replaces_its_stale_session_at_once() -> None:
    alice = self_signed(["alice"])
    async with coordinator(idle_timeout=60.0) as h:
        port = h.coord.address[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _STALE_CLIENT, str(port), h.cert.cert_pem.decode(),
            alice.cert_pem.decode(), alice.key_pem.decode(), stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
            bob = await h.client("bob")
            os.kill(proc.pid, signal.SIGSTOP)  # its session is stale, not closed
            # Someone else cannot take the id ...
            with pytest.raises(DuplicateId):
                await h.client("alice")
            # ... but alice, with her certificate, replaces her stale session
            # now (not after its 60 s idle timeout).
            new = await h.client("alice", cert=alice.cert_pem, key=alice.key_pem)
            assert await h.coord.num_clients() == 2
            await bob.tell("alice", "to the new one")
            env = await asyncio.wait_for(anext(new.mailbox), 10)
            assert (env.sender, env.body) == ("bob", "to the new one")
            with pytest.raises(DuplicateId):
                await h.client("alice")
            # The old process, woken, learns it was replaced and does not fight back.
            os.kill(proc.pid, signal.SIGCONT)
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"Disconnected\n"
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ended True\n"
            assert new.connected
            assert await h.coord.num_clients() == 2
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            await proc.wait()


async def test_without_reconnect_a_lost_coordinator_closes_the_client() -> None:
    async with coordinator() as h:
        a = await h.client("a")
        events = a.events()
        await h.coord.close()
        event = await next_event(events)
        assert isinstance(event, Disconnected) and event.reason
        assert [e async for e in events] == []
        assert a.is_closed and not a.connected
        with pytest.raises(ClientClosed):
            await a.new_proxied_stream("b")
        with pytest.raises(ConecError):
            await a.tell("b", 1)
