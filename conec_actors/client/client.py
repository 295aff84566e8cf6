"""The Client: one UDP socket, one connection to the Coordinator, direct
channels to other clients, and streams over either."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import wire
from .._util import AwaitableContext
from ..certs import load_pem, self_signed
from ..config import ClientConfig
from ..errors import (
    ChannelExists,
    ChannelToSelf,
    ClientClosed,
    ConecError,
    ConnectFailed,
    NoChannel,
    NoSuchBroadcast,
    NoSuchPeer,
    StreamIdInUse,
    StreamReset,
)
from ..ids import is_valid_id
from ..streams import (
    BROADCAST_WINDOW,
    BROADCAST_WRITE_HIGH,
    BROADCAST_WRITE_LOW,
    STREAM_WINDOW,
    BroadcastInStream,
    IncomingStream,
    InStream,
    OutStream,
    StreamCore,
    check_stream_number,
)
from ..tlsconf import quic_configuration
from ..transport import Conn, Endpoint, ServerSettings
from ..used_numbers import UsedNumbers
from .channel import ChannelLink
from .link import CoordLink, IncomingRouter, connection_error
from .mailbox import Mailbox

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
COMMAND_QUEUE = 256
#: Delay between dialling successive addresses of the Coordinator's name.
ATTEMPT_STAGGER = 0.25
#: A channel that has not completed its handshake and hello by then fails.
CHANNEL_TIMEOUT = 5.0
#: `close` delivers the tells already accepted for at most this long.
CLOSE_DRAIN = 5.0
#: How long `new_stream` waits for a channel before falling back to proxied.
NEW_STREAM_CHANNEL_WAIT = 2.0
#: After a failed automatic channel attempt, `new_stream` goes proxied without
#: trying again for this long.
CHANNEL_RETRY_AFTER = 30.0
#: How long an opener whose attempt the peer refused as a duplicate waits for
#: the peer's own simultaneous offer (which wins the tie if the peer's id is
#: lower) before raising `ChannelExists`.
TIE_WAIT = 2.0
#: A target forgets an introduction nobody dialled within this time.
INTRODUCTION_TTL = 10.0
#: Knocks toward an opener's address: a small datagram that no QUIC
#: endpoint acts upon, sent from the socket the channel will use.
KNOCK = b"conec-actors knock"
#: A knock must not reach the opener's NAT before the opener's first packet
#: has left through it: a NAT that accepts it records an inbound flow on the
#: opener's port and moves the dial to another port, which the target's NAT
#: then refuses. So the target knocks in two phases: from the offer on, with a
#: TTL that crosses its own NAT and dies soon after; once the Coordinator
#: relays that the opener is dialing, with the system's TTL.
EARLY_KNOCK_TTL = 2
EARLY_KNOCKS = (0.0,) + (0.05,) * 10 + (0.25,) * 18
FULL_KNOCKS = (0.0,) + (0.05,) * 20 + (0.25,) * 16


@dataclass(eq=False)
class _Channel:
    """A channel to one peer, opening or open."""

    peer: str
    opener: bool
    ready: asyncio.Future[ChannelLink]
    link: ChannelLink | None = None
    expected_cert: bytes = b""
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    expire: asyncio.TimerHandle | None = None
    knock_addr: tuple[str, int] | None = None
    #: The Coordinator introduced the opener: the peer accepted our attempt.
    introduced: bool = False
    #: The opener's attempt gave way to the peer's simultaneous one; its
    #: `ready` follows the peer's channel.
    superseded: bool = False

    def stop_tasks(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.expire is not None:
            self.expire.cancel()


class Client:
    """A connected client. Create it with `await Client.connect(cfg)` or
    `async with Client.connect(cfg) as client:`."""

    def __init__(self, cfg: ClientConfig, endpoint: Endpoint, conn: Conn, link: CoordLink,
                 welcome: wire.Welcome, router: IncomingRouter,
                 cert_pem: bytes, key_pem: bytes) -> None:
        self._cfg = cfg
        self._endpoint = endpoint
        self._conn = conn
        self._link = link
        self._welcome = welcome
        self._router = router
        self._incoming = router.user
        self._incoming.timeout = welcome.idle_timeout
        self._cert_pem = cert_pem
        self._key_pem = key_pem
        self._peer_ca = load_pem(cfg.client_ca) if cfg.client_ca is not None else None
        self._used_proxied = UsedNumbers()
        self._used_direct: dict[str, UsedNumbers] = {}
        self._channels: dict[str, _Channel] = {}
        self._introductions: dict[bytes, str] = {}  # expected cert DER -> peer
        self._channel_failed_at: dict[str, float] = {}
        self._closed = False
        self._closer: asyncio.Task[None] | None = None
        self._close_error: ConecError | None = None
        self._loop = asyncio.get_running_loop()
        # The client is an actor: this task alone changes its state, in the
        # order commands arrive in the mailbox.
        self._commands: asyncio.Queue[_Command] = asyncio.Queue(COMMAND_QUEUE)
        self._task = self._loop.create_task(self._run())
        link.closed.add_done_callback(self._lost)
        if cfg.listen:
            endpoint.server = ServerSettings(
                configuration=self._quic_config(is_client=False),
                stream_window=STREAM_WINDOW, accept=self._accept_channel)
        link.on_offer = self._on_offer
        link.on_dialing = self._on_peer_dialing
        for offer in link.early_offers:
            self._on_offer(offer)
        link.early_offers.clear()
        self._mailbox = Mailbox(self)

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def connect(cls, cfg: ClientConfig) -> AwaitableContext[Client]:
        """Connect to the Coordinator (awaitable and async context manager)."""
        return AwaitableContext(lambda: cls._connect(cfg))

    @classmethod
    async def _connect(cls, cfg: ClientConfig) -> Client:
        if cfg.cert is not None and cfg.key is not None:
            cert_pem, key_pem = load_pem(cfg.cert), load_pem(cfg.key)
        else:
            ck = self_signed([cfg.id])
            cert_pem, key_pem = ck.cert_pem, ck.key_pem
        ca = load_pem(cfg.ca) if cfg.ca is not None else None
        qcfg = quic_configuration(
            is_client=True, cert_pem=cert_pem, key_pem=key_pem,
            idle_timeout=cfg.idle_timeout, max_datagram_size=cfg.max_datagram_size,
            stream_window=STREAM_WINDOW, server_name=cfg.coord, cadata=ca)
        addrs = await _resolve(cfg)
        endpoint = await Endpoint.bind(None, 0)
        router = IncomingRouter()
        try:
            conn, link = await _dial(endpoint, addrs, qcfg, cfg, router)
            link.send_hello(conn, wire.Hello(cfg.id, wire.PROTOCOL_VERSION,
                                             cfg.max_message_size, cfg.idle_timeout,
                                             cfg.max_datagram_size))
            try:
                welcome = await asyncio.wait_for(asyncio.shield(link.welcome),
                                                 CONNECT_TIMEOUT)
            except TimeoutError:
                conn.close(wire.Code.HELLO_TIMEOUT, "no answer to hello")
                raise ConnectFailed(
                    f"the Coordinator at {conn.peer_address} did not answer the hello "
                    f"within {CONNECT_TIMEOUT:.0f} s") from None
        except BaseException:
            endpoint.close()
            raise
        link.max_message_size = welcome.max_message_size
        conn.quic.set_max_datagram_size(welcome.max_datagram_size)
        if cfg.keepalive:
            conn.start_keepalive(welcome.idle_timeout / 3)
        return cls(cfg, endpoint, conn, link, welcome, router, cert_pem, key_pem)

    async def close(self) -> None:
        """Close the client, its channels and its streams (which end with
        `StreamReset` at the other ends). Tells that `tell` had accepted are
        delivered first (within `CLOSE_DRAIN`, 5 s, however slowly the
        receivers read); new tells meanwhile raise `ClientClosed`."""
        if self._closer is None:
            self._closer = self._loop.create_task(self._close())
        await asyncio.shield(self._closer)

    async def _close(self) -> None:
        if not self._closed:
            await self._mailbox.drain(CLOSE_DRAIN)
        if not self._closed:
            self._closed = True
            done: asyncio.Future[None] = self._loop.create_future()
            await self._commands.put(_Close(done))
        await self._task
        await self._mailbox.wait_closed()

    async def _run(self) -> None:
        cmd: _Command | None = None
        try:
            while True:
                cmd = await self._commands.get()
                if isinstance(cmd, _Close):
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
            if isinstance(cmd, _Close):
                if not cmd.done.done():
                    cmd.done.set_result(None)
            elif cmd is not None and not cmd.reply.done():
                cmd.reply.set_exception(self._closed_error())
        # Fail whatever was queued behind the close.
        while not self._commands.empty():
            left = self._commands.get_nowait()
            if not isinstance(left, _Close) and not left.reply.done():
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

    def _handle(self, cmd: _Request) -> Any:
        if isinstance(cmd, _Open):
            return self._do_open(cmd)
        if isinstance(cmd, _OpenChannel):
            return self._do_open_channel(cmd.peer)
        if isinstance(cmd, _FindChannel):
            ch = self._channels.get(cmd.peer)
            if ch is None:
                raise NoChannel(f"there is no channel to {cmd.peer!r}; open one with "
                                "new_channel")
            return ch
        return self._do_close_channel(cmd.peer)

    def _do_close(self) -> None:
        if self._close_error is None:
            self._close_error = ClientClosed("the client was closed")
        self._mailbox.close()
        for ch in list(self._channels.values()):
            self._end_channel(ch, wire.Code.CLIENT_CLOSED, f"{self.id!r} closed")
        self._conn.close(wire.Code.CLIENT_CLOSED, "client closed")
        self._link.terminated(self._conn, wire.Code.CLIENT_CLOSED, "client closed")
        self._incoming.end()
        self._endpoint.close()

    def _lost(self, fut: asyncio.Future[ConecError]) -> None:
        """The Coordinator is gone. Direct channels keep running."""
        if self._close_error is None:
            err = fut.result()
            self._close_error = err if isinstance(err, ClientClosed) else ClientClosed(
                f"lost the Coordinator: {err}")
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
        """True once the client was closed or lost its Coordinator."""
        return self._close_error is not None

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
        return sorted(p for p, ch in self._channels.items() if ch.link is not None)

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
        core, fut = await self._ask(_Open(peer, n, purpose, self._loop.create_future()))
        return await self._opened(core, fut, peer)

    def _do_open(self, cmd: _Open) -> tuple[StreamCore, asyncio.Future[None]]:
        self._check_open()
        n = self._pick_number(self._used_proxied, cmd.n, "proxied")
        if cmd.kind == "broadcast":
            core, opened = self._link.open_stream(cmd.peer, n, kind="broadcast",
                                                  recv_extra=wire.BROADCAST_OVERHEAD)
            core.set_buffers(window=BROADCAST_WINDOW, high_water=BROADCAST_WRITE_HIGH,
                             low_water=BROADCAST_WRITE_LOW)
            return core, opened
        return self._link.open_stream(cmd.peer, n, cmd.purpose)

    @staticmethod
    def _pick_number(used: UsedNumbers, wanted: int | None, kind: str) -> int:
        n = used.next_free() if wanted is None else wanted
        if not used.add(n):
            raise StreamIdInUse(f"{kind} stream number {n} was already used")
        return n

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

    async def _ask(self, cmd: _Request) -> Any:
        self._check_not_closed()
        await self._commands.put(cmd)
        if self._task.done() and not cmd.reply.done():
            # Queued after the task ended (a put that waited for room).
            cmd.reply.set_exception(self._closed_error())
        try:
            return await cmd.reply
        except asyncio.CancelledError:
            if isinstance(cmd, _Open) and cmd.reply.done() and not cmd.reply.cancelled() \
                    and cmd.reply.exception() is None:
                # Handled just before the caller gave up: nobody will own the
                # stream, so abort it rather than leave an orphan at the peer.
                core, opened = cmd.reply.result()
                core.fail_local(wire.Code.PEER_GONE, "opening was cancelled")
                opened.add_done_callback(_retrieve)
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
        core, fut = await self._ask(_Open(chan, None, "", self._loop.create_future(),
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
        ch: _Channel = await self._ask(_OpenChannel(peer, self._loop.create_future()))
        await asyncio.shield(ch.ready)

    def _do_open_channel(self, peer: str) -> _Channel:
        self._check_open()
        if peer == self.id:
            raise ChannelToSelf(f"{self.id!r} cannot open a channel to itself")
        if not is_valid_id(peer):
            raise NoSuchPeer(f"no client {peer!r} is connected (not a valid id)")
        if peer in self._channels:
            state = "open" if self._channels[peer].link is not None else "opening"
            raise ChannelExists(f"a channel to {peer!r} is already {state}")
        ch = _Channel(peer, True, self._loop.create_future())
        self._channels[peer] = ch
        ch.tasks.append(self._loop.create_task(self._dial_channel(ch)))
        return ch

    async def _dial_channel(self, ch: _Channel) -> None:
        conn: Conn | None = None
        try:
            req, intro = await self._link.request_channel(ch.peer, self._cfg.holepunch)
            if intro.code == wire.Code.CHANNEL_EXISTS and ch.peer < self.id:
                # The peer may be opening toward us at this very moment, and
                # the lower id wins: its offer may still be on its way (then
                # `_on_offer` supersedes this attempt and cancels this wait).
                await asyncio.sleep(TIE_WAIT)
            if intro.code:
                raise _intro_error(intro)
            ch.introduced = True
            link = ChannelLink(self, self._router, self._cfg.max_message_size,
                               peer=ch.peer, expected_cert=intro.cert, opener=True)
            cfg = self._quic_config(is_client=True, server_name=ch.peer,
                                    cadata=self._peer_ca or _pem(intro.cert))
            conn = self._endpoint.connect(intro.addr, cfg, link, STREAM_WINDOW)
            link.conn = conn
            # Our first packets are out: the target may now knock all the way.
            self._link.send_control(wire.ChannelDialing(req))
            try:
                await asyncio.wait_for(asyncio.shield(link.welcome), CHANNEL_TIMEOUT)
            except TimeoutError:
                raise ConnectFailed(
                    f"no handshake with {ch.peer!r} at {intro.addr[0]}:{intro.addr[1]} "
                    f"within {CHANNEL_TIMEOUT:.0f} s") from None
        except BaseException as exc:
            if conn is not None and not conn.closed:
                conn.close(wire.Code.CHANNEL_CLOSED, "channel attempt abandoned")
            if self._channels.get(ch.peer) is ch:
                del self._channels[ch.peer]
            if not ch.ready.done() and not ch.superseded:
                if isinstance(exc, asyncio.CancelledError):
                    ch.ready.set_exception(NoChannel(f"the channel to {ch.peer!r} was "
                                                     "closed while opening"))
                elif isinstance(exc, ConecError):
                    ch.ready.set_exception(exc)
                else:
                    ch.ready.set_exception(ConnectFailed(f"channel to {ch.peer!r}: {exc}"))
                ch.ready.exception()
            if not isinstance(exc, asyncio.CancelledError | ConecError):
                raise
            return
        ch.link = link
        self._start_channel(link)
        if not ch.ready.done():
            ch.ready.set_result(link)

    def _start_channel(self, link: ChannelLink) -> None:
        if self._cfg.keepalive and link.conn is not None:
            link.conn.start_keepalive(self._cfg.idle_timeout / 3)

    def _on_offer(self, offer: wire.ChannelOffer) -> None:
        """The Coordinator asks whether we accept a channel from `offer.peer`."""
        def answer(code: int) -> None:
            self._link.send_control(wire.ChannelAnswer(offer.offer, code))

        if not self._cfg.listen or self._closed:
            answer(wire.Code.PEER_NOT_LISTENING)
            return
        existing = self._channels.get(offer.peer)
        if existing is not None and not self._gives_way(existing):
            answer(wire.Code.CHANNEL_EXISTS)
            return
        ch = _Channel(offer.peer, False, self._loop.create_future(), expected_cert=offer.cert)
        if existing is not None:
            self._supersede(existing, ch)
        ch.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._channels[offer.peer] = ch
        self._introductions[offer.cert] = offer.peer
        if self._cfg.holepunch and offer.holepunch:
            ch.knock_addr = offer.addr
            ch.tasks.append(self._loop.create_task(
                self._knock(offer.addr, EARLY_KNOCKS, EARLY_KNOCK_TTL)))
        ch.expire = self._loop.call_later(INTRODUCTION_TTL, self._introduction_expired, ch)
        answer(0)

    def _gives_way(self, ch: _Channel) -> bool:
        """Both ends called `new_channel` at once (each sees the other's offer
        while its own attempt is not yet introduced): exactly one attempt must
        win, the one of the lower id. True if `ch`, ours, is the loser."""
        return (ch.opener and ch.link is None and not ch.introduced and not ch.superseded
                and ch.peer < self.id)

    def _supersede(self, ours: _Channel, theirs: _Channel) -> None:
        """Drop our attempt for the peer's channel: our `new_channel` raises
        `ChannelExists` once that one is registered at both ends (or its
        error if it fails)."""
        ours.superseded = True
        ours.stop_tasks()

        def settle(fut: asyncio.Future[ChannelLink]) -> None:
            if ours.ready.done():
                return
            if fut.cancelled():
                ours.ready.set_exception(NoChannel(f"the channel to {ours.peer!r} was "
                                                   "closed while opening"))
            elif (exc := fut.exception()) is not None:
                ours.ready.set_exception(exc)
            else:
                ours.ready.set_exception(ChannelExists(
                    f"{ours.peer!r} opened a channel to {self.id!r} at the same time; "
                    "that one is open"))

        theirs.ready.add_done_callback(settle)

    async def _knock(self, addr: tuple[str, int], schedule: tuple[float, ...],
                     ttl: int | None) -> None:
        """Open our NAT's mapping toward the opener while it dials us."""
        try:
            target = self._endpoint.normalize(addr)
        except ValueError:
            return
        for delay in schedule:
            await asyncio.sleep(delay)
            self._endpoint.sendto_ttl(KNOCK, target, ttl)

    def _on_peer_dialing(self, peer: str) -> None:
        """The opener's first packets are out: knocks may go all the way now."""
        ch = self._channels.get(peer)
        if ch is None or ch.opener or ch.link is not None or ch.knock_addr is None:
            return
        for t in ch.tasks:
            t.cancel()
        ch.tasks = [self._loop.create_task(self._knock(ch.knock_addr, FULL_KNOCKS, None))]

    def _introduction_expired(self, ch: _Channel) -> None:
        if ch.link is None and self._channels.get(ch.peer) is ch:
            self._end_channel(ch, wire.Code.CHANNEL_CLOSED, "nobody dialled")

    def _accept_channel(self, conn: Conn) -> ChannelLink:
        return ChannelLink(self, self._router, self._cfg.max_message_size,
                           peer=None, expected_cert=None, opener=False)

    # ChannelOwner

    def _client_ca(self) -> bytes | None:
        return self._peer_ca

    def _claim_introduction(self, cert_der: bytes) -> str | None:
        peer = self._introductions.pop(cert_der, None)
        if peer is None:
            return None
        ch = self._channels.get(peer)
        if ch is None or ch.opener or ch.link is not None:
            return None
        return peer

    def _channel_ready(self, link: ChannelLink) -> None:
        assert link.peer is not None
        ch = self._channels.get(link.peer)
        if ch is None or ch.opener or ch.link is not None:
            assert link.conn is not None
            link.conn.close(wire.Code.CHANNEL_EXISTS, "no such introduction pending")
            return
        ch.stop_tasks()
        ch.link = link
        self._start_channel(link)
        if not ch.ready.done():
            ch.ready.set_result(link)

    def _channel_ended(self, link: ChannelLink) -> None:
        if link.peer is None:
            return
        ch = self._channels.get(link.peer)
        if ch is not None and ch.link is link:
            del self._channels[link.peer]
            ch.stop_tasks()
        if self.is_closed and not self._channels:
            self._no_path_left()

    def _end_channel(self, ch: _Channel, code: int, reason: str) -> None:
        if self._channels.get(ch.peer) is ch:
            del self._channels[ch.peer]
        ch.stop_tasks()
        if ch.expected_cert:
            self._introductions.pop(ch.expected_cert, None)
        if not ch.ready.done():
            ch.ready.set_exception(NoChannel(f"the channel to {ch.peer!r} was closed"))
        link = ch.link
        if link is not None and link.conn is not None:
            link.conn.close(code, reason)
            link.terminated(link.conn, code, reason)

    async def close_channel(self, peer: str) -> None:
        """Close the direct channel to `peer`: its streams end with
        `StreamReset` at both ends. `NoChannel` if there is none."""
        await self._ask(_CloseChannel(peer, self._loop.create_future()))

    def _do_close_channel(self, peer: str) -> None:
        ch = self._channels.get(peer)
        if ch is None:
            raise NoChannel(f"there is no channel to {peer!r}")
        self._end_channel(ch, wire.Code.CHANNEL_CLOSED, f"{self.id!r} closed the channel")

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
        ch: _Channel = await self._ask(_FindChannel(peer, self._loop.create_future()))
        try:
            link = await asyncio.shield(ch.ready)
        except ConecError as exc:
            raise NoChannel(f"the channel to {peer!r} did not open: {exc}") from None
        if link.closed.done():
            raise NoChannel(f"the channel to {peer!r} is closed")
        used = self._used_direct.setdefault(peer, UsedNumbers())
        core, fut = link.open_stream(self.id, self._pick_number(used, n, "direct"), purpose)
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
            recent_failure = self._channel_failed_at.get(peer)
            if ch is None and not self.is_closed and (
                    recent_failure is None
                    or self._loop.time() - recent_failure > CHANNEL_RETRY_AFTER):
                with contextlib.suppress(ConecError):
                    ch = await self._ask(_OpenChannel(peer, self._loop.create_future()))
                    ch.ready.add_done_callback(self._note_channel_outcome(peer))
            if ch is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(ch.ready), NEW_STREAM_CHANNEL_WAIT)
                    return await self.new_direct_stream(peer)
                except (TimeoutError, ConecError):
                    pass
        return await self.new_proxied_stream(peer)

    def _note_channel_outcome(self, peer: str) -> Any:
        def note(fut: asyncio.Future[ChannelLink]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                self._channel_failed_at[peer] = self._loop.time()
            else:
                self._channel_failed_at.pop(peer, None)
        return note

    # -- actors ----------------------------------------------------------------------

    async def tell(self, peer: str, msg: Any) -> None:
        """Send `msg` (bytes or any msgspec-encodable value) to `peer`'s mailbox.

        Returns once queued (waits only while the queue toward `peer` is
        full; the first tell to a peer waits for its route). Order holds per
        peer, over the direct channel when one is open, else the Coordinator.
        Raises `NoSuchPeer`, `MessageTooLarge` or `ClientClosed`.
        """
        await self._mailbox.tell(peer, msg)

    async def ask(self, peer: str, msg: Any, timeout: float | None = 5.0, *,
                  reply_type: Any = None) -> Any:
        """Send `msg` to `peer` and return its answer; builtin `TimeoutError`
        after `timeout` s, `RemoteError` if the receiver failed to answer."""
        return await self._mailbox.ask(peer, msg, timeout, reply_type=reply_type)

    @property
    def mailbox(self) -> Mailbox:
        """Messages told or asked to this client: an async iterator of
        `Envelope`, ending when the client closes; `mailbox.typed(T)`
        decodes bodies as `T`."""
        return self._mailbox

    # -- what the mailbox uses (`mailbox.MailboxHost`; internal) ------------------------

    def closed_error(self) -> ClientClosed:
        """Internal (`MailboxHost`): a fresh `ClientClosed` saying why the
        client closed."""
        return self._closed_error()

    def has_channel(self, peer: str) -> bool:
        """Internal (`MailboxHost`): a direct channel to `peer` is open."""
        ch = self._channels.get(peer)
        return ch is not None and ch.link is not None and not ch.link.closed.done()

    async def open_route(self, peer: str, purpose: str, *, direct: bool
                         ) -> tuple[OutStream, InStream]:
        """Internal (`MailboxHost`): open a stream to `peer` whose header says
        `purpose`, over the channel (`NoChannel` if none) or proxied."""
        if direct:
            return await self._open_direct(peer, None, purpose)
        return await self._open_proxied(peer, None, purpose)

    def handle_purpose(self, purpose: str,
                       handler: Callable[[IncomingStream], bool] | None) -> None:
        """Internal (`MailboxHost`): give incoming streams whose header says
        `purpose` to `handler`; None stops."""
        if handler is None:
            self._router.handlers.pop(purpose, None)
        else:
            self._router.handlers[purpose] = handler

    # -- helpers ---------------------------------------------------------------------

    def _quic_config(self, *, is_client: bool, server_name: str | None = None,
                     cadata: bytes | None = None) -> QuicConfiguration:
        return quic_configuration(
            is_client=is_client, cert_pem=self._cert_pem, key_pem=self._key_pem,
            idle_timeout=self._cfg.idle_timeout,
            max_datagram_size=self._cfg.max_datagram_size, stream_window=STREAM_WINDOW,
            server_name=server_name, cadata=cadata)

    def _core_for_tests(self, send: OutStream) -> StreamCore:
        return send._core

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "connected"
        return f"<Client {self.id!r} {state}>"


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _pem(cert_der: bytes) -> bytes:
    return x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)


def _intro_error(intro: wire.ChannelIntro) -> ConecError:
    err = wire.error_for(intro.code, intro.reason)
    if isinstance(err, StreamReset):  # not a refusal the table names: unreachable
        return ConnectFailed(f"cannot open a channel to {intro.peer!r}: "
                             f"{intro.reason or wire.describe(intro.code)}")
    if isinstance(err, NoSuchPeer):
        return NoSuchPeer(f"no client {intro.peer!r} is connected")
    return err


class _Open(NamedTuple):
    peer: str
    n: int | None
    purpose: str
    reply: asyncio.Future[tuple[StreamCore, asyncio.Future[None]]]
    kind: str = "proxied"


class _OpenChannel(NamedTuple):
    peer: str
    reply: asyncio.Future[_Channel]


class _CloseChannel(NamedTuple):
    peer: str
    reply: asyncio.Future[None]


class _FindChannel(NamedTuple):
    peer: str
    reply: asyncio.Future[_Channel]


class _Close(NamedTuple):
    done: asyncio.Future[None]


_Request = _Open | _OpenChannel | _FindChannel | _CloseChannel
_Command = _Request | _Close


async def _resolve(cfg: ClientConfig) -> list[tuple[str, int]]:
    if cfg.addr is not None:
        return [(str(cfg.addr[0]), int(cfg.addr[1]))]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(cfg.coord, cfg.port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ConnectFailed(f"cannot resolve the Coordinator's name {cfg.coord!r}: {exc}"
                            ) from None
    out: list[tuple[str, int]] = []
    for info in infos:
        addr = (str(info[4][0]), int(info[4][1]))
        if addr not in out:
            out.append(addr)
    return out


async def _dial(endpoint: Endpoint, addrs: list[tuple[str, int]], qcfg: Any,
                cfg: ClientConfig, router: IncomingRouter) -> tuple[Conn, CoordLink]:
    """Dial every address, ATTEMPT_STAGGER apart; keep the first handshake
    that completes and drop the others."""
    conns: list[Conn] = []

    async def attempt(addr: tuple[str, int], delay: float) -> tuple[Conn, CoordLink]:
        await asyncio.sleep(delay)
        link = CoordLink(cfg.id, cfg.max_message_size, router)
        try:
            conn = endpoint.connect(addr, qcfg, link, STREAM_WINDOW)
        except OSError as exc:
            raise ConnectFailed(f"cannot send to {addr[0]}:{addr[1]}: {exc}") from None
        conns.append(conn)
        try:
            await conn.wait_handshake()
        except ConnectionError:
            raise connection_error(conn.close_code or 0, conn.close_reason) from None
        return conn, link

    tasks = [asyncio.ensure_future(attempt(a, i * ATTEMPT_STAGGER))
             for i, a in enumerate(addrs)]
    winner: Conn | None = None
    last: ConecError | None = None
    try:
        for next_done in asyncio.as_completed(tasks, timeout=CONNECT_TIMEOUT):
            try:
                conn, link = await next_done
            except ConecError as exc:
                last = exc
                continue
            winner = conn
            return conn, link
    except TimeoutError:
        pass
    finally:
        for t in tasks:
            t.cancel()
        for c in conns:
            if c is not winner:
                c.abort()
    if last is not None and not isinstance(last, ClientClosed):
        raise last
    where = ", ".join(f"{h}:{p}" for h, p in addrs)
    raise ConnectFailed(f"cannot reach the Coordinator {cfg.coord!r} at {where} within "
                        f"{CONNECT_TIMEOUT:.0f} s" + (f" ({last})" if last else ""))


__all__ = ["Client"]
