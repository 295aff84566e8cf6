"""`Actor`: a connected client that serves its mailbox one message at a time.

Subclass it, implement ``async def receive(self, sender, body)`` (its return
value answers an ``ask``), optionally ``on_start``, ``on_stop`` and
``on_stream``, and start it with ``actor = await MyActor.spawn(cfg, ...)``::

    class Echo(Actor):
        async def receive(self, sender: str, body: Any) -> Any:
            return body

    async with await Echo.spawn(cfg) as echo:
        ...

`demo_tell_ask` measures tell throughput and ask latency between two
clients (used by ``conec-actors demo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, ClassVar, Self

from .client import Client
from .client.mailbox import Envelope
from .client.watch import Reason, Terminated, Watch
from .config import ClientConfig
from .errors import ConecError
from .streams import IncomingStream

log = logging.getLogger(__name__)

__all__ = ["Actor", "demo_tell_ask"]


class Actor:
    """Base class of actors: a `Client` plus a loop that hands each mailbox
    message to `receive`, in order, one at a time.

    - ``receive(sender, body)`` (required): the return value answers an
      ``ask`` (and is ignored for a ``tell``). An exception is logged, answers
      the ask with ``RemoteError`` (the exception's type name and message,
      raised on the asking side), and the actor keeps serving. An ask whose
      deadline passed while it waited is dropped: ``receive`` never sees it.
    - ``on_start()``: runs before the first message; `client` and `id` are
      available from here on. If it raises, `spawn` closes the client and
      raises.
    - ``on_stop()``: runs once when the actor stops, before its client closes.
    - ``on_stream(incoming)``: if a subclass defines it, the actor reads
      ``client.incoming`` and runs it for each stream (concurrently, one task
      per stream).
    - ``on_terminated(peer, reason)``: called for each peer the actor
      watches (``await self.watch(peer)``) once it is gone, between two
      messages like one more message, and after `receive` has handled every
      tell that peer sent before it left.
    - ``message_type``: set it to a type (msgspec Struct, dataclass or
      builtin) to receive bodies decoded as that type; a message that does
      not decode is skipped (logged; an ask gets
      ``RemoteError("DecodeError", ...)``).

    The actor stops with `await actor.stop()`, on leaving
    ``async with``, or when its client closes.
    """

    #: Decode mailbox bodies as this type (None: builtins).
    message_type: ClassVar[Any] = None
    #: Groups the actor joins on spawn, once it serves its mailbox.
    groups: ClassVar[tuple[str, ...]] = ()

    _client: Client | None = None
    _tasks: set[asyncio.Task[Any]]
    _stop_task: asyncio.Task[None] | None
    _stopped: asyncio.Event
    #: Envelopes taken from the mailbox / fully handled, for ordering
    #: `on_terminated` after the tells that came before the verdict.
    _taken: int = 0
    _handled: int = 0
    #: Verdicts waiting for the message count they come after.
    _due: list[tuple[int, Terminated]]
    #: Set while `on_terminated` runs outside the serving loop (it was idle).
    _side: asyncio.Future[None] | None = None

    # -- to override ----------------------------------------------------------

    async def receive(self, sender: str, body: Any) -> Any:
        """Handle one message from `sender`; the return value answers an ask."""
        raise NotImplementedError(f"{type(self).__name__} must implement receive()")

    async def on_start(self) -> None:
        """Called once, after connecting and before the first message."""

    async def on_stop(self) -> None:
        """Called once when the actor stops, before its client closes."""

    async def on_stream(self, incoming: IncomingStream) -> None:
        """Define this in a subclass to handle streams other clients open to
        this actor (``client.incoming``); the base class does not read them."""

    async def on_terminated(self, peer: str, reason: Reason) -> None:
        """A peer this actor watches is gone: `reason` is "left", "vanished"
        or "not-connected" (see `Client.watch`)."""

    # -- watching --------------------------------------------------------------------

    async def watch(self, peer: str) -> Watch:
        """Watch `peer`: `on_terminated(peer, reason)` is called once it is
        gone (or at once, with "not-connected", if it is not connected).
        `cancel()` the returned `Watch` to stop. Raises as `Client.watch`."""
        w = await self.client.watch(peer)
        self._spawn(self._await_verdict(w))
        return w

    async def _await_verdict(self, w: Watch) -> None:
        try:
            t = await w.wait()
        except (asyncio.CancelledError, ConecError):
            return  # cancelled, or the client closed: the actor is stopping
        # Every tell the peer sent is in the mailbox now: call back after the
        # serving loop has handled them.
        after = self._taken + self.client.mailbox.queued
        if after > self._handled or self._side is not None:  # busy, or messages first
            self._due.append((after, t))
            return
        done = asyncio.get_running_loop().create_future()
        self._side = done
        try:
            await self._call_terminated(t)
            await self._run_due()  # verdicts that came meanwhile
        finally:
            self._side = None
            done.set_result(None)

    async def _run_due(self) -> None:
        # Ready: its messages are handled, or none is left to handle (the
        # mailbox skipped some that did not decode).
        while self._due and (self._due[0][0] <= self._handled or (
                not self.client.mailbox.queued and self._taken == self._handled)):
            _, t = self._due.pop(0)
            await self._call_terminated(t)

    async def _call_terminated(self, t: Terminated) -> None:
        try:
            await self.on_terminated(t.peer, t.reason)
        except Exception:
            log.exception("actor %r: on_terminated failed for %r", self.id, t.peer)

    # -- lifecycle ----------------------------------------------------------------

    @classmethod
    async def spawn(cls, cfg: ClientConfig, *args: Any, **kwargs: Any) -> Self:
        """Build ``cls(*args, **kwargs)``, connect a client with `cfg`, run
        `on_start` and start serving the mailbox. With
        ``ClientConfig(reconnect=True)`` the actor keeps running while its
        client reconnects to a lost Coordinator (its `groups` are joined again)."""
        actor = cls(*args, **kwargs)
        client = await Client.connect(cfg)
        try:
            await actor._start(client)
        except BaseException:
            await client.close()
            raise
        return actor

    async def _start(self, client: Client) -> None:
        self._client = client
        self._tasks = set()
        self._stop_task = None
        self._stopped = asyncio.Event()
        self._due = []
        await self.on_start()
        self._spawn(self._serve_mailbox())
        if type(self).on_stream is not Actor.on_stream:
            self._spawn(self._serve_streams())
        for name in self.groups:
            await client.join_group(name)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        """Stop serving, run `on_stop`, then close the client (which first
        delivers the tells the actor made, see `Client.close`). Idempotent;
        may be called from `receive` (the current message then ends there)."""
        if self._client is None:
            return
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.on_stop()
        except Exception:
            log.exception("actor %r: on_stop failed", self.id)
        finally:
            assert self._client is not None
            await self._client.close()
            self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until the actor has stopped (by `stop`, or its client closing)."""
        await self._stopped.wait()

    @property
    def stopped(self) -> bool:
        """True once the actor has stopped."""
        return self._client is not None and self._stopped.is_set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # -- properties ---------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The actor's client (available from `on_start` on)."""
        if self._client is None:
            raise RuntimeError("the actor is not started: use `await "
                               f"{type(self).__name__}.spawn(cfg)`")
        return self._client

    @property
    def id(self) -> str:
        """The actor's client id."""
        return self.client.id

    # -- the loops -----------------------------------------------------------------

    async def _serve_mailbox(self) -> None:
        client = self.client
        envelopes: AsyncIterator[Envelope[Any]] = (
            client.mailbox if self.message_type is None
            else client.mailbox.typed(self.message_type))
        async for env in envelopes:
            self._taken += 1
            if self._side is not None:  # on_terminated runs: one thing at a time
                await self._side
            await self._handle(env)
            self._handled += 1
            if self._due:
                await self._run_due()
        # The mailbox ended: the client closed under us.
        self._stop_task = self._stop_task or asyncio.get_running_loop().create_task(
            self._stop())

    async def _handle(self, env: Envelope[Any]) -> None:
        try:
            result = await self.receive(env.sender, env.body)
        except Exception as exc:
            log.exception("actor %r: receive failed on a message from %r",
                          self.id, env.sender)
            if env.is_ask:
                with contextlib.suppress(ConecError):
                    await env._fail(type(exc).__name__, str(exc))
            return
        if env.is_ask:
            try:
                await env.reply(result)
            except (ConecError, TypeError, ValueError) as exc:
                log.warning("actor %r: cannot answer %r: %s", self.id, env.sender, exc)
                with contextlib.suppress(ConecError):
                    await env._fail(type(exc).__name__, str(exc))

    async def _serve_streams(self) -> None:
        async for incoming in self.client.incoming:
            self._spawn(self._handle_stream(incoming))

    async def _handle_stream(self, incoming: IncomingStream) -> None:
        try:
            await self.on_stream(incoming)
        except Exception:
            log.exception("actor %r: on_stream failed for a stream from %r",
                          self.id, incoming.peer)
            incoming.send.reset(0)
            incoming.recv.close()

    def __repr__(self) -> str:
        who = repr(self._client.id) if self._client is not None else "(not started)"
        return f"<{type(self).__name__} {who}>"


async def demo_tell_ask(a: Client, b: Client, seconds: float) -> dict[str, float]:
    """Measure tell throughput and ask latency from `a` to `b` for about
    `seconds` (half telling, half asking) while `b` serves its mailbox.

    Returns ``{"tells", "tells_per_s", "asks", "ask_p50_ms", "ask_p99_ms"}``.
    Every tell is delivered before the figures are taken (an ask after the
    last tell is the barrier: tells and asks share one ordered path).
    """
    loop = asyncio.get_running_loop()
    received = 0

    async def serve() -> None:
        nonlocal received
        async for env in b.mailbox:
            received += 1
            if env.is_ask:
                await env.reply(env.body)

    server = loop.create_task(serve())
    try:
        half = max(seconds, 0.1) / 2
        start = loop.time()
        tells = 0
        payload = {"n": 0, "text": "hello"}
        while loop.time() - start < half:
            for _ in range(100):
                payload["n"] = tells
                await a.tell(b.id, payload)
                tells += 1
            await asyncio.sleep(0)
        await a.ask(b.id, "barrier", timeout=30.0)
        tell_time = loop.time() - start
        latencies: list[float] = []
        start = loop.time()
        while loop.time() - start < half:
            t0 = loop.time()
            await a.ask(b.id, len(latencies), timeout=10.0)
            latencies.append((loop.time() - t0) * 1000)
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies \
            else 0.0

    return {
        "tells": float(tells),
        "tells_per_s": tells / tell_time if tell_time > 0 else 0.0,
        "asks": float(len(latencies)),
        "ask_p50_ms": pct(0.50),
        "ask_p99_ms": pct(0.99),
    }
