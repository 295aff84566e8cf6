"""Links from one front-end shard to the other shards of one Coordinator.

Each shard binds one ROUTER (a CURVE server with the shard's keypair) on an
abstract-namespace `ipc://@...` address and reaches every other shard through
one DEALER (a CURVE client with the same keypair) connected to that shard's
ROUTER: i -> j travels over i's DEALER into j's ROUTER, so order per (i, j)
is ZeroMQ's. A message counts as shard j's only by the ZAP User-Id of the key
it arrived under, and that User-Id is the key itself: a connection made under
a key that has since been replaced (the shard was restarted) or dropped names
no shard, even if it is still open, and what comes over it is ignored.

Messages to a shard are batched per loop turn (one ZeroMQ message), as the
supervisor batches requests to its workers. A batch the pipe cannot take now
is held and offered again, never dropped; the shards' per-stream credit, not
the high-water mark, is the flow control.

Two shards learn each other's keys in no fixed order: a restarted shard
connects to the others before they have heard of its new key. libzmq never
reconnects after a ZAP refusal (the queued messages and the link would be
lost), so this module's ZAP handler does not refuse a key it does not know
yet: it holds the request (the handshake waits, messages queue) until the key
is admitted, or until the ROUTER's handshake timeout closes the connection,
after which the peer reconnects and asks again. Keys that were dropped or
replaced are refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import zmq
from zmq.utils import z85

from . import zmqauth

M = TypeVar("M")

#: Batches queued in ZeroMQ per link, each way. Reaching it is back-pressure
#: (the batch waits in the mesh and is offered again), never loss.
PIPE_HWM = 10_000
#: How soon a batch the pipe could not take is offered again.
RETRY_DELAY = 0.01
#: How long a handshake under a key no shard has (yet) is held open before
#: the ROUTER drops it (the peer then reconnects and asks again).
HOLD = 5.0
#: At most this many handshakes are held at once; more are refused.
MAX_HELD = 256
#: Keys dropped or replaced that are remembered, to be refused at once.
RETIRED_KEPT = 64


class _Gate:
    """The ZAP handler of one mesh's context: admits the keys of the current
    peers, refuses retired keys and malformed requests, and holds requests
    for keys it does not know yet (answered when `admit` comes). A ROUTER,
    not a REP socket, so that a held request does not block the others."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]],
                 loop: asyncio.AbstractEventLoop, log: logging.Logger) -> None:
        self.allowed: dict[bytes, bytes] = {}
        self.refused = 0
        self._retired: dict[bytes, None] = {}
        # key -> [(when, request)], request as received (envelope included)
        self._held: dict[bytes, list[tuple[float, list[bytes]]]] = {}
        self._log = log
        self._warned_at: float | None = None
        self._loop = loop
        self._sock = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(zmqauth.ZAP_ENDPOINT)
        self._fd = int(self._sock.getsockopt(zmq.FD))
        loop.add_reader(self._fd, self._on_readable)

    @property
    def held(self) -> int:
        """Handshakes waiting for their key to be admitted."""
        return sum(len(v) for v in self._held.values())

    def admit(self, key: bytes, user: bytes) -> None:
        self._retired.pop(key, None)
        self.allowed[key] = user
        for _, request in self._held.pop(key, ()):
            self._reply(request, b"200", b"OK", user)

    def retire(self, key: bytes) -> None:
        self.allowed.pop(key, None)
        self._retired[key] = None
        if len(self._retired) > RETIRED_KEPT:
            del self._retired[next(iter(self._retired))]

    def _on_readable(self) -> None:
        sock = self._sock
        # The FD is edge-triggered: drain everything that is there.
        while not sock.closed and int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._answer(request)

    def _answer(self, request: list[bytes]) -> None:
        # [routing id, b"", version, request id, domain, address, identity,
        #  mechanism, key] (RFC 27 behind a ROUTER's envelope)
        if len(request) != 9 or request[1] != b"" or request[2] != zmqauth.ZAP_VERSION \
                or request[4] != zmqauth.ZAP_DOMAIN or request[7] != b"CURVE" \
                or len(request[8]) != 32:
            self._refuse(request, b"bad ZAP request")
            return
        key = z85.encode(request[8])
        user = self.allowed.get(key)
        if user is not None:
            self._reply(request, b"200", b"OK", user)
        elif key in self._retired:
            self._refuse(request, b"key retired")
        else:
            self._hold(key, request)

    def _hold(self, key: bytes, request: list[bytes]) -> None:
        now = time.monotonic()
        # Held past the handshake timeout, a connection is gone: forget it
        # without an answer (a refusal would end a late peer's link for good).
        for k in [k for k, v in self._held.items() if v[0][0] < now - 2 * HOLD]:
            kept = [e for e in self._held[k] if e[0] >= now - 2 * HOLD]
            if kept:
                self._held[k] = kept
            else:
                del self._held[k]
                self._warn(b"no shard of this Coordinator has its key")
        if self.held >= MAX_HELD:
            self._refuse(request, b"too many handshakes held")
            return
        self._held.setdefault(key, []).append((now, request))

    def _refuse(self, request: list[bytes], why: bytes) -> None:
        self.refused += 1
        self._reply(request, b"400", why, b"")
        self._warn(why + b", at " + (request[5] if len(request) > 5 else b"?"))

    def _reply(self, request: list[bytes], status: bytes, text: bytes, user: bytes) -> None:
        req_id = request[3] if len(request) > 3 else b""
        with contextlib.suppress(zmq.ZMQError):  # the handshake may be gone
            self._sock.send_multipart([request[0], b"", zmqauth.ZAP_VERSION, req_id,
                                       status, text, user, b""], zmq.NOBLOCK)

    def _warn(self, what: bytes) -> None:
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < zmqauth.WARN_EVERY:
            return
        self._warned_at = now
        self._log.warning("did not admit a ZeroMQ peer on the shard mesh: %s "
                          "(%d refused so far)", what.decode(errors="replace"), self.refused)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the loop may be closing too
            self._loop.remove_reader(self._fd)
        self._held.clear()
        self._sock.close(0)


class _Peer(Generic[M]):
    __slots__ = ("held", "held_count", "index", "outbox", "public", "sock", "user")

    def __init__(self, index: int, public: bytes, sock: zmq.Socket[bytes]) -> None:
        self.index = index
        self.public = public
        self.user = public.decode()
        self.sock = sock
        self.outbox: list[M] = []
        #: an encoded batch the pipe would not take yet, and how many
        #: messages it holds; sent before the outbox
        self.held: bytes | None = None
        self.held_count = 0


class Mesh(Generic[M]):
    """Links from one shard to the others of one Coordinator."""

    def __init__(self, index: int, public: bytes, secret: bytes,
                 encode: Callable[[list[M]], bytes],
                 decode: Callable[[bytes], list[M]],
                 deliver: Callable[[int, list[M]], None],
                 log: logging.Logger) -> None:
        self.index = index
        self.public = public
        self._secret = secret
        self._encode = encode
        self._decode = decode
        self._deliver = deliver
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._peers: dict[int, _Peer[M]] = {}
        #: ZAP User-Id (a peer's Z85 public key) -> its index
        self._by_user: dict[str, int] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._closed = False
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # The ZAP handler first: a CURVE socket with none would admit any key.
        self._gate = _Gate(self._ctx, self._loop, log)
        self._sock = self._ctx.socket(zmq.ROUTER)
        zmqauth.curve_server(self._sock, public, secret)
        self._sock.setsockopt(zmq.RCVHWM, PIPE_HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        # A held handshake ends after this; the peer reconnects and asks again.
        self._sock.setsockopt(zmq.HANDSHAKE_IVL, int(HOLD * 1000))
        # Not a secret (it is in /proc/net/unix): the keys are the protection.
        self.endpoint = f"ipc://@conec-actors-shard-{os.getpid()}-{os.urandom(6).hex()}"
        self._sock.bind(self.endpoint)
        self._fd = int(self._sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._on_readable)

    # -- peers -------------------------------------------------------------------

    def set_peer(self, j: int, endpoint: str, public: bytes) -> None:
        """Shard `j` is (now) at `endpoint` with key `public`: admit that key
        and connect to it. Called again after j was restarted, it forgets the
        old j: its connection, its key, and what was still queued for it.
        After `close` it does nothing."""
        if self._closed:
            return
        if j == self.index:
            raise ValueError(f"shard {j} cannot be its own peer")
        try:
            if len(public) != 40 or len(z85.decode(public)) != 32:
                raise ValueError
        except ValueError:
            raise ValueError(f"not a Z85 CURVE public key: {public!r}") from None
        owner = self._by_user.get(public.decode())
        if owner is not None and owner != j:
            raise ValueError(f"shard {owner} already has that key")
        self.drop_peer(j)
        self._gate.admit(public, public)
        self._by_user[public.decode()] = j
        sock = self._ctx.socket(zmq.DEALER)
        zmqauth.curve_client(sock, public, self.public, self._secret)
        sock.setsockopt(zmq.SNDHWM, PIPE_HWM)
        sock.setsockopt(zmq.LINGER, 0)
        # Not IMMEDIATE: j bound before its endpoint was announced, and what
        # is sent now must reach it once the handshake is done.
        sock.connect(endpoint)
        self._peers[j] = _Peer(j, public, sock)

    def drop_peer(self, j: int) -> None:
        """Shard `j` died: close the link to it, stop admitting its key, drop
        what was queued for it; what still arrives from it is ignored."""
        peer = self._peers.pop(j, None)
        if peer is None:
            return
        peer.sock.close(0)
        self._by_user.pop(peer.user, None)
        self._gate.retire(peer.public)

    # -- sending -----------------------------------------------------------------

    def send(self, j: int, msg: M) -> None:
        """Queue `msg` for shard `j` (sent with the rest of this loop turn's,
        in order); a no-op if j is not a peer."""
        peer = self._peers.get(j)
        if peer is None:
            return
        peer.outbox.append(msg)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def queued(self, j: int) -> int:
        """Messages for shard `j` not yet handed to ZeroMQ."""
        peer = self._peers.get(j)
        if peer is None:
            return 0
        return len(peer.outbox) + peer.held_count

    def _flush(self) -> None:
        self._flush_handle = None
        if self._closed:
            return
        for peer in self._peers.values():
            if peer.held is not None or peer.outbox:
                self._send(peer)
        # Sending can consume the edge of the FD; drain in case input came in.
        self._on_readable()

    def _send(self, peer: _Peer[M]) -> None:
        while peer.held is not None or peer.outbox:
            if peer.held is None:
                batch, peer.outbox = peer.outbox, []
                try:
                    peer.held = self._encode(batch)
                except Exception:  # a bug upstream must not wedge the link
                    self._log.exception("cannot encode %d messages for shard %d; "
                                        "dropped", len(batch), peer.index)
                    continue
                peer.held_count = len(batch)
            try:
                peer.sock.send(peer.held, zmq.NOBLOCK)
            except zmq.Again:
                # j's pipe is full: keep the batch, offer it again soon.
                if self._retry_handle is None:
                    self._retry_handle = self._loop.call_later(RETRY_DELAY, self._retry)
                return
            peer.held, peer.held_count = None, 0

    def _retry(self) -> None:
        self._retry_handle = None
        self._flush()

    # -- receiving ---------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        # The FD is edge-triggered: drain everything that is there. `deliver`
        # may close the mesh: check before touching the socket again.
        while not sock.closed and int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            frame = frames[-1]
            # Who spoke is the key it authenticated with, whatever routing id
            # it claims; a key dropped or replaced names no one.
            try:
                j = self._by_user.get(str(frame.get("User-Id")))
            except zmq.ZMQError:  # no User-Id: not authenticated by our gate
                j = None
            if j is None:
                continue
            try:
                msgs = self._decode(frame.bytes)
            except Exception:  # a broken shard must not break this one
                self._log.exception("undecodable batch from shard %d", j)
                continue
            try:
                self._deliver(j, msgs)
            except Exception:
                self._log.exception("error handling a batch from shard %d", j)

    # -- shutdown ----------------------------------------------------------------

    def close(self) -> None:
        """Close every link and the ZeroMQ context; what was queued is dropped.
        Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._flush_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._retry_handle = None
        with contextlib.suppress(Exception):  # the loop may be closing too
            self._loop.remove_reader(self._fd)
        for j in list(self._peers):
            self.drop_peer(j)
        self._sock.close(0)
        self._gate.close()
        self._ctx.term()
