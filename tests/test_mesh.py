"""The shard mesh over real ZeroMQ ipc sockets with CURVE, in one event loop:
batching per loop turn, order, restarted and dropped peers, intruders,
back-pressure without loss, and errors that must not stop it."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import msgspec
import pytest
import zmq

from conec_actors.coord import mesh as mesh_mod
from conec_actors.coord import zmqauth
from conec_actors.coord.mesh import Mesh

from .conftest import wait_for

log = logging.getLogger("test.mesh")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list[bytes])
#: How long a test waits to see that something does NOT arrive.
QUIET = 0.5


def encode(msgs: list[bytes]) -> bytes:
    return _enc.encode(msgs)


def decode(data: bytes) -> list[bytes]:
    return _dec.decode(data)


class Node:
    """One shard's mesh and what it was delivered: (from, batch) per call."""

    def __init__(self, index: int) -> None:
        self.got: list[tuple[int, list[bytes]]] = []
        public, secret = zmq.curve_keypair()
        self.keys = (public, secret)
        self.mesh: Mesh[bytes] = Mesh(index, public, secret, encode, decode,
                                      self.deliver, log)

    def deliver(self, j: int, msgs: list[bytes]) -> None:
        self.got.append((j, msgs))

    def received(self, j: int) -> list[bytes]:
        return [m for src, batch in self.got if src == j for m in batch]


def link(nodes: list[Node]) -> None:
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.mesh.set_peer(b.mesh.index, b.mesh.endpoint, b.mesh.public)


@asynccontextmanager
async def meshes(n: int) -> AsyncIterator[list[Node]]:
    nodes = [Node(i) for i in range(n)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.mesh.close()


@contextmanager
def raw_socket(kind: int) -> Iterator[tuple[zmq.Context[zmq.Socket[bytes]],
                                            zmq.Socket[bytes]]]:
    """A plain ZeroMQ socket in a context of its own (no ZAP handler there)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        yield ctx, sock
    finally:
        sock.close(0)
        ctx.term()


def msgs(tag: str, n: int) -> list[bytes]:
    return [f"{tag}{k}".encode() for k in range(n)]


async def test_two_meshes_batch_per_turn_both_ways() -> None:
    async with meshes(2) as (a, b):
        link([a, b])
        turns = [msgs(f"t{t}-", 5) for t in range(100)]
        back = [msgs(f"u{t}-", 3) for t in range(100)]
        for fwd, rev in zip(turns, back, strict=True):
            for m in fwd:
                a.mesh.send(1, m)
            for m in rev:
                b.mesh.send(0, m)
            assert a.mesh.queued(1) == 5
            await asyncio.sleep(0)
        await wait_for(lambda: len(b.received(0)) == 500 and len(a.received(1)) == 300)
        # One ZeroMQ message per turn and peer: each delivery is one turn.
        assert b.got == [(0, t) for t in turns]
        assert a.got == [(1, t) for t in back]
        assert a.mesh.queued(1) == 0 and b.mesh.queued(0) == 0


async def test_three_meshes_every_pair_in_order() -> None:
    async with meshes(3) as nodes:
        link(nodes)
        for t in range(50):
            for node in nodes:
                for j in range(3):
                    if j != node.mesh.index:
                        for m in msgs(f"{node.mesh.index}>{j}:{t}:", 4):
                            node.mesh.send(j, m)
            await asyncio.sleep(0)
        await wait_for(lambda: all(len(n.received(j)) == 200 for n in nodes
                                   for j in range(3) if j != n.mesh.index))
        for node in nodes:
            i = node.mesh.index
            for j in range(3):
                if j != i:
                    want = [m for t in range(50) for m in msgs(f"{j}>{i}:{t}:", 4)]
                    assert node.received(j) == want
            assert len(node.got) == 100  # 50 turns from each of two peers


async def test_sending_to_a_non_peer_is_a_no_op() -> None:
    async with meshes(2) as (a, b):
        a.mesh.send(1, b"x")  # never set
        assert a.mesh.queued(1) == 0
        link([a, b])
        a.mesh.send(7, b"y")
        a.mesh.send(1, b"z")
        await wait_for(lambda: b.received(0) == [b"z"])
        with pytest.raises(ValueError, match="own peer"):
            a.mesh.set_peer(0, b.mesh.endpoint, b.mesh.public)
        with pytest.raises(ValueError, match="Z85"):
            a.mesh.set_peer(2, b.mesh.endpoint, b"short")
        with pytest.raises(ValueError, match="already has that key"):
            a.mesh.set_peer(2, b.mesh.endpoint, b.mesh.public)


async def test_peer_learning_our_key_late_still_gets_everything() -> None:
    # A restarted shard connects to the others before they know its new key.
    async with meshes(2) as (a, b):
        a.mesh.set_peer(1, b.mesh.endpoint, b.mesh.public)
        for t in range(10):
            a.mesh.send(1, f"early{t}".encode())
            await asyncio.sleep(0)
        await asyncio.sleep(QUIET)
        assert b.got == []
        b.mesh.set_peer(0, a.mesh.endpoint, a.mesh.public)
        a.mesh.send(1, b"late")
        await wait_for(lambda: len(b.received(0)) == 11)
        assert b.received(0) == [f"early{t}".encode() for t in range(10)] + [b"late"]


async def test_key_admitted_after_the_handshake_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The held handshake times out; the peer reconnects and nothing is lost.
    monkeypatch.setattr(mesh_mod, "HOLD", 0.2)
    async with meshes(2) as (a, b):
        a.mesh.set_peer(1, b.mesh.endpoint, b.mesh.public)
        a.mesh.send(1, b"m0")
        await asyncio.sleep(1.0)
        a.mesh.send(1, b"m1")
        b.mesh.set_peer(0, a.mesh.endpoint, a.mesh.public)
        await wait_for(lambda: b.received(0) == [b"m0", b"m1"])


async def test_restarted_peer() -> None:
    async with meshes(3) as (a, b, c):
        link([a, b, c])
        a.mesh.send(1, b"to-old")
        await wait_for(lambda: b.received(0) == [b"to-old"])
        old_keys = b.keys
        b.mesh.close()
        # Queued for the dead j while nobody knew: dropped with it.
        a.mesh.send(1, b"lost")
        assert a.mesh.queued(1) == 1
        b2 = Node(1)
        try:
            # The new j connects first; the others hear of it afterwards.
            b2.mesh.set_peer(0, a.mesh.endpoint, a.mesh.public)
            b2.mesh.set_peer(2, c.mesh.endpoint, c.mesh.public)
            b2.mesh.send(0, b"hello-a")
            b2.mesh.send(2, b"hello-c")
            await asyncio.sleep(QUIET)
            a.mesh.set_peer(1, b2.mesh.endpoint, b2.mesh.public)
            c.mesh.set_peer(1, b2.mesh.endpoint, b2.mesh.public)
            assert a.mesh.queued(1) == 0
            a.mesh.send(1, b"to-new")
            c.mesh.send(1, b"from-c")
            await wait_for(lambda: b2.received(0) == [b"to-new"]
                           and b2.received(2) == [b"from-c"]
                           and a.received(1) == [b"hello-a"]
                           and c.received(1) == [b"hello-c"])
            # A process still using the old key is refused and delivers nothing.
            with raw_socket(zmq.DEALER) as (_, sock):
                zmqauth.curve_client(sock, a.mesh.public, *old_keys)
                sock.connect(a.mesh.endpoint)
                sock.send(encode([b"forged"]))
                await wait_for(lambda: a.mesh._gate.refused >= 1)
                await asyncio.sleep(QUIET)
            assert a.received(1) == [b"hello-a"]
        finally:
            b2.mesh.close()


async def test_unknown_key_delivers_nothing() -> None:
    async with meshes(2) as (a, b):
        link([a, b])
        with raw_socket(zmq.DEALER) as (_, plain), raw_socket(zmq.DEALER) as (_, keyed):
            # no CURVE at all
            plain.connect(a.mesh.endpoint)
            plain.send(encode([b"plain"]))
            # a keypair of its own, even claiming a peer's routing id
            keyed.setsockopt(zmq.IDENTITY, b"1")
            zmqauth.curve_client(keyed, a.mesh.public, *zmq.curve_keypair())
            keyed.connect(a.mesh.endpoint)
            keyed.send(encode([b"keyed"]))
            await wait_for(lambda: a.mesh._gate.held == 1)
            b.mesh.send(0, b"real")
            await wait_for(lambda: a.received(1) == [b"real"])
            await asyncio.sleep(QUIET)
        assert a.got == [(1, [b"real"])]


async def test_handshakes_held_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh_mod, "MAX_HELD", 2)
    async with meshes(2) as (a, b):
        with raw_socket(zmq.DEALER) as (ctx, first):
            others = [first, ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)]
            for sock in others:
                sock.setsockopt(zmq.LINGER, 0)
                zmqauth.curve_client(sock, a.mesh.public, *zmq.curve_keypair())
                sock.connect(a.mesh.endpoint)
            await wait_for(lambda: a.mesh._gate.held == 2 and a.mesh._gate.refused == 1)
            # A shard's key is still admitted at once.
            link([a, b])
            b.mesh.send(0, b"real")
            await wait_for(lambda: a.got == [(1, [b"real"])])
            for sock in others[1:]:
                sock.close(0)


async def test_drop_peer() -> None:
    async with meshes(2) as (a, b):
        link([a, b])
        b.mesh.send(0, b"before")
        await wait_for(lambda: a.received(1) == [b"before"])
        a.mesh.send(1, b"queued")
        a.mesh.drop_peer(1)
        assert a.mesh.queued(1) == 0
        a.mesh.send(1, b"after")
        assert a.mesh.queued(1) == 0
        a.mesh.drop_peer(1)  # twice is harmless
        # b's link to a is still open, but a no longer hears it.
        b.mesh.send(0, b"ignored")
        await asyncio.sleep(QUIET)
        assert a.got == [(1, [b"before"])]
        assert b.got == []


async def test_back_pressure_holds_and_loses_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh_mod, "PIPE_HWM", 4)
    async with meshes(1) as (a,):
        with raw_socket(zmq.ROUTER) as (_, peer):
            # The peer: a CURVE server that does not read yet (no ZAP handler
            # in its context, so it admits a's key).
            public, secret = zmq.curve_keypair()
            zmqauth.curve_server(peer, public, secret)
            peer.setsockopt(zmq.RCVHWM, 2)
            endpoint = f"ipc://@conec-actors-test-{os.getpid()}-{os.urandom(4).hex()}"
            peer.bind(endpoint)
            a.mesh.set_peer(1, endpoint, public)
            big = b"x" * 65536
            sent = [big + str(k).encode() for k in range(300)]
            most = 0
            for m in sent:  # one per turn: one ZeroMQ message each
                a.mesh.send(1, m)
                await asyncio.sleep(0)
                most = max(most, a.mesh.queued(1))
            assert most > 2  # the pipe filled and the mesh kept the rest
            assert a.mesh.queued(1) > 0
            got: list[bytes] = []
            while len(got) < len(sent):
                if peer.poll(0):
                    _route, data = peer.recv_multipart()
                    got.extend(decode(data))
                else:
                    await asyncio.sleep(0.001)
            assert got == sent
            assert a.mesh.queued(1) == 0


async def test_decode_and_deliver_errors_are_logged_and_survived(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def picky_decode(data: bytes) -> list[bytes]:
        out = decode(data)
        if b"bad" in out:
            raise ValueError("bad batch")
        return out

    def failing_deliver(j: int, batch: list[bytes]) -> None:
        nonlocal calls
        calls += 1
        if b"boom" in batch:
            raise RuntimeError("deliver failed")
        got.append(batch)

    got: list[list[bytes]] = []
    async with meshes(1) as (a,):
        public, secret = zmq.curve_keypair()
        b: Mesh[bytes] = Mesh(1, public, secret, encode, picky_decode, failing_deliver, log)
        try:
            link_pair = [(a.mesh, b), (b, a.mesh)]
            for x, y in link_pair:
                x.set_peer(y.index, y.endpoint, y.public)
            with caplog.at_level(logging.ERROR, logger=log.name):
                for batch in ([b"bad"], [b"boom"], [b"ok1", b"ok2"]):
                    for m in batch:
                        a.mesh.send(1, m)
                    await asyncio.sleep(0)
                await wait_for(lambda: got == [[b"ok1", b"ok2"]])
            assert calls == 2
            errors = [r for r in caplog.records if r.exc_info]
            assert {str(r.exc_info[1]) for r in errors if r.exc_info} == \
                {"bad batch", "deliver failed"}
        finally:
            b.close()


async def test_an_unencodable_batch_is_logged_and_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    def picky_encode(batch: list[bytes]) -> bytes:
        if b"bad" in batch:
            raise ValueError("cannot encode")
        return encode(batch)

    b = Node(1)
    public, secret = zmq.curve_keypair()
    a: Mesh[bytes] = Mesh(0, public, secret, picky_encode, decode, b.deliver, log)
    try:
        a.set_peer(1, b.mesh.endpoint, b.mesh.public)
        b.mesh.set_peer(0, a.endpoint, a.public)
        with caplog.at_level(logging.ERROR, logger=log.name):
            a.send(1, b"bad")
            a.send(1, b"x")
            await asyncio.sleep(0)
            a.send(1, b"ok")
            await wait_for(lambda: b.got == [(0, [b"ok"])])
        assert a.queued(1) == 0
        assert [r.message for r in caplog.records] == \
            ["cannot encode 2 messages for shard 1; dropped"]
    finally:
        a.close()
        b.mesh.close()


async def test_close_twice_leaves_no_reader() -> None:
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    before = set(selector.get_map())
    async with meshes(2) as (a, b):
        link([a, b])
        a.mesh.send(1, b"x")
        assert set(selector.get_map()) != before
        a.mesh.close()
        a.mesh.close()
        # After close every call is a no-op.
        a.mesh.send(1, b"y")
        a.mesh.set_peer(1, b.mesh.endpoint, b.mesh.public)
        a.mesh.drop_peer(1)
        assert a.mesh.queued(1) == 0
        await asyncio.sleep(0.05)  # the flush scheduled before close does nothing
    assert set(selector.get_map()) == before
