"""Clients that outlive their Coordinator (`ClientConfig.reconnect`).

The `Reconnector` drives a client's `backoff.Presence`: when the connection
to the Coordinator ends it tells `Client.events()` listeners, and, with
`reconnect`, dials again from the same UDP socket (so direct channels, on
that socket, keep running) with the same id and certificate, waiting
`backoff.Backoff` delays, until a Coordinator welcomes it or the client
closes. Then the client adopts the new connection, and the groups it had
joined or followed and its watches are restored.

Meanwhile the mailbox's proxied routes wait here (`open_proxied`) instead of
failing: a pair's writer resends what its receiver has not acknowledged once
a route reopens, so per-pair order holds and nothing is duplicated. A route
that had opened also waits up to `backoff.PEER_GRACE` for its peer, which
may be reconnecting too, before it is dead. Calls that need the Coordinator
itself (opening proxied streams, broadcasts, channels, watches, group
requests, `tell_group`/`ask_group`) raise `ConnectFailed` while it is away.

Watches: the Coordinator that held them is gone, so each is asked again at
the new one once reconnected. A peer not connected then may be reconnecting
too: it is asked again every `watch.REARM_RETRY` until `PEER_GRACE` has
passed, then the verdict is "vanished" (it went while nobody could see it).
Verdicts already given stay held for their mailbox streams, as always.

The Coordinator lets a reconnecting client with the same certificate take
over its id from its stale session (not yet timed out), which it closes
with `Code.DUPLICATE_ID`; a client whose session was so replaced does not
reconnect (`backoff.permanent`), so two processes with one certificate do
not take the id from each other in turns.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .. import wire
from ..config import ClientConfig
from ..errors import ClientClosed, ConecError, ConnectFailed, NoSuchPeer, StreamReset
from ..streams import InStream, OutStream
from ..transport import Conn
from .backoff import PEER_GRACE, Backoff, ClientEvent, LinkState, Presence, permanent
from .connect import Connected, dial_coordinator
from .groups import Groups
from .link import CoordLink
from .watch import Watches

log = logging.getLogger(__name__)

#: How often a route waiting for its peer to come back tries again.
PEER_RETRY = 0.2


class ReconnectHost(Protocol):
    """What a `Reconnector` uses of its `Client` (the client's own parts:
    this module sits beside it, and the import runs one way)."""

    _closed: bool
    _link: CoordLink
    _watches: Watches
    _groups: Groups

    @property
    def config(self) -> ClientConfig: ...

    def _closed_error(self) -> ClientClosed: ...

    def _adopt(self, conn: Conn, link: CoordLink, welcome: wire.Welcome) -> None: ...

    def _give_up(self, err: ConecError) -> None: ...

    async def _open_proxied(self, peer: str, stream_id: int | None, purpose: str
                            ) -> tuple[OutStream, InStream]: ...


class Reconnector:
    """A client's connection to its Coordinator over time (see the module)."""

    def __init__(self, client: ReconnectHost, connected: Connected) -> None:
        self._client = client
        self._cfg = client.config
        self._endpoint = connected.endpoint
        self._router = connected.router
        self._cert = (connected.cert_pem, connected.key_pem)
        self._loop = asyncio.get_running_loop()
        self.presence = Presence(self._cfg.reconnect)
        self.backoff = Backoff()
        #: `presence.connected`, as a plain field (read per `tell_group`).
        self.up = True
        #: Set once connected again or closed (what waiting routes wait for).
        self._settled = asyncio.Event()
        self._settled.set()
        self._task: asyncio.Task[None] | None = None
        self._restoring: set[asyncio.Task[None]] = set()
        self._listeners: list[asyncio.Queue[ClientEvent | None]] = []

    @property
    def connected(self) -> bool:
        return self.up

    @property
    def reconnecting(self) -> bool:
        return self.presence.state is LinkState.DISCONNECTED

    # -- events ------------------------------------------------------------------

    def events(self) -> ClientEvents:
        """What happens from now on (listening starts at this call), until
        the client closes."""
        events = ClientEvents()
        if self.presence.state is LinkState.CLOSED:
            events._queue.put_nowait(None)
        else:
            self._listeners.append(events._queue)
        return events

    def _emit(self, events: list[ClientEvent]) -> None:
        for event in events:
            for q in self._listeners:
                q.put_nowait(event)

    def _end_events(self) -> None:
        listeners, self._listeners = self._listeners, []
        for q in listeners:
            q.put_nowait(None)

    # -- losing and finding the Coordinator -------------------------------------------

    def lost(self, err: ConecError) -> bool:
        """The connection ended with `err`: True if the client reconnects,
        False if it is closed (or closing) for good."""
        if self._client._closed:
            self.close()
            return False
        again, events = self.presence.lost(err)
        self._emit(events)
        if not again:
            self.up = False
            self._end_events()
            self._settled.set()
            return False
        log.warning("client %r lost its Coordinator (%s): reconnecting", self._cfg.id, err)
        self.up = False
        self._settled.clear()
        for task in self._restoring:
            task.cancel()
        self._client._watches.suspend()
        self._client._groups.suspend()
        self._task = self._loop.create_task(self._run())
        return True

    async def _run(self) -> None:
        client = self._client
        while True:
            await asyncio.sleep(self.backoff.next_delay())
            try:
                conn, link, welcome = await dial_coordinator(
                    self._cfg, self._endpoint, self._router, *self._cert)
            except ConecError as exc:
                if permanent(exc):
                    log.warning("client %r cannot reconnect: %s", self._cfg.id, exc)
                    self.presence.give_up()
                    self.up = False
                    self._end_events()
                    self._settled.set()
                    client._give_up(exc)
                    return
                log.debug("client %r: reconnect attempt %d failed: %s", self._cfg.id,
                          self.backoff.attempts, exc)
                continue
            except Exception as exc:  # e.g. OSError from the socket: try again
                log.warning("client %r: reconnect attempt failed: %r", self._cfg.id, exc)
                continue
            break
        self.backoff.reset()
        client._adopt(conn, link, welcome)
        self._emit([self.presence.reconnected()])
        self.up = True
        self._settled.set()
        log.info("client %r reconnected to its Coordinator", self._cfg.id)
        task = self._loop.create_task(self._restore())
        self._restoring.add(task)
        task.add_done_callback(self._restoring.discard)

    async def _restore(self) -> None:
        """Join and follow again what the client had, and re-arm its watches."""
        client = self._client
        try:
            await asyncio.gather(client._groups.restore(),
                                 client._watches.rearm(self._loop.time() + PEER_GRACE))
        except ConecError as exc:  # lost again: the next reconnect restores
            log.debug("client %r: restoring after a reconnect failed: %s", self._cfg.id, exc)

    def close(self) -> None:
        """The client closes: stop dialling at once."""
        self.presence.close()
        self.up = False
        if self._task is not None:
            self._task.cancel()
        for task in self._restoring:
            task.cancel()
        self._settled.set()
        self._end_events()

    # -- the mailbox's proxied routes ------------------------------------------------

    async def open_proxied(self, peer: str, purpose: str, reopen: bool
                           ) -> tuple[OutStream, InStream]:
        """Open a mailbox stream to `peer` through the Coordinator. With
        `reconnect`, wait across outages, and for a route that had opened
        (`reopen`) wait up to `PEER_GRACE` for the peer to come back."""
        client = self._client
        if not self.presence.reconnect:
            return await client._open_proxied(peer, None, purpose)
        deadline: float | None = None
        while True:
            await self._settled.wait()
            if not self.up:
                raise client._closed_error()
            link = client._link
            try:
                return await client._open_proxied(peer, None, purpose)
            except NoSuchPeer:
                now = self._loop.time()
                deadline = now + PEER_GRACE if deadline is None else deadline
                if not reopen or now >= deadline:
                    raise
                await asyncio.sleep(PEER_RETRY)
            except (ConnectFailed, ClientClosed, StreamReset):
                if self.presence.connected and client._link is link \
                        and not link.closed.done():
                    raise  # not the outage's doing


class ClientEvents:
    """`async for event in client.events()`: `Disconnected(reason)` and
    `Reconnected()` as they happen; ends when the client closes."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: asyncio.Queue[ClientEvent | None] = asyncio.Queue()

    def __aiter__(self) -> ClientEvents:
        return self

    async def __anext__(self) -> ClientEvent:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # ended for every later call too
            raise StopAsyncIteration
        return event
