"""The Client: one connection to the Coordinator, streams to other clients."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from .. import wire
from .._util import AwaitableContext
from ..certs import load_pem, self_signed
from ..config import ClientConfig
from ..errors import (
    ClientClosed,
    ConecError,
    ConnectFailed,
    NoSuchPeer,
    StreamIdInUse,
)
from ..ids import is_valid_id
from ..streams import (
    STREAM_WINDOW,
    IncomingStream,
    InStream,
    OutStream,
    StreamCore,
    check_stream_number,
)
from ..tlsconf import quic_configuration
from ..transport import Conn, Endpoint
from .link import CoordLink, UnclaimedQueue, connection_error

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
COMMAND_QUEUE = 256
#: Delay between dialling successive addresses of the Coordinator's name.
ATTEMPT_STAGGER = 0.25


class Client:
    """A connected client. Create it with `await Client.connect(cfg)` or
    `async with Client.connect(cfg) as client:`."""

    def __init__(self, cfg: ClientConfig, endpoint: Endpoint, conn: Conn, link: CoordLink,
                 welcome: wire.Welcome) -> None:
        self._cfg = cfg
        self._endpoint = endpoint
        self._conn = conn
        self._link = link
        self._welcome = welcome
        self._incoming = link_incoming = UnclaimedQueue()
        link.on_incoming = link_incoming.offer
        self._used_proxied: set[int] = set()
        self._next_proxied = itertools.count()
        self._closed = False
        self._close_error: ConecError | None = None
        # The client is an actor: this task alone changes its state, in the
        # order commands arrive in the mailbox.
        self._commands: asyncio.Queue[_Command] = asyncio.Queue(COMMAND_QUEUE)
        self._task = asyncio.get_running_loop().create_task(self._run())
        link.closed.add_done_callback(self._lost)

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
        try:
            conn, link = await _dial(endpoint, addrs, qcfg, cfg)
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
        return cls(cfg, endpoint, conn, link, welcome)

    async def close(self) -> None:
        """Close the client: its streams end with `StreamReset` at the other ends."""
        if not self._closed:
            self._closed = True
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await self._commands.put(_Close(done))
        await asyncio.shield(self._task)

    async def _run(self) -> None:
        while True:
            cmd = await self._commands.get()
            if isinstance(cmd, _Open):
                self._do_open(cmd)
            elif isinstance(cmd, _Close):
                self._do_close()
                cmd.done.set_result(None)
                break
        # Fail whatever was queued behind the close.
        while not self._commands.empty():
            left = self._commands.get_nowait()
            if isinstance(left, _Open) and not left.reply.done():
                left.reply.set_exception(ClientClosed("the client was closed"))

    def _do_close(self) -> None:
        if self._close_error is None:
            self._close_error = ClientClosed("the client was closed")
        self._conn.close(wire.Code.CLIENT_CLOSED, "client closed")
        self._link.terminated(self._conn, wire.Code.CLIENT_CLOSED, "client closed")
        self._incoming.end()
        self._endpoint.close()

    def _do_open(self, cmd: _Open) -> None:
        if cmd.reply.done():  # the caller gave up
            return
        try:
            self._check_open()
            if cmd.n is None:
                n = next(self._next_proxied)
                while n in self._used_proxied:
                    n = next(self._next_proxied)
            else:
                n = cmd.n
                if n in self._used_proxied:
                    raise StreamIdInUse(f"proxied stream number {n} was already used by "
                                        f"client {self.id!r}")
            self._used_proxied.add(n)
            cmd.reply.set_result(self._link.open_stream(cmd.peer, n))
        except ConecError as exc:
            cmd.reply.set_exception(exc)

    def _lost(self, fut: asyncio.Future[ConecError]) -> None:
        if self._close_error is None:
            err = fut.result()
            self._close_error = err if isinstance(err, ClientClosed) else ClientClosed(
                f"lost the Coordinator: {err}")
        self._incoming.end()

    def _check_open(self) -> None:
        if self._close_error is not None:
            raise self._close_error

    # -- properties -------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._cfg.id

    @property
    def config(self) -> ClientConfig:
        return self._cfg

    @property
    def max_message_size(self) -> int:
        """The effective message size limit (the smaller of both sides')."""
        return self._link.max_message_size

    @property
    def observed_address(self) -> tuple[str, int]:
        """Where the Coordinator sees this client from."""
        host, port = self._welcome.observed_addr
        return (host, port)

    @property
    def is_closed(self) -> bool:
        return self._close_error is not None

    @property
    def incoming(self) -> AsyncIterator[IncomingStream]:
        """Streams other clients open to this one; ends when the client closes."""
        return self._iter_incoming()

    async def _iter_incoming(self) -> AsyncIterator[IncomingStream]:
        while True:
            item = await self._incoming.get()
            if item is None:
                return
            yield item

    # -- streams ----------------------------------------------------------------

    async def new_proxied_stream(self, peer: str, *, stream_id: int | None = None
                                 ) -> tuple[OutStream, InStream]:
        """Open a stream to `peer` relayed by the Coordinator.

        Raises `NoSuchPeer` if `peer` is not connected and `StreamIdInUse` if
        this client already used `stream_id`.
        """
        self._check_open()
        n = None if stream_id is None else check_stream_number(stream_id)
        if not is_valid_id(peer):
            raise NoSuchPeer(f"no client {peer!r} is connected (not a valid id)")
        reply: asyncio.Future[tuple[StreamCore, asyncio.Future[None]]] = \
            asyncio.get_running_loop().create_future()
        await self._commands.put(_Open(peer, n, reply))
        core, fut = await reply
        try:
            await fut
        except asyncio.CancelledError:
            core.fail_local(wire.Code.PEER_GONE, "opening was cancelled")
            raise
        except ConecError as exc:
            if isinstance(exc, NoSuchPeer):
                raise NoSuchPeer(f"no client {peer!r} is connected") from None
            raise
        return OutStream(core), InStream(core)

    async def new_stream(self, peer: str) -> tuple[OutStream, InStream]:
        """Open a stream to `peer` by the best available path (proxied for now:
        direct channels are not built yet)."""
        return await self.new_proxied_stream(peer)

    def _core_for_tests(self, send: OutStream) -> StreamCore:
        return send._core

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "connected"
        return f"<Client {self.id!r} {state}>"


class _Open(NamedTuple):
    peer: str
    n: int | None
    reply: asyncio.Future[tuple[StreamCore, asyncio.Future[None]]]


class _Close(NamedTuple):
    done: asyncio.Future[None]


_Command = _Open | _Close


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
                cfg: ClientConfig) -> tuple[Conn, CoordLink]:
    """Dial every address, ATTEMPT_STAGGER apart; keep the first handshake
    that completes and drop the others."""
    conns: list[Conn] = []

    async def attempt(addr: tuple[str, int], delay: float) -> tuple[Conn, CoordLink]:
        await asyncio.sleep(delay)
        link = CoordLink(cfg.id, lambda _s: False, cfg.max_message_size)
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
