"""A client's direct channels: opening, accepting, the tie between two
attempts made at once, knocking through NATs, and closing.

`Channels` holds one `Channel` per peer (opening or open) and owns every
task a channel needs (the opener's dial, the target's knocks): `aclose`
cancels and awaits them. The Client calls it from its command task only, so
the table changes in the order commands arrive. Each channel's connection is
a `ChannelLink` (channel.py), whose hello exchange is the sans-I/O
`ChannelHandshake` (hello.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import wire
from ..certs import load_pem
from ..closing import refusal_error
from ..config import ClientConfig
from ..endpoint_rules import StatelessResets
from ..errors import ChannelExists, ChannelToSelf, ConecError, ConnectFailed, NoChannel, NoSuchPeer
from ..ids import is_valid_id
from ..streams import STREAM_WINDOW
from ..tlsconf import quic_configuration
from ..transport import Addr, Conn, Endpoint, ServerSettings
from .channel import ChannelLink
from .hello import peer_wins_tie
from .knocks import KNOCK, Knock, Knocks
from .link import CoordLink, IncomingRouter

#: A channel that has not completed its handshake and hello by then fails.
CHANNEL_TIMEOUT = 5.0
#: After a failed automatic channel attempt, `new_stream` goes proxied without
#: trying again for this long.
CHANNEL_RETRY_AFTER = 30.0
#: How long an opener whose attempt the peer refused as a duplicate waits for
#: the peer's own simultaneous offer (which wins the tie if the peer's id is
#: lower) before raising `ChannelExists`.
TIE_WAIT = 2.0
#: A target forgets an introduction nobody dialled within this time.
INTRODUCTION_TTL = 10.0


@dataclass(eq=False)
class Channel:
    """A channel to one peer, opening or open."""

    peer: str
    opener: bool
    ready: asyncio.Future[ChannelLink]
    link: ChannelLink | None = None
    expected_cert: bytes = b""
    #: This channel's tasks (cancelled when it ends; `Channels` awaits them).
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    expire: asyncio.TimerHandle | None = None
    #: The target's knocks toward the opener (holepunching), and where to.
    knocks: Knocks | None = None
    knock_addr: Addr | None = None
    #: The Coordinator introduced the opener: the peer accepted our attempt.
    introduced: bool = False
    #: The opener's attempt gave way to the peer's simultaneous one; its
    #: `ready` follows the peer's channel.
    superseded: bool = False

    def stop_tasks(self) -> None:
        if self.knocks is not None:
            self.knocks.stop()
        for t in self.tasks:
            t.cancel()
        if self.expire is not None:
            self.expire.cancel()


class ChannelHost(Protocol):
    """What the channels need from their client."""

    #: `close` began: offers are refused.
    _closed: bool

    @property
    def is_closed(self) -> bool: ...
    def _no_path_left(self) -> None: ...


class Channels:
    """Every direct channel of one client (the `ChannelOwner` of their links)."""

    def __init__(self, cfg: ClientConfig, endpoint: Endpoint, link: CoordLink,
                 router: IncomingRouter, host: ChannelHost,
                 cert_pem: bytes, key_pem: bytes) -> None:
        self._cfg = cfg
        self._endpoint = endpoint
        self._link = link
        self._router = router
        self._host = host
        self._cert_pem = cert_pem
        self._key_pem = key_pem
        self._loop = asyncio.get_running_loop()
        self._peer_ca = load_pem(cfg.client_ca) if cfg.client_ca is not None else None
        self.by_peer: dict[str, Channel] = {}
        self._introductions: dict[bytes, str] = {}  # expected cert DER -> peer
        self._failed_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        if cfg.listen:
            endpoint.server = ServerSettings(
                configuration=self._quic_config(is_client=False),
                stream_window=STREAM_WINDOW, accept=self._accept,
                reset_key=StatelessResets.new_key())
        self.rebind(link)

    def rebind(self, link: CoordLink) -> None:
        """Take introductions from `link` (at start, and after a reconnect)."""
        self._link = link
        link.on_offer = self.on_offer
        link.on_dialing = self._on_peer_dialing
        for offer in link.early_offers:
            self.on_offer(offer)
        link.early_offers.clear()

    @property
    def id(self) -> str:
        return self._cfg.id

    def _spawn(self, ch: Channel, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        ch.tasks.append(task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel and await every task a channel started."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def open_peers(self) -> list[str]:
        return sorted(p for p, ch in self.by_peer.items() if ch.link is not None)

    def find(self, peer: str) -> Channel:
        ch = self.by_peer.get(peer)
        if ch is None:
            raise NoChannel(f"there is no channel to {peer!r}; open one with new_channel")
        return ch

    # -- opening ------------------------------------------------------------------

    def open(self, peer: str) -> Channel:
        """Start opening a channel to `peer` (the command behind `new_channel`)."""
        if peer == self.id:
            raise ChannelToSelf(f"{self.id!r} cannot open a channel to itself")
        if not is_valid_id(peer):
            raise NoSuchPeer(f"no client {peer!r} is connected (not a valid id)")
        if peer in self.by_peer:
            state = "open" if self.by_peer[peer].link is not None else "opening"
            raise ChannelExists(f"a channel to {peer!r} is already {state}")
        ch = Channel(peer, True, self._loop.create_future())
        self.by_peer[peer] = ch
        self._spawn(ch, self._dial(ch))
        return ch

    async def _dial(self, ch: Channel) -> None:
        conn: Conn | None = None
        try:
            req, intro = await self._link.request_channel(ch.peer, self._cfg.holepunch)
            if intro.code == wire.Code.CHANNEL_EXISTS and peer_wins_tie(self.id, ch.peer):
                # The peer may be opening toward us at this very moment, and
                # its attempt wins: its offer may still be on its way (then
                # `on_offer` supersedes this attempt and cancels this wait).
                await asyncio.sleep(TIE_WAIT)
            if intro.code:
                raise refusal_error(intro.peer, intro.code, intro.reason)
            ch.introduced = True
            link = ChannelLink(self, self._router, self._cfg.max_message_size,
                               peer=ch.peer, expected_cert=intro.cert, opener=True)
            cfg = self._quic_config(is_client=True, server_name=ch.peer,
                                    cadata=self._peer_ca or _pem(intro.cert))
            conn = self._endpoint.connect(intro.addr, cfg, link, STREAM_WINDOW)
            link.conn = conn
            # Our first packets are out: the target may now knock all the way.
            self._link.dialing(req)
            try:
                await asyncio.wait_for(asyncio.shield(link.welcome), CHANNEL_TIMEOUT)
            except TimeoutError:
                raise ConnectFailed(
                    f"no handshake with {ch.peer!r} at {intro.addr[0]}:{intro.addr[1]} "
                    f"within {CHANNEL_TIMEOUT:.0f} s") from None
        except BaseException as exc:
            if conn is not None and not conn.closed:
                conn.close(wire.Code.CHANNEL_CLOSED, "channel attempt abandoned")
            if self.by_peer.get(ch.peer) is ch:
                del self.by_peer[ch.peer]
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
        self._start(link)
        if not ch.ready.done():
            ch.ready.set_result(link)

    def _start(self, link: ChannelLink) -> None:
        if self._cfg.keepalive and link.conn is not None:
            link.conn.start_keepalive(self._cfg.idle_timeout / 3)

    def should_try(self, peer: str) -> bool:
        """`new_stream` may try a channel to `peer`: no attempt failed lately."""
        failed = self._failed_at.get(peer)
        return failed is None or self._loop.time() - failed > CHANNEL_RETRY_AFTER

    def note_outcome(self, peer: str) -> Callable[[asyncio.Future[ChannelLink]], None]:
        """A done-callback for an automatic attempt's `ready`: remember a failure."""
        def note(fut: asyncio.Future[ChannelLink]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                self._failed_at[peer] = self._loop.time()
            else:
                self._failed_at.pop(peer, None)
        return note

    # -- accepting -----------------------------------------------------------------

    def on_offer(self, offer: wire.ChannelOffer) -> None:
        """The Coordinator asks whether we accept a channel from `offer.peer`."""
        if not self._cfg.listen or self._host._closed:
            self._link.answer(offer.offer, wire.Code.PEER_NOT_LISTENING)
            return
        existing = self.by_peer.get(offer.peer)
        if existing is not None and not self._gives_way(existing):
            self._link.answer(offer.offer, wire.Code.CHANNEL_EXISTS)
            return
        ch = Channel(offer.peer, False, self._loop.create_future(), expected_cert=offer.cert)
        if existing is not None:
            self._supersede(existing, ch)
        ch.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.by_peer[offer.peer] = ch
        self._introductions[offer.cert] = offer.peer
        if self._cfg.holepunch and offer.holepunch:
            # The first knock leaves before the answer: the opener dials only
            # once it has our answer, so its first packet finds our NAT's
            # mapping already there (knocks.py says why that matters).
            self._start_knocks(ch, offer.addr)
        ch.expire = self._loop.call_later(INTRODUCTION_TTL, self._introduction_expired, ch)
        self._link.answer(offer.offer, 0)

    def _gives_way(self, ch: Channel) -> bool:
        """Both ends called `new_channel` at once (each sees the other's offer
        while its own attempt is not yet introduced): exactly one attempt must
        win. True if `ch`, ours, is the loser."""
        return (ch.opener and ch.link is None and not ch.introduced and not ch.superseded
                and peer_wins_tie(self.id, ch.peer))

    def _supersede(self, ours: Channel, theirs: Channel) -> None:
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

    def _start_knocks(self, ch: Channel, addr: tuple[str, int]) -> None:
        """Send the first knock toward the opener at `addr` now; the rest
        as they fall due."""
        try:
            target = self._endpoint.normalize(addr)
        except ValueError:
            return
        ch.knock_addr = target
        ch.knocks = knocks = Knocks()
        self._send_knock(target, knocks.accept(self._loop.time()))
        self._spawn(ch, self._knock_loop(target, knocks))

    def _send_knock(self, target: Addr, knock: Knock) -> None:
        self._endpoint.sendto_ttl(KNOCK, target, knock.ttl)

    async def _knock_loop(self, target: Addr, knocks: Knocks) -> None:
        """Keep our NAT's mapping toward the opener open while it dials us."""
        while (at := knocks.deadline) is not None:
            await asyncio.sleep(at - self._loop.time())
            knock = knocks.due(self._loop.time())
            if knock is not None:
                self._send_knock(target, knock)

    def _on_peer_dialing(self, peer: str) -> None:
        """The opener's first packets are out: knocks may go all the way now,
        the first one at once."""
        ch = self.by_peer.get(peer)
        if (ch is None or ch.opener or ch.link is not None or ch.knocks is None
                or ch.knock_addr is None):
            return
        knock = ch.knocks.peer_dialing(self._loop.time())
        if knock is None:
            return
        self._send_knock(ch.knock_addr, knock)
        for t in ch.tasks:  # the early phase's loop sleeps toward its own deadline
            t.cancel()
        ch.tasks = []
        self._spawn(ch, self._knock_loop(ch.knock_addr, ch.knocks))

    def _introduction_expired(self, ch: Channel) -> None:
        if ch.link is None and self.by_peer.get(ch.peer) is ch:
            self.end(ch, wire.Code.CHANNEL_CLOSED, "nobody dialled")

    def _accept(self, conn: Conn) -> ChannelLink:
        return ChannelLink(self, self._router, self._cfg.max_message_size,
                           peer=None, expected_cert=None, opener=False)

    # -- ChannelOwner ----------------------------------------------------------------

    def _client_ca(self) -> bytes | None:
        return self._peer_ca

    def _claim_introduction(self, cert_der: bytes) -> str | None:
        peer = self._introductions.pop(cert_der, None)
        if peer is None:
            return None
        ch = self.by_peer.get(peer)
        if ch is None or ch.opener or ch.link is not None:
            return None
        return peer

    def _channel_ready(self, link: ChannelLink) -> None:
        assert link.peer is not None
        ch = self.by_peer.get(link.peer)
        if ch is None or ch.opener or ch.link is not None:
            assert link.conn is not None
            link.conn.close(wire.Code.CHANNEL_EXISTS, "no such introduction pending")
            return
        ch.stop_tasks()
        ch.link = link
        self._start(link)
        if not ch.ready.done():
            ch.ready.set_result(link)

    def _channel_ended(self, link: ChannelLink) -> None:
        if link.peer is None:
            return
        ch = self.by_peer.get(link.peer)
        if ch is not None and ch.link is link:
            del self.by_peer[link.peer]
            ch.stop_tasks()
        if self._host.is_closed and not self.by_peer:
            self._host._no_path_left()

    # -- closing ---------------------------------------------------------------------

    def end(self, ch: Channel, code: int, reason: str) -> None:
        """End channel `ch` (opening or open) with `code`."""
        if self.by_peer.get(ch.peer) is ch:
            del self.by_peer[ch.peer]
        ch.stop_tasks()
        if ch.expected_cert:
            self._introductions.pop(ch.expected_cert, None)
        if not ch.ready.done():
            ch.ready.set_exception(NoChannel(f"the channel to {ch.peer!r} was closed"))
        link = ch.link
        if link is not None and link.conn is not None:
            link.conn.close(code, reason)
            link.terminated(link.conn, code, reason)

    def end_all(self, code: int, reason: str) -> None:
        for ch in list(self.by_peer.values()):
            self.end(ch, code, reason)

    def close_channel(self, peer: str) -> None:
        """The command behind `close_channel`."""
        ch = self.by_peer.get(peer)
        if ch is None:
            raise NoChannel(f"there is no channel to {peer!r}")
        self.end(ch, wire.Code.CHANNEL_CLOSED, f"{self.id!r} closed the channel")

    def _quic_config(self, *, is_client: bool, server_name: str | None = None,
                     cadata: bytes | None = None) -> QuicConfiguration:
        return quic_configuration(
            is_client=is_client, cert_pem=self._cert_pem, key_pem=self._key_pem,
            idle_timeout=self._cfg.idle_timeout,
            max_datagram_size=self._cfg.max_datagram_size, stream_window=STREAM_WINDOW,
            server_name=server_name, cadata=cadata)


def _pem(cert_der: bytes) -> bytes:
    return x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)
