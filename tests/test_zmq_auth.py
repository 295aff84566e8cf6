"""Only the Coordinator's own processes speak on its ZeroMQ sockets.

A real intruder, a separate process (as the same uid and as `nobody`), dials
the supervisor's abstract-namespace endpoint, which any local process can
find in /proc/net/unix, claiming routing worker 0's identity (b"r0"), with
no CURVE keys or with a keypair of its own. It says Ready, forges a Register
and then plays a pliant directory: it admits every duplicate and answers
every lookup with its accomplice's connection. Nothing of that may change
the Coordinator: the intruder receives nothing, and the real worker goes on
serving the real directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

import pytest

from conec_actors import DuplicateId

from .conftest import coordinator

NOBODY = 65534

# The venv's interpreter lives where `nobody` cannot read it, so the intruder
# imports as the test's user and then drops to the other uid before it
# creates any ZeroMQ context or socket.
INTRUDER = r"""
import json, os, sys, time
import zmq
from zmq.utils.monitor import recv_monitor_message
from conec_actors.coord import ipc

cfg = json.loads(sys.stdin.readline())
if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.IDENTITY, b"r0")
sock.setsockopt(zmq.LINGER, 0)
if cfg["server_key"] is not None:
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey = cfg["server_key"].encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
mon = sock.get_monitor_socket()
sock.connect(cfg["endpoint"])
sock.send(ipc.encode_batch([ipc.Ready("routing", 0, os.getpid())]))
forged = ipc.Entry(cfg["victim"], "fe", 999999, ("127.0.0.1", 9), b"forged")
sock.send(ipc.encode_batch([ipc.Register(1, forged)]))

events = []
def watch(timeout_ms):
    while mon.poll(timeout_ms):
        ev = recv_monitor_message(mon)["event"]
        events.append(zmq.Event(ev).name)
        timeout_ms = 0

# Wait for the handshake to go one way or the other (it retries on failure).
deadline = time.monotonic() + 3
while time.monotonic() < deadline and not any(e.startswith("HANDSHAKE") for e in events):
    watch(50)
print("sent", flush=True)

received, entries = [], {}
poller = zmq.Poller()
poller.register(sock, zmq.POLLIN)
poller.register(sys.stdin.fileno(), zmq.POLLIN)
end = time.monotonic() + 30
while time.monotonic() < end:
    ready = dict(poller.poll(100))
    watch(0)
    if sys.stdin.fileno() in ready:
        break  # the test is done with us
    if sock not in ready:
        continue
    out = []
    for msg in ipc.decode_to_worker(sock.recv()):
        received.append(type(msg).__name__)
        if isinstance(msg, ipc.Rebuild):
            entries = {e.client_id: e for e in msg.entries}
        elif isinstance(msg, ipc.Register):  # admit every duplicate
            out.append(ipc.Reply(msg.req, 0, msg.entry))
        elif isinstance(msg, ipc.Lookup):  # route everyone to the accomplice
            e = entries.get(cfg["accomplice"])
            out.append(ipc.Reply(msg.req, 0, None if e is None else ipc.Entry(
                msg.dst, e.frontend, e.conn, e.addr, e.cert)))
        elif hasattr(msg, "req"):
            out.append(ipc.Reply(msg.req, 0))
    if out:
        sock.send(ipc.encode_batch(out))
print(json.dumps({"uid": os.getuid(), "received": received, "events": events}),
      flush=True)
"""


async def _next_incoming(client: Any) -> Any:
    return await asyncio.wait_for(client.incoming.__aiter__().__anext__(), 5)


async def _routing_entries(h: Any) -> int:
    st = await h.coord.stats()
    return sum(w.get("entries", 0) for w in st["workers"] if w["kind"] == "routing")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("uid", ["same", "nobody"])
@pytest.mark.parametrize("keys", ["no-keys", "own-keys"])
async def test_a_foreign_zmq_peer_changes_nothing(uid: str, keys: str) -> None:
    if uid == "nobody" and os.geteuid() != 0:
        pytest.skip("running the intruder as another uid needs root")
    async with coordinator(routing_workers=1) as h:
        alice, bob = await h.client("alice"), await h.client("bob")
        await h.client("mallory")  # the intruder's accomplice
        assert await _routing_entries(h) == 3
        sup = h.coord._supervisor
        cfg = {"endpoint": sup.endpoint, "uid": NOBODY if uid == "nobody" else None,
               "victim": "alice", "accomplice": "mallory",
               # the server's public key is not a secret; a key of one's own
               # is what the intruder cannot have
               "server_key": getattr(sup, "_public", b"x" * 40).decode()
               if keys == "own-keys" else None}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", INTRUDER, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(cfg).encode() + b"\n")
            await proc.stdin.drain()
            assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"sent\n"
            await asyncio.sleep(0.3)  # time for the front-end to hear it out

            # The real worker still serves: a new client is admitted ...
            carol = await h.client("carol")
            # ... a connected id is still refused ...
            with pytest.raises(DuplicateId):
                await h.client("alice")
            # ... and streams reach whom they are addressed to.
            for peer, client in (("bob", bob), ("alice", alice)):
                send, _recv = await carol.new_proxied_stream(peer)
                await send.send(b"for " + peer.encode())
                inc = await _next_incoming(client)
                assert inc.peer == "carol"
                assert await inc.recv.recv() == b"for " + peer.encode()
            # The directory holds exactly the four real clients.
            assert await _routing_entries(h) == 4

            proc.stdin.close()
            report = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        assert report["uid"] == (NOBODY if uid == "nobody" else os.getuid())
        # It never got past the handshake, so it heard nothing: no Rebuild
        # with every client's id, address and certificate, no request.
        assert report["received"] == []
        assert "HANDSHAKE_SUCCEEDED" not in report["events"]
        assert any(e.startswith("HANDSHAKE_FAILED") for e in report["events"])
