"""CURVE keys and the ZAP handler that guard the Coordinator's ZeroMQ sockets.

Abstract-namespace `ipc://@...` endpoints have no file permissions and their
names are public (`/proc/net/unix`, the workers' command lines), so the name
protects nothing. The supervisor's ROUTER is a CURVE server; every worker
start gets a fresh client keypair, handed to the child on its stdin (never
argv or the environment), and a ZAP handler admits exactly the keys of the
workers the supervisor started. The handler names each admitted key's slot
as the connection's ZAP User-Id, which ZeroMQ attaches to every message that
arrives on it: that, not a routing id a peer picks, says which worker spoke.

This module is imported by the worker processes too: it imports nothing but
pyzmq (not even logging) at run time, to keep their start-up light.
"""

from __future__ import annotations

import contextlib
import time
from typing import IO, TYPE_CHECKING

import zmq
from zmq.utils import z85

if TYPE_CHECKING:
    import asyncio
    import logging

#: Where libzmq sends its authentication requests, per context (RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
ZAP_DOMAIN = b"conec-actors"
#: Refusals are logged at most once per this many seconds (a refused peer
#: reconnects every 100 ms or so).
WARN_EVERY = 10.0


def curve_server(sock: zmq.Socket[bytes], public: bytes, secret: bytes) -> None:
    """Make `sock` a CURVE server with this keypair (before it binds)."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


def curve_client(sock: zmq.Socket[bytes], server_public: bytes, public: bytes,
                 secret: bytes) -> None:
    """Make `sock` a CURVE client that only talks to `server_public`."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


def encode_keys(server_public: bytes, public: bytes, secret: bytes) -> bytes:
    """The line a worker reads from its stdin: three Z85 keys."""
    return b" ".join((server_public, public, secret)) + b"\n"


def read_keys(stream: IO[bytes]) -> tuple[bytes, bytes, bytes]:
    """(server public, own public, own secret) from `encode_keys`' line."""
    parts = stream.readline().split()
    if len(parts) != 3 or any(len(p) != 40 for p in parts):
        raise ValueError("expected three Z85 CURVE keys on stdin "
                         "(workers are started by the Coordinator's supervisor)")
    return parts[0], parts[1], parts[2]


class ZapHandler:
    """Admits exactly the client keys in `allowed` (Z85 public key -> user
    id), on `ctx`, driven by the event loop; refusals are warned about on
    `log`. Bind it before any CURVE socket of `ctx` binds: with no handler
    there, libzmq would admit every key."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]],
                 loop: asyncio.AbstractEventLoop, log: logging.Logger) -> None:
        self.allowed: dict[bytes, bytes] = {}
        self._log = log
        self.refused = 0
        self._warned_at: float | None = None
        self._loop = loop
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._fd = int(self._sock.getsockopt(zmq.FD))
        loop.add_reader(self._fd, self._on_readable)

    def reply(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request (RFC 27)."""
        if len(request) < 6 or request[0] != ZAP_VERSION:
            return [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"500",
                    b"bad ZAP request", b"", b""]
        req_id, domain, address, mechanism = request[1], request[2], request[3], request[5]
        user = None
        if mechanism == b"CURVE" and domain == ZAP_DOMAIN and len(request) == 7 \
                and len(request[6]) == 32:
            user = self.allowed.get(z85.encode(request[6]))
        if user is None:
            self.refused += 1
            self._warn(address, mechanism)
            return [ZAP_VERSION, req_id, b"400", b"key not allowed", b"", b""]
        return [ZAP_VERSION, req_id, b"200", b"OK", user, b""]

    def _warn(self, address: bytes, mechanism: bytes) -> None:
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            return
        self._warned_at = now
        # For ipc, libzmq gives the address as "localhost:uid:gid:pid".
        self._log.warning("refused a ZeroMQ peer at %s (%s): not a process this Coordinator "
                          "started (%d refused so far)", address.decode(errors="replace"),
                          mechanism.decode(errors="replace"), self.refused)

    def _on_readable(self) -> None:
        sock = self._sock
        # The FD is edge-triggered: drain everything that is there.
        while not sock.closed and int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            sock.send_multipart(self.reply(request), zmq.NOBLOCK)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the loop may be closing too
            self._loop.remove_reader(self._fd)
        self._sock.close(0)
