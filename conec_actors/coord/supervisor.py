"""Starts, feeds, watches and restarts the Coordinator's worker processes.

Workers are `python -m conec_actors.coord.worker` subprocesses (so a user's
script without a `__main__` guard is never re-imported) reached over one
ZeroMQ ROUTER socket on an abstract-namespace `ipc://@...` address (no
socket file to leave behind). Anyone on the host can see and dial that
address, so the ROUTER is a CURVE server that admits exactly the keys of the
workers started here (`zmqauth`), and a message counts as a worker's only by
the key it arrived under, never by a routing id the peer chose.

Requests are batched per worker and per loop turn. Every request carries an
id; requests in flight to a worker that dies are replayed, after a `Rebuild`
of its shard, to its successor. A batch the socket cannot take now (the
worker is slow or stopped and its pipe is full) is kept and sent again, never
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from ..errors import CoordinatorFailed
from ..restarts import RestartBudget
from . import ipc, zmqauth

log = logging.getLogger(__name__)

#: A worker slot that crashes this many times within CRASH_WINDOW seconds
#: shuts the Coordinator down.
CRASH_LIMIT = 3
CRASH_WINDOW = 10.0
STOP_GRACE = 2.0
#: How soon a batch the worker's pipe could not take is offered again.
RETRY_DELAY = 0.01
#: Batches queued in ZeroMQ per worker, each way. Reaching it is
#: back-pressure (the ROUTER is mandatory: a full pipe says EAGAIN and the
#: batch waits in the outbox, merged with later requests), never loss.
PIPE_HWM = 1000


#: What the supervisor sends: requests to workers, and to front-end shards.
Outgoing = ipc.ToWorker | ipc.ToShard


@dataclass
class Spawn:
    """How to start a slot's process (other than a worker's default)."""

    args: list[str]
    pass_fds: tuple[int, ...] = ()
    #: written to its stdin after the keys line
    stdin: bytes = b""


@dataclass
class _Slot:
    kind: str
    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    #: the ZeroMQ routing id of the current worker's connection, learnt from
    #: its Ready (which arrived under this slot's key)
    route: bytes = b""
    #: this worker start's CURVE public key (Z85), admitted by the ZAP handler
    key: bytes = b""
    #: an encoded batch the pipe would not take yet; sent before the outbox
    held: bytes | None = None
    generation: int = 0
    restarts: int = 0
    crashes: RestartBudget = field(
        default_factory=lambda: RestartBudget(CRASH_LIMIT, CRASH_WINDOW))
    outbox: list[Outgoing] = field(default_factory=list)
    # req id -> (request, callback); dicts keep insertion order for replay
    inflight: dict[int, tuple[Outgoing, ipc.ReplyCallback | None]] = field(
        default_factory=dict)
    #: the current process's Ready (a shard's says where its mesh is)
    info: ipc.Ready | None = None
    watcher: asyncio.Task[None] | None = None
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def identity(self) -> bytes:
        return f"{self.kind[0]}{self.index}".encode()


class Supervisor:
    """Owns the worker processes and the ZeroMQ socket that reaches them."""

    def __init__(self, kinds: dict[str, int],
                 rebuild: Callable[[str, int, int], Outgoing], *,
                 spawn: Callable[[_Slot], Spawn | None] | None = None,
                 on_message: Callable[[_Slot, ipc.Forward], None] | None = None,
                 on_exit: Callable[[_Slot], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._rebuild = rebuild
        self._spawn_hook = spawn
        self._on_message = on_message
        self._on_exit = on_exit
        self._slots: dict[bytes, _Slot] = {}
        self.by_kind: dict[str, list[_Slot]] = {}
        for kind, n in kinds.items():
            slots = [_Slot(kind, i) for i in range(n)]
            self.by_kind[kind] = slots
            for s in slots:
                self._slots[s.identity] = s
        self._ctx = zmq.Context()
        # The ZAP handler first: a CURVE socket with none would admit any key.
        self._zap = zmqauth.ZapHandler(self._ctx, self._loop, log)
        self._public, secret = zmq.curve_keypair()
        self._sock = self._ctx.socket(zmq.ROUTER)
        zmqauth.curve_server(self._sock, self._public, secret)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.SNDHWM, PIPE_HWM)
        self._sock.setsockopt(zmq.RCVHWM, PIPE_HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        # Not a secret (it is in /proc/net/unix and the workers' argv): the
        # keys are the protection.
        self.endpoint = f"ipc://@conec-actors-{os.getpid()}-{os.urandom(6).hex()}"
        self._sock.bind(self.endpoint)
        self._fd: int = int(self._sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._on_readable)
        self._next_req = 1
        self._flush_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._closing = False
        self.failed: asyncio.Future[None] = self._loop.create_future()

    async def start(self, timeout: float = 20.0) -> None:
        for slot in self._slots.values():
            await self._spawn(slot)
        waits = [s.ready_event.wait() for s in self._slots.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except TimeoutError:
            raise CoordinatorFailed(
                f"worker processes did not start within {timeout:.0f} s") from None

    async def _spawn(self, slot: _Slot) -> None:
        slot.ready = False
        slot.ready_event.clear()
        slot.generation += 1
        # A fresh key per start; the previous worker's key stops working.
        self._zap.allowed.pop(slot.key, None)
        public, secret = zmq.curve_keypair()
        slot.key = public
        self._zap.allowed[public] = slot.identity
        how = self._spawn_hook(slot) if self._spawn_hook is not None else None
        if how is None:
            how = Spawn(["-m", "conec_actors.coord.worker", "--kind", slot.kind,
                         "--slot", str(slot.index)])
        slot.info = None
        slot.proc = await asyncio.create_subprocess_exec(
            sys.executable, *how.args, "--endpoint", self.endpoint,
            stdin=asyncio.subprocess.PIPE, pass_fds=how.pass_fds,
        )
        # The keys go through the pipe, never argv or the environment, which
        # other users can read.
        assert slot.proc.stdin is not None
        slot.proc.stdin.write(zmqauth.encode_keys(self._public, public, secret) + how.stdin)
        slot.proc.stdin.close()
        slot.watcher = self._loop.create_task(self._watch(slot, slot.proc))

    async def _watch(self, slot: _Slot, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._closing or slot.proc is not proc:
            return
        may_restart = slot.crashes.record(time.monotonic())
        log.warning("%s %s %d (pid %d) exited with %s; restarting",
                    slot.kind, _noun(slot), slot.index, proc.pid, code)
        slot.ready = False
        slot.info = None
        if self._on_exit is not None:
            try:
                self._on_exit(slot)
            except Exception:
                log.exception("error handling the exit of %s %d", slot.kind, slot.index)
        if not may_restart:
            if not self.failed.done():
                self.failed.set_exception(CoordinatorFailed(
                    f"{slot.kind} {_noun(slot)} {slot.index} crashed {slot.crashes.recent} times "
                    f"within {CRASH_WINDOW:.0f} s (last exit status {code}); "
                    "the Coordinator shut down"))
            return
        slot.restarts += 1
        try:
            await self._spawn(slot)
        except OSError as exc:
            if not self.failed.done():
                self.failed.set_exception(CoordinatorFailed(
                    f"cannot restart {slot.kind} {_noun(slot)} {slot.index}: {exc}"))

    def pids(self, kind: str | None = None) -> list[int]:
        return [s.proc.pid for s in self._slots.values()
                if s.proc is not None and (kind is None or s.kind == kind)]

    def slot_for(self, kind: str, key: str) -> _Slot:
        """The worker of `kind` that holds `key` (a client id, a broadcast name)."""
        slots = self.by_kind[kind]
        return slots[ipc.shard_of(key, len(slots))]

    def request_for(self, kind: str, key: str, make: ipc.MakeRequest,
                    cb: ipc.ReplyCallback | None) -> int:
        """`request` to the worker of `kind` that holds `key`."""
        return self.request(self.slot_for(kind, key), make, cb)

    def notify(self, slot: _Slot, msg: Outgoing) -> None:
        """Send `msg` to the slot's current process, if it is up: no reply, and
        not replayed to a successor."""
        if slot.ready:
            slot.outbox.append(msg)
            self._flush_soon()

    # -- requests ------------------------------------------------------------

    def request(self, slot: _Slot, make: Callable[[int], Outgoing],
                cb: ipc.ReplyCallback | None) -> int:
        req = self._next_req
        self._next_req += 1
        msg = make(req)
        slot.inflight[req] = (msg, cb)
        if slot.ready:
            slot.outbox.append(msg)
            self._flush_soon()
        return req

    def _flush_soon(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._sock.closed:
            return
        for slot in self._slots.values():
            self._send(slot)
        # Sending can consume the edge of the FD; drain in case input came in.
        self._on_readable()

    def _send(self, slot: _Slot) -> None:
        while slot.ready and (slot.held is not None or slot.outbox):
            if slot.held is None:
                slot.held, slot.outbox = ipc.encode_batch(slot.outbox), []
            try:
                self._sock.send_multipart([slot.route, slot.held], zmq.NOBLOCK)
            except zmq.Again:
                # The worker's pipe is full: keep the batch, offer it again soon.
                if self._retry_handle is None:
                    self._retry_handle = self._loop.call_later(RETRY_DELAY, self._retry)
                return
            except zmq.ZMQError as exc:
                self._unreachable(slot, exc)
                return
            slot.held = None

    def _retry(self) -> None:
        self._retry_handle = None
        self._flush()

    def _unreachable(self, slot: _Slot, exc: zmq.ZMQError) -> None:
        # Its connection is gone (EHOSTUNREACH): the worker died, or cannot
        # be reached and so must be restarted. What it had is in flight and
        # is replayed to its successor.
        if not self._closing:
            log.warning("cannot reach %s %s %d (%s); it is restarted",
                        slot.kind, _noun(slot), slot.index, exc)
        slot.ready = False
        slot.held, slot.outbox = None, []
        if slot.proc is not None and slot.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                slot.proc.kill()

    def _on_readable(self) -> None:
        sock = self._sock
        if sock.closed:
            return
        while int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                route, frame = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            # Which worker spoke is the key it authenticated with (the ZAP
            # User-Id), whatever routing id it claims.
            try:
                slot = self._slots.get(str(frame.get("User-Id")).encode())
            except zmq.ZMQError:  # no User-Id: not authenticated by our handler
                slot = None
            if slot is None:
                continue
            try:
                msgs = ipc.decode_from_worker(frame.bytes)
            except Exception:  # a broken worker must not break the front-end
                log.exception("undecodable batch from %s worker %d", slot.kind,
                              slot.index)
                continue
            for msg in msgs:
                if isinstance(msg, ipc.Ready):
                    slot.info = msg
                    self._on_ready(slot, route.bytes)
                elif isinstance(msg, ipc.Forward):
                    if self._on_message is not None:
                        try:
                            self._on_message(slot, msg)
                        except Exception:
                            log.exception("error handling a message from %s %d",
                                          slot.kind, slot.index)
                else:
                    pending = slot.inflight.pop(msg.req, None)
                    if pending is not None and pending[1] is not None:
                        try:
                            pending[1](msg)
                        except Exception:
                            log.exception("error handling worker reply")

    def _on_ready(self, slot: _Slot, route: bytes) -> None:
        # Rebuild first, then replay what was in flight, in order.
        rebuild_req = self._next_req
        self._next_req += 1
        slot.route = route
        slot.held = None
        slot.outbox = [self._rebuild(slot.kind, slot.index, rebuild_req)]
        slot.outbox.extend(msg for msg, _ in slot.inflight.values())
        slot.ready = True
        slot.ready_event.set()
        self._flush_soon()

    # -- shutdown --------------------------------------------------------------

    async def close(self) -> None:
        self._closing = True
        # Front-end shards first: closing their clients still asks the workers.
        await self._stop([s for s in self._slots.values() if s.kind == "frontend"])
        await self._stop([s for s in self._slots.values() if s.kind != "frontend"])
        # The watchers are ours: cancelled and awaited, none outlives us.
        watchers = [s.watcher for s in self._slots.values() if s.watcher is not None]
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for handle in (self._flush_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._retry_handle = None
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
        self._sock.close(0)
        self._zap.close()
        self._ctx.term()

    async def _stop(self, slots: list[_Slot]) -> None:
        """Tell `slots`' processes to stop; kill those that do not in time."""
        for slot in slots:
            if slot.ready:
                slot.outbox.append(ipc.Shutdown(0))
        self._flush()
        procs = [s.proc for s in slots if s.proc is not None]
        if procs:
            waits = [asyncio.wait_for(p.wait(), STOP_GRACE) for p in procs]
            results = await asyncio.gather(*waits, return_exceptions=True)
            for p, r in zip(procs, results, strict=True):
                if isinstance(r, BaseException):
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    await p.wait()

    def slots(self) -> list[_Slot]:
        """Every worker slot, in one fixed order (that of `figures`)."""
        return list(self._slots.values())

    def figures(self) -> list[dict[str, object]]:
        return [{"kind": s.kind, "slot": s.index, "pid": s.proc.pid if s.proc else None,
                 "ready": s.ready, "restarts": s.restarts, "inflight": len(s.inflight)}
                for s in self._slots.values()]


def _noun(slot: _Slot) -> str:
    """What a slot's process is called in messages."""
    return "shard" if slot.kind == "frontend" else "worker"
