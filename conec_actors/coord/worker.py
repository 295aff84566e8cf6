"""Worker process: `python -m conec_actors.coord.worker --kind routing
--slot N --endpoint ipc://@...`, its CURVE keys on stdin.

Started by the Coordinator's supervisor as a plain subprocess (never by
multiprocessing, so a user's script without a `__main__` guard is not
re-imported). It reads the front-end's public key and its own keypair from
stdin (one line, `zmqauth.encode_keys`), connects a CURVE DEALER socket to
the front-end's ROUTER, says `Ready`, then answers batches of requests until
told to shut down or until its parent disappears.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys
import time

import msgspec
import zmq

from . import ipc, zmqauth
from .broadcasts import BroadcastBook
from .directory import Directory
from .lag import LagMeter

PARENT_CHECK_MS = 500


def _die_with_parent() -> None:
    """Ask Linux to kill us when the parent process dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def serve(kind: str, slot: int, endpoint: str,
          keys: tuple[bytes, bytes, bytes]) -> int:
    parent = os.getppid()
    _die_with_parent()
    handler: Directory | BroadcastBook
    if kind == "routing":
        handler = Directory()
    elif kind == "broadcast":
        handler = BroadcastBook()
    else:
        print(f"conec-actors worker: unknown kind {kind!r}", file=sys.stderr)
        return 2
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    # No routing id of our own: the front-end knows us by our key.
    zmqauth.curve_client(sock, *keys)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    sock.send(ipc.encode_batch([ipc.Ready(kind, slot, os.getpid())]))
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    # The loop's lag: how late it gets round to a deadline it set itself.
    meter = LagMeter()
    due = meter.start(time.monotonic())
    try:
        while True:
            wait = min(PARENT_CHECK_MS, max(0, int((due - time.monotonic()) * 1000) + 1))
            ready = poller.poll(wait)
            now = time.monotonic()
            if now >= due:
                due = meter.fired(now)
            if not ready:
                if os.getppid() != parent:
                    return 0
                continue
            out: list[ipc.FromWorker] = []
            stop = False
            while True:
                try:
                    data = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for msg in ipc.decode_to_worker(data):
                    reply = handler.handle(msg)
                    if isinstance(reply, ipc.StatsReply):
                        reply = msgspec.structs.replace(reply, loop_lag=meter.lag)
                    if reply is not None:
                        out.append(reply)
                    if isinstance(msg, ipc.Shutdown):
                        stop = True
            if out:
                sock.send(ipc.encode_batch(out))
            if stop:
                return 0
    finally:
        sock.close()
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conec_actors.coord.worker")
    p.add_argument("--kind", required=True)
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--endpoint", required=True)
    args = p.parse_args(argv)
    try:
        keys = zmqauth.read_keys(sys.stdin.buffer)
    except ValueError as exc:
        print(f"conec-actors worker: {exc}", file=sys.stderr)
        return 2
    # The front-end stops us (Shutdown, then SIGKILL after a grace period); a
    # signal sent to the whole process group must not look like a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return serve(args.kind, args.slot, args.endpoint, keys)


if __name__ == "__main__":
    sys.exit(main())
