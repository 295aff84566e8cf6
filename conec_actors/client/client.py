"""The Client: one UDP socket, one connection to the Coordinator, direct
channels to other clients, and streams over either."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import wire
from .._util import AwaitableContext
from ..config import ClientConfig
from ..errors import (
    ClientClosed,
    ConecError,
    ConnectFailed,
    NoChannel,
    NoResponders,
    NoSuchBroadcast,
    NoSuchPeer,
    StreamReset,
)
from ..ids import is_valid_id
from ..streams import (
    BROADCAST_WINDOW,
    BROADCAST_WRITE_HIGH,
    BROADCAST_WRITE_LOW,
    BroadcastInStream,
    IncomingStream,
    InStream,
    OutStream,
    StreamCore,
)
from ..transport import Conn
from ..used_numbers import UsedNumbers, check_stream_number
from .channels import Channel, Channels
from .commands import (
    Close,
    CloseChannel,
    Command,
    FindChannel,
    Open,
    OpenChannel,
    Request,
    retrieve,
)
from .connect import Connected, connect
from .groups import Groups
from .link import CoordLink
from .mailbox import Mailbox
from .reconnect import ClientEvents, Reconnector
from .watch import Terminated, Watch, Watches

log = logging.getLogger(__name__)

COMMAND_QUEUE = 256
#: `close` delivers the tells already accepted for at most this long.
CLOSE_DRAIN = 5.0
#: How long `new_stream` waits for a channel before falling back to proxied.
NEW_STREAM_CHANNEL_WAIT = 2.0


class Client:
    """A connected client. Create it with `await Client.connect(cfg)` or
    `async with Client.connect(cfg) as client:`."""

    def __init__(self, cfg: ClientConfig, connected: Connected) -> None:
        self._cfg = cfg
        self._endpoint = connected.endpoint
        self._conn = connected.conn
        self._link = link = connected.link
        self._welcome = welcome = connected.welcome
        self._router = connected.router
        self._incoming = connected.router.user
        self._incoming.timeout = welcome.idle_timeout
        self._used_proxied = UsedNumbers()
        self._used_direct: dict[str, UsedNumbers] = {}
        self._closed = False
        self._closer: asyncio.Task[None] | None = None
        self._close_error: ConecError | None = None
        self._loop = asyncio.get_running_loop()
        # The client is an actor: this task alone changes its state, in the
        # order commands arrive in the mailbox.
        self._commands: asyncio.Queue[Command] = asyncio.Queue(COMMAND_QUEUE)
        self._task = self._loop.create_task(self._run())
        link.closed.add_done_callback(self._lost)
        self._chans = Channels(cfg, self._endpoint, link, self._router, self,
                               connected.cert_pem, connected.key_pem)
        #: peer -> its channel, opening or open (the mailbox looks routes up here).
        self._channels = self._chans.by_peer
        self._mailbox = Mailbox(_MailboxHost(self))
        self._watches = Watches(link, self._mailbox)
        self._groups = Groups(link, self._mailbox)
        self._reconnector = Reconnector(self, connected)

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def connect(cls, cfg: ClientConfig) -> AwaitableContext[Client]:
        """Connect to the Coordinator (awaitable and async context manager)."""
        return AwaitableContext(lambda: cls._connect(cfg))

    @classmethod
    async def _connect(cls, cfg: ClientConfig) -> Client:
        return cls(cfg, await connect(cfg))

    async def close(self) -> None:
        """Close the client, its channels and its streams (which end with
        `StreamReset` at the other ends). Tells that `tell` had accepted are
        delivered first (within `CLOSE_DRAIN`, 5 s, however slowly the
        receivers read; at once while reconnecting); new tells meanwhile raise
        `ClientClosed`."""
        if self._closer is None:
            self._closer = self._loop.create_task(self._close())
        await asyncio.shield(self._closer)

    async def _close(self) -> None:
        if not self._closed and not self._reconnector.reconnecting:
            await self._mailbox.drain(CLOSE_DRAIN)
        if not self._closed:
            self._closed = True
            done: asyncio.Future[None] = self._loop.create_future()
            await self._commands.put(Close(done))
        await self._task
        await self._mailbox.wait_closed()
        await self._chans.aclose()

    async def _run(self) -> None:
        cmd: Command | None = None
        try:
            while True:
                cmd = await self._commands.get()
                if isinstance(cmd, Close):
                    self._do_close()
                    cmd.done.set_result(None)
                    break
                if cmd.reply.done():  # the caller gave up (cancelled) before its turn
                    continue
                try:
                    cmd.reply.set_result(self._handle(cmd))
                except ConecError as exc:
                    cmd.reply.set_exception(exc)
        except Exception as exc:
            # A bug: fail closed rather than leave every later call waiting for
            # a task that is gone. Logged here, once; callers get the cause.
            log.error("client %r: the command task failed; closing the client", self.id,
                      exc_info=exc)
            self._fail(exc)
            if isinstance(cmd, Close):
                if not cmd.done.done():
                    cmd.done.set_result(None)
            elif cmd is not None and not cmd.reply.done():
                cmd.reply.set_exception(self._closed_error())
        # Fail whatever was queued behind the close.
        while not self._commands.empty():
            left = self._commands.get_nowait()
            if not isinstance(left, Close) and not left.reply.done():
                left.reply.set_exception(self._closed_error())

    def _fail(self, exc: Exception) -> None:
        """Close the client because of an unexpected error `exc` in its own
        code: every pending and later call raises `ClientClosed` from it."""
        self._closed = True
        err = ClientClosed(f"the client failed: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        self._close_error = err
        try:
            self._do_close()
        except Exception:  # already failing: close what can be closed
            log.debug("client %r: error while closing after a failure", self.id,
                      exc_info=True)
            self._endpoint.close()

    def _closed_error(self) -> ClientClosed:
        """A fresh `ClientClosed` (raising one instance many times grows its
        traceback) with the reason and cause of the close."""
        err = self._close_error
        if not isinstance(err, ClientClosed):
            return ClientClosed("the client was closed")
        fresh = ClientClosed(str(err))
        fresh.__cause__ = err.__cause__
        return fresh

    def _handle(self, cmd: Request) -> Any:
        if isinstance(cmd, Open):
            return self._do_open(cmd)
        if isinstance(cmd, OpenChannel):
            self._check_open()
            return self._chans.open(cmd.peer)
        if isinstance(cmd, FindChannel):
            return self._chans.find(cmd.peer)
        return self._chans.close_channel(cmd.peer)

    def _do_close(self) -> None:
        self._reconnector.close()
        if self._close_error is None:
            self._close_error = ClientClosed("the client was closed")
        self._mailbox.close()
        self._chans.end_all(wire.Code.CLIENT_CLOSED, f"{self.id!r} closed")
        self._conn.close(wire.Code.CLIENT_CLOSED, "client closed")
        self._link.terminated(self._conn, wire.Code.CLIENT_CLOSED, "client closed")
        self._incoming.end()
        self._endpoint.close()

    def _lost(self, fut: asyncio.Future[ConecError]) -> None:
        """The Coordinator is gone: reconnect (`ClientConfig.reconnect`) or
        close. Direct channels keep running."""
        if not self._reconnector.lost(fut.result()):
            self._give_up(fut.result())

    def _give_up(self, err: ConecError) -> None:
        if self._close_error is None:
            self._close_error = err if isinstance(err, ClientClosed) else ClientClosed(
                f"lost the Coordinator: {err}")
        self._watches.lost(self._closed_error())
        self._groups.lost()
        if not self._channels:
            self._no_path_left()

    def _no_path_left(self) -> None:
        """Neither the Coordinator nor a channel can bring anything more: the
        incoming streams and the mailbox end (what already arrived is kept)."""
        self._incoming.end()
        self._mailbox.end_inbox()

    def _check_open(self) -> None:
        if self._close_error is not None:
            raise self._closed_error()
        if not self._reconnector.up:
            raise ConnectFailed(f"{self.id!r} is reconnecting to its Coordinator")

    def _adopt(self, conn: Conn, link: CoordLink, welcome: wire.Welcome) -> None:
        """Carry on over a new connection to the Coordinator (reconnected)."""
        self._conn, self._link, self._welcome = conn, link, welcome
        self._incoming.timeout = welcome.idle_timeout
        link.closed.add_done_callback(self._lost)
        self._chans.rebind(link)
        self._watches.rebind(link)
        self._groups.rebind(link)

    def _check_not_closed(self) -> None:
        if self._closed:
            raise self._closed_error()

    # -- properties -------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._cfg.id

    @property
    def config(self) -> ClientConfig:
        return self._cfg

    @property
    def max_message_size(self) -> int:
        """The effective message size limit toward the Coordinator (the smaller
        of both sides')."""
        return self._link.max_message_size

    @property
    def observed_address(self) -> tuple[str, int]:
        """Where the Coordinator sees this client from."""
        host, port = self._welcome.observed_addr
        return (host, port)

    @property
    def is_closed(self) -> bool:
        """True once the client was closed or lost its Coordinator for good
        (not while it reconnects: see `connected`)."""
        return self._close_error is not None

    @property
    def connected(self) -> bool:
        """True while connected to the Coordinator (not while reconnecting,
        when calls that need it raise `ConnectFailed`, nor once closed)."""
        return self._close_error is None and self._reconnector.connected

    def events(self) -> ClientEvents:
        """`async for event in client.events()`: `Disconnected(reason)` when
        the Coordinator is lost, `Reconnected()` when it is back (with
        `ClientConfig.reconnect`), from this call on; ends at close."""
        return self._reconnector.events()

    @property
    def incoming(self) -> AsyncIterator[IncomingStream]:
        """Streams other clients open to this one, proxied and direct; ends
        when the client closes."""
        return self._iter_incoming()

    async def _iter_incoming(self) -> AsyncIterator[IncomingStream]:
        while True:
            item = await self._incoming.get()
            if item is None:
                return
            yield item

    def channels(self) -> list[str]:
        """Peers this client has an open direct channel with."""
        return self._chans.open_peers()

    # -- proxied streams ---------------------------------------------------------

    async def new_proxied_stream(self, peer: str, *, stream_id: int | None = None
                                 ) -> tuple[OutStream, InStream]:
        """Open a stream to `peer` relayed by the Coordinator.

        Raises `NoSuchPeer` if `peer` is not connected and `StreamIdInUse` if
        this client already used `stream_id`.
        """
        return await self._open_proxied(peer, stream_id, "")

    async def _open_proxied(self, peer: str, stream_id: int | None, purpose: str
                            ) -> tuple[OutStream, InStream]:
        self._check_open()
        n = None if stream_id is None else check_stream_number(stream_id)
        if not is_valid_id(peer):
            raise NoSuchPeer(f"no client {peer!r} is connected (not a valid id)")
        core, fut = await self._ask(Open(peer, n, purpose, self._loop.create_future()))
        return await self._opened(core, fut, peer)

    def _do_open(self, cmd: Open) -> tuple[StreamCore, asyncio.Future[None]]:
        self._check_open()
        if self._link.closed.done():  # just lost: `_lost` has not run yet
            raise ConnectFailed(f"{self.id!r} lost its Coordinator")
        n = self._used_proxied.pick(cmd.n, "proxied")
        if cmd.kind == "broadcast":
            core, opened = self._link.open_stream(cmd.peer, n, kind="broadcast",
                                                  recv_extra=wire.BROADCAST_OVERHEAD)
            core.set_buffers(window=BROADCAST_WINDOW, high_water=BROADCAST_WRITE_HIGH,
                             low_water=BROADCAST_WRITE_LOW)
            return core, opened
        return self._link.open_stream(cmd.peer, n, cmd.purpose)

    async def _opened(self, core: StreamCore, fut: asyncio.Future[None], peer: str
                      ) -> tuple[OutStream, InStream]:
        try:
            await fut
        except asyncio.CancelledError:
            core.fail_local(wire.Code.PEER_GONE, "opening was cancelled")
            raise
        except NoSuchPeer:
            raise NoSuchPeer(f"no client {peer!r} is connected") from None
        return OutStream(core), InStream(core)

    async def _ask(self, cmd: Request) -> Any:
        self._check_not_closed()
        await self._commands.put(cmd)
        if self._task.done() and not cmd.reply.done():
            # Queued after the task ended (a put that waited for room).
            cmd.reply.set_exception(self._closed_error())
        try:
            return await cmd.reply
        except asyncio.CancelledError:
            if isinstance(cmd, Open) and cmd.reply.done() and not cmd.reply.cancelled() \
                    and cmd.reply.exception() is None:
                # Handled just before the caller gave up: nobody will own the
                # stream, so abort it rather than leave an orphan at the peer.
                core, opened = cmd.reply.result()
                core.fail_local(wire.Code.PEER_GONE, "opening was cancelled")
                opened.add_done_callback(retrieve)
            raise

    # -- broadcasts ----------------------------------------------------------------

    async def new_broadcast(self, chan: str) -> tuple[OutStream, BroadcastInStream]:
        """Join broadcast `chan` (creating it if needed): every member receives
        every member's messages, its own included, in one shared order. The
        slowest reader throttles the senders; read and send in separate tasks."""
        self._check_open()
        if not isinstance(chan, str) or not 1 <= len(chan) <= wire.MAX_BROADCAST_NAME:
            raise ValueError(f"a broadcast name is a str of 1-{wire.MAX_BROADCAST_NAME} "
                             "characters")
        core, fut = await self._ask(Open(chan, None, "", self._loop.create_future(),
                                          "broadcast"))
        try:
            await fut
        except asyncio.CancelledError:
            core.fail_local(wire.Code.PEER_GONE, "joining was cancelled")
            raise
        return OutStream(core), BroadcastInStream(core)

    async def broadcast_count(self, chan: str) -> tuple[int, int]:
        """(senders, receivers) of broadcast `chan`; `NoSuchBroadcast` if it
        does not exist."""
        self._check_open()
        reply = await self._link.request_count(chan)
        if reply.code:
            err = wire.error_for(reply.code)
            if isinstance(err, NoSuchBroadcast):
                raise NoSuchBroadcast(f"no broadcast named {chan!r} exists")
            raise err
        return reply.senders, reply.receivers

    # -- channels ------------------------------------------------------------------

    async def new_channel(self, peer: str) -> None:
        """Open a direct channel to `peer`, introduced by the Coordinator.

        Returns once both ends have registered the channel. Raises
        `NoSuchPeer`, `PeerNotListening`, `ChannelExists`, `ChannelToSelf`,
        `CertificateError` or `ConnectFailed` (no handshake within 5 s).
        """
        ch: Channel = await self._ask(OpenChannel(peer, self._loop.create_future()))
        await asyncio.shield(ch.ready)

    async def close_channel(self, peer: str) -> None:
        """Close the direct channel to `peer`: its streams end with
        `StreamReset` at both ends. `NoChannel` if there is none."""
        await self._ask(CloseChannel(peer, self._loop.create_future()))

    # -- direct streams ------------------------------------------------------------

    async def new_direct_stream(self, peer: str, *, stream_id: int | None = None
                                ) -> tuple[OutStream, InStream]:
        """Open a stream to `peer` over the direct channel (waits for a channel
        that is still opening). `NoChannel` if there is none."""
        return await self._open_direct(peer, stream_id, "")

    async def _open_direct(self, peer: str, stream_id: int | None, purpose: str
                           ) -> tuple[OutStream, InStream]:
        self._check_not_closed()
        n = None if stream_id is None else check_stream_number(stream_id)
        # Through the mailbox, so a new_channel called just before is seen.
        ch: Channel = await self._ask(FindChannel(peer, self._loop.create_future()))
        try:
            link = await asyncio.shield(ch.ready)
        except ConecError as exc:
            raise NoChannel(f"the channel to {peer!r} did not open: {exc}") from None
        if link.closed.done():
            raise NoChannel(f"the channel to {peer!r} is closed")
        used = self._used_direct.setdefault(peer, UsedNumbers())
        core, fut = link.open_stream(self.id, used.pick(n, "direct"), purpose)
        try:
            return await self._opened(core, fut, peer)
        except StreamReset as exc:
            raise NoChannel(f"the channel to {peer!r} closed: {exc}") from None

    async def new_stream(self, peer: str) -> tuple[OutStream, InStream]:
        """Open a stream to `peer` by the best path: over a channel if one is
        open or opens within about 2 s (trying to open one), else proxied by
        the Coordinator. The channel attempt may finish in the background and
        serve later streams."""
        self._check_not_closed()
        if peer != self.id and is_valid_id(peer):
            ch = self._channels.get(peer)
            if ch is None and not self.is_closed and self._chans.should_try(peer):
                with contextlib.suppress(ConecError):
                    ch = await self._ask(OpenChannel(peer, self._loop.create_future()))
                    ch.ready.add_done_callback(self._chans.note_outcome(peer))
            if ch is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(ch.ready), NEW_STREAM_CHANNEL_WAIT)
                    return await self.new_direct_stream(peer)
                except (TimeoutError, ConecError):
                    pass
        return await self.new_proxied_stream(peer)

    # -- actors ----------------------------------------------------------------------

    async def tell(self, peer: str, msg: Any) -> None:
        """Send `msg` (bytes or any msgspec-encodable value) to `peer`'s mailbox.

        Returns once queued (waits only while the queue toward `peer` is
        full; the first tell to a peer waits for its route). Order holds per
        peer, over the direct channel when one is open, else the Coordinator.
        Raises `NoResponders` (a `NoSuchPeer`: `peer` is not connected),
        `MessageTooLarge` or `ClientClosed`.
        """
        await self._mailbox.tell(peer, msg)

    async def ask(self, peer: str, msg: Any, timeout: float | None = 5.0, *,
                  reply_type: Any = None) -> Any:
        """Send `msg` to `peer` and return its answer; builtin `TimeoutError`
        after `timeout` s (the deadline travels with the ask: the receiver
        drops it unread once it has passed), `RemoteError` if the receiver
        failed to answer, `NoResponders` (a `NoSuchPeer`) if `peer` is not
        connected, `PeerGone` as soon as it goes away before answering."""
        return await self._mailbox.ask(peer, msg, timeout, reply_type=reply_type)

    async def watch(self, peer: str) -> Watch:
        """Watch `peer`: returns once the Coordinator watches it for this
        client. `await watch.wait()` then returns `Terminated(peer, reason)`
        once, `reason` being "left" (its client closed), "vanished" (its
        connection timed out or was lost) or "not-connected" (it was not
        connected when watched). The verdict comes after every tell `peer`
        sent this client before it left (they are in `mailbox` by then).
        Each call is a separate `Watch`; `watch.cancel()` stops one. At most
        `coord.watches.MAX_WATCHES` (1024) at once: beyond, `ProtocolError`.
        `ClientClosed` if this client is closed."""
        self._check_open()
        if not is_valid_id(peer):
            w = Watch(peer)
            w._resolve(Terminated(peer, "not-connected"))
            return w
        return await self._watches.watch(peer)

    # -- groups ----------------------------------------------------------------------

    async def join_group(self, name: str) -> None:
        """Join group `name` (a str of 1-255 characters; created on first
        join): `tell_group`/`ask_group` to it may now pick this client.
        Joining twice is fine. Raises `ProtocolError` beyond
        `coord.groups.MAX_GROUPS` groups or `MAX_MEMBERS` members, `ClientClosed`."""
        self._check_open()
        await self._groups.join(name)

    async def leave_group(self, name: str) -> None:
        """Leave group `name` (fine if not a member): once this returns,
        no sender picks this client for it any more. Closing leaves every group."""
        self._check_open()
        await self._groups.leave(name)

    async def group_members(self, name: str) -> list[str]:
        """The ids of `name`'s members now, in joining order (empty if
        there are none)."""
        self._check_open()
        return await self._groups.members(name)

    async def tell_group(self, name: str, msg: Any) -> None:
        """`tell` `msg` to one member of group `name`: the least loaded one
        as this client sees it (fewest of its asks outstanding, then fewest
        of its tells queued, counted in runs of `group_pick.TELL_RUN`; ties
        round-robin). `NoResponders` at once if the
        group has no members; otherwise raises as `tell`."""
        self._check_open()
        member = self._groups.pick_now(name, tell=True) or await self._groups.pick(name)
        epoch = self._groups.picker.epoch
        try:
            await self._mailbox.tell(member, msg)
        except NoResponders:  # not sent: the view was behind, or a stale route
            await self._groups.tell_again(name, msg, member, epoch)

    async def ask_group(self, name: str, msg: Any, timeout: float | None = 5.0, *,
                        reply_type: Any = None) -> Any:
        """`ask` one member of group `name`, picked as `tell_group` does,
        and return its answer. `NoResponders` at once if the group has no
        members; `PeerGone` if the member goes away before answering;
        otherwise raises as `ask`."""
        self._check_open()
        return await self._groups.ask(name, msg, timeout, reply_type)

    @property
    def mailbox(self) -> Mailbox:
        """Messages told or asked to this client: an async iterator of
        `Envelope`, ending when the client closes; `mailbox.typed(T)`
        decodes bodies as `T`."""
        return self._mailbox

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "connected" if self.connected else "reconnecting"
        return f"<Client {self.id!r} {state}>"


class _MailboxHost:
    """The client as its mailbox sees it (`mailbox.MailboxHost`): paths to
    peers and the client's state, without the mailbox knowing the Client."""

    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def max_message_size(self) -> int:
        return self._client.max_message_size

    def closed_error(self) -> ClientClosed:
        return self._client._closed_error()

    def has_channel(self, peer: str) -> bool:
        ch = self._client._channels.get(peer)
        return ch is not None and ch.link is not None and not ch.link.closed.done()

    async def open_route(self, peer: str, purpose: str, *, direct: bool,
                         reopen: bool = False) -> tuple[OutStream, InStream]:
        if direct:
            return await self._client._open_direct(peer, None, purpose)
        return await self._client._reconnector.open_proxied(peer, purpose, reopen)

    def handle_purpose(self, purpose: str,
                       handler: Callable[[IncomingStream], bool] | None) -> None:
        handlers = self._client._router.handlers
        if handler is None:
            handlers.pop(purpose, None)
        else:
            handlers[purpose] = handler


__all__ = ["Client"]
