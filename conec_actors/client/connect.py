"""Connecting a client: its certificate, the Coordinator's addresses, the
dial (every address, staggered; the first handshake wins) and the hello."""

from __future__ import annotations

import asyncio
import socket
from typing import NamedTuple

from aioquic.quic.configuration import QuicConfiguration

from .. import wire
from ..certs import load_pem, self_signed
from ..closing import connection_error
from ..config import ClientConfig
from ..errors import ClientClosed, ConecError, ConnectFailed
from ..streams import STREAM_WINDOW
from ..tlsconf import quic_configuration
from ..transport import Conn, Endpoint
from .link import CoordLink, IncomingRouter

CONNECT_TIMEOUT = 5.0
#: Delay between dialling successive addresses of the Coordinator's name.
ATTEMPT_STAGGER = 0.25


class Connected(NamedTuple):
    """A connection to the Coordinator that said `Welcome`."""

    endpoint: Endpoint
    conn: Conn
    link: CoordLink
    welcome: wire.Welcome
    router: IncomingRouter
    cert_pem: bytes
    key_pem: bytes


async def connect(cfg: ClientConfig) -> Connected:
    """Dial the Coordinator, say hello and wait for its welcome."""
    if cfg.cert is not None and cfg.key is not None:
        cert_pem, key_pem = load_pem(cfg.cert), load_pem(cfg.key)
    else:
        ck = self_signed([cfg.id])
        cert_pem, key_pem = ck.cert_pem, ck.key_pem
    endpoint = await Endpoint.bind(None, 0)
    router = IncomingRouter()
    try:
        conn, link, welcome = await dial_coordinator(cfg, endpoint, router, cert_pem, key_pem)
    except BaseException:
        endpoint.close()
        raise
    return Connected(endpoint, conn, link, welcome, router, cert_pem, key_pem)


async def dial_coordinator(cfg: ClientConfig, endpoint: Endpoint, router: IncomingRouter,
                           cert_pem: bytes, key_pem: bytes
                           ) -> tuple[Conn, CoordLink, wire.Welcome]:
    """Dial the Coordinator from `endpoint` with this certificate, say hello
    and wait for its welcome (also how a client reconnects)."""
    ca = load_pem(cfg.ca) if cfg.ca is not None else None
    qcfg = quic_configuration(
        is_client=True, cert_pem=cert_pem, key_pem=key_pem,
        idle_timeout=cfg.idle_timeout, max_datagram_size=cfg.max_datagram_size,
        stream_window=STREAM_WINDOW, server_name=cfg.coord, cadata=ca)
    addrs = await _resolve(cfg)
    conn, link = await _dial(endpoint, addrs, qcfg, cfg, router)
    link.send_hello(conn, cfg.max_message_size, cfg.idle_timeout, cfg.max_datagram_size)
    try:
        welcome = await asyncio.wait_for(asyncio.shield(link.welcome), CONNECT_TIMEOUT)
    except TimeoutError:
        conn.close(wire.Code.HELLO_TIMEOUT, "no answer to hello")
        raise ConnectFailed(
            f"the Coordinator at {conn.peer_address} did not answer the hello "
            f"within {CONNECT_TIMEOUT:.0f} s") from None
    except BaseException:
        conn.close(wire.Code.CLIENT_CLOSED, "client closed")
        raise
    link.max_message_size = welcome.max_message_size
    conn.quic.set_max_datagram_size(welcome.max_datagram_size)
    if cfg.keepalive:
        conn.start_keepalive(welcome.idle_timeout / 3)
    return conn, link, welcome


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


async def _dial(endpoint: Endpoint, addrs: list[tuple[str, int]], qcfg: QuicConfiguration,
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

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(attempt(a, i * ATTEMPT_STAGGER)) for i, a in enumerate(addrs)]
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
        # The losers end here, not later on their own.
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in conns:
            if c is not winner:
                c.abort()
    if last is not None and not isinstance(last, ClientClosed):
        raise last
    where = ", ".join(f"{h}:{p}" for h, p in addrs)
    raise ConnectFailed(f"cannot reach the Coordinator {cfg.coord!r} at {where} within "
                        f"{CONNECT_TIMEOUT:.0f} s" + (f" ({last})" if last else ""))
