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
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conec_actors import DuplicateId
from conec_actors.coord import zmqauth

from .conftest import Harness, coordinator, wait_for

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
    if cfg["keypair"] is not None:
        public, secret = (k.encode() for k in cfg["keypair"])
    else:
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
                msg.dst, e.frontend, e.conn_key, e.addr, e.cert)))
        elif hasattr(msg, "req"):
            out.append(ipc.Reply(msg.req, 0))
    if out:
        sock.send(ipc.encode_batch(out))
print(json.dumps({"uid": os.getuid(), "received": received, "events": events}),
      flush=True)
"""


@contextlib.asynccontextmanager
async def intruder(h: Harness, *, uid: int | None = None, server_key: bytes | None = None,
                   keypair: tuple[bytes, bytes] | None = None
                   ) -> AsyncIterator[Callable[[], Awaitable[dict[str, Any]]]]:
    """Runs the intruder until it has tried; yields `finish`, which stops it
    and returns its report (uid, what it received, its socket's events)."""
    sup = h.coord._supervisor
    cfg = {"endpoint": sup.endpoint, "uid": uid, "victim": "alice",
           "accomplice": "mallory",
           "server_key": None if server_key is None else server_key.decode(),
           "keypair": None if keypair is None else [k.decode() for k in keypair]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", INTRUDER, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def finish() -> dict[str, Any]:
        stdin.close()
        report: dict[str, Any] = json.loads(await asyncio.wait_for(stdout.readline(), 20))
        return report

    try:
        stdin.write(json.dumps(cfg).encode() + b"\n")
        await stdin.drain()
        assert await asyncio.wait_for(stdout.readline(), 20) == b"sent\n"
        await asyncio.sleep(0.3)  # time for the front-end to hear it out
        yield finish
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def assert_refused(report: dict[str, Any]) -> None:
    # It never got past the handshake, so it heard nothing: no Rebuild with
    # every client's id, address and certificate, no request.
    assert report["received"] == []
    assert "HANDSHAKE_SUCCEEDED" not in report["events"]
    assert any(e.startswith("HANDSHAKE_FAILED") for e in report["events"])


async def _next_incoming(client: Any) -> Any:
    return await asyncio.wait_for(client.incoming.__aiter__().__anext__(), 5)


async def _routing_entries(h: Harness) -> int:
    st = await h.coord.stats()
    return sum(w.get("entries", 0) for w in st["workers"] if w["kind"] == "routing")


async def _served(h: Harness, clients: dict[str, Any], n_entries: int) -> None:
    """The real routing worker serves the real directory."""
    # A new client is admitted ...
    newcomer = f"carol{n_entries}"
    carol = await h.client(newcomer)
    # ... a connected id is still refused ...
    with pytest.raises(DuplicateId):
        await h.client("alice")
    # ... and streams reach whom they are addressed to.
    for peer, client in clients.items():
        send, _recv = await carol.new_proxied_stream(peer)
        await send.send(b"for " + peer.encode())
        inc = await _next_incoming(client)
        assert inc.peer == newcomer
        assert await inc.recv.recv() == b"for " + peer.encode()
    # The directory holds exactly the real clients.
    assert await _routing_entries(h) == n_entries


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
        # The server's public key is not a secret; a client key the
        # supervisor admits is what the intruder cannot have.
        server_key = getattr(h.coord._supervisor, "_public", b"x" * 40)
        async with intruder(h, uid=NOBODY if uid == "nobody" else None,
                            server_key=server_key if keys == "own-keys" else None
                            ) as finish:
            await _served(h, {"bob": bob, "alice": alice}, 4)
            report = await finish()
        assert report["uid"] == (NOBODY if uid == "nobody" else os.getuid())
        assert_refused(report)


async def test_keys_are_per_worker_start_and_never_in_argv_or_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[tuple[bytes, bytes, bytes]] = []
    encode = zmqauth.encode_keys

    def tap(server: bytes, public: bytes, secret: bytes) -> bytes:
        handed.append((server, public, secret))
        return encode(server, public, secret)
    monkeypatch.setattr(zmqauth, "encode_keys", tap)
    async with coordinator(routing_workers=1) as h:
        alice, bob = await h.client("alice"), await h.client("bob")
        for pid in h.coord.worker_pids():
            for what in ("cmdline", "environ"):
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    seen = f.read()
                assert not any(k in seen for keys in handed for k in keys), what
        # A restarted worker gets a new key; its predecessor's stops working.
        (old,) = h.coord.worker_pids("routing")
        os.kill(old, signal.SIGKILL)
        await wait_for(lambda: h.coord.worker_pids("routing") != [old])
        await _served(h, {"bob": bob}, 3)
        server, public, secret = handed[0]
        assert public not in [k[1] for k in handed[1:]]
        async with intruder(h, server_key=server, keypair=(public, secret)) as finish:
            await _served(h, {"alice": alice}, 4)
            assert_refused(await finish())
