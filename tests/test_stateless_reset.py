"""Stateless resets (RFC 9000 10.3): a server endpoint with a reset key
answers a short-header datagram for a connection it does not hold with a
reset carrying the id's token, and a client connection that receives one
for an id of its peer's ends at once ("stateless reset") instead of at its
idle timeout. So the clients of a shard that was SIGKILLed and restarted see
`ClientClosed` as soon as they send anything.

Unit tests of the rules (`StatelessResets`) and of `ConecQuicConnection`'s
tokens and detection first (bytes in, verdicts out, a virtual clock), then
real Coordinators and clients."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnectionState
from aioquic.quic.packet import QuicErrorCode

from conec_actors import Client, ClientClosed, shard_ids
from conec_actors._quic import (
    CONNECTION_ID_LENGTH,
    RESET_MIN_SIZE,
    ConecQuicConnection,
    reset_token,
)
from conec_actors.endpoint_rules import RESET_BURST, RESET_MAX_SIZE, RESET_RATE, StatelessResets
from conec_actors.tlsconf import quic_configuration

from .conftest import Harness, coord_cert, coordinator, wait_for

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CID = b"\x11" * CONNECTION_ID_LENGTH
CLIENT_ADDR = ("10.0.0.1", 1000)
SERVER_ADDR = ("10.0.0.2", 2000)


def short_header(size: int, cid: bytes = CID) -> bytes:
    """A datagram of `size` bytes that looks like a 1-RTT packet for `cid`."""
    return bytes((0x41,)) + cid + b"\x00" * (size - 1 - len(cid))


# -- the rules: which datagram gets which reset --------------------------------------


def test_a_short_header_for_an_unknown_id_gets_a_reset_with_its_token() -> None:
    r = StatelessResets(KEY)
    reset = r.consider(short_header(100), now=0.0)
    assert reset is not None
    assert reset[0] & 0xC0 == 0x40  # looks like a short header
    assert reset[-16:] == reset_token(KEY, CID)
    assert RESET_MIN_SIZE <= len(reset) < 100
    assert (r.sent, r.limited) == (1, 0)


def test_a_reset_is_always_shorter_than_its_trigger() -> None:
    r = StatelessResets(KEY, burst=1000)
    for size in range(RESET_MIN_SIZE + 1, 1500, 7):
        reset = r.consider(short_header(size), now=0.0)
        assert reset is not None
        assert len(reset) == min(size - 1, RESET_MAX_SIZE)


def test_resets_are_unpredictable_but_for_the_token() -> None:
    r = StatelessResets(KEY)
    a, b = r.consider(short_header(60), 0.0), r.consider(short_header(60), 0.0)
    assert a is not None and b is not None
    assert a[:-16] != b[:-16]
    assert a[-16:] == b[-16:]


def test_long_headers_and_datagrams_without_the_fixed_bit_get_none() -> None:
    r = StatelessResets(KEY)
    assert r.consider(b"\xc0" + short_header(100)[1:], 0.0) is None  # long header
    assert r.consider(b"\x01" + short_header(100)[1:], 0.0) is None  # no fixed bit
    assert (r.sent, r.limited) == (0, 0)


def test_a_datagram_too_short_to_undercut_gets_none() -> None:
    r = StatelessResets(KEY)
    assert r.consider(short_header(RESET_MIN_SIZE), 0.0) is None
    # (the channels' knock, 18 bytes, is one of those)
    assert r.consider(b"conec-actors knock", 0.0) is None
    reset = r.consider(short_header(RESET_MIN_SIZE + 1), 0.0)
    assert reset is not None and len(reset) == RESET_MIN_SIZE


def test_resets_are_rate_limited_by_a_token_bucket() -> None:
    r = StatelessResets(KEY)
    trigger = short_header(100)
    sent = [r.consider(trigger, 5.0) for _ in range(RESET_BURST + 10)]
    assert sum(s is not None for s in sent) == RESET_BURST
    assert (r.sent, r.limited) == (RESET_BURST, 10)
    # Refilled at RESET_RATE per second, never above the burst.
    assert r.consider(trigger, 5.0 + 1.5 / RESET_RATE) is not None
    assert r.consider(trigger, 5.0 + 1.5 / RESET_RATE) is None
    later = [r.consider(trigger, 1000.0) for _ in range(RESET_BURST + 1)]
    assert sum(s is not None for s in later) == RESET_BURST


def test_a_clock_going_back_refills_nothing() -> None:
    r = StatelessResets(KEY, rate=10.0, burst=1)
    assert r.consider(short_header(50), 10.0) is not None
    assert r.consider(short_header(50), 0.0) is None
    assert r.consider(short_header(50), 10.05) is None
    assert r.consider(short_header(50), 10.2) is not None


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        StatelessResets(b"k" * 15)
    assert len(StatelessResets.new_key()) >= 16
    assert StatelessResets.new_key() != StatelessResets.new_key()


# -- tokens and detection in ConecQuicConnection ------------------------------------------


def configs() -> tuple[QuicConfiguration, QuicConfiguration]:
    cert = coord_cert()

    def make(is_client: bool) -> QuicConfiguration:
        return quic_configuration(
            is_client=is_client, cert_pem=cert.cert_pem, key_pem=cert.key_pem,
            idle_timeout=30.0, max_datagram_size=1200, stream_window=65536,
            server_name="localhost" if is_client else None,
            cadata=cert.cert_pem if is_client else None)

    return make(True), make(False)


def server_conn(key: bytes | None, shard: tuple[int, int] | None = None) -> ConecQuicConnection:
    _, scfg = configs()
    return ConecQuicConnection(configuration=scfg, stream_window=65536,
                               original_destination_connection_id=os.urandom(8),
                               reset_key=key, shard=shard)


class Pair:
    """A client and a server connection (the server's ids keyed with
    `key`), handshake done, on a virtual clock."""

    def __init__(self, key: bytes | None = KEY) -> None:
        ccfg, scfg = configs()
        self.now = 1000.0
        self.client = ConecQuicConnection(configuration=ccfg,
                                          stream_window=65536)
        self.client.connect(SERVER_ADDR, now=self.now)
        first = self.client.datagrams_to_send(now=self.now)
        self.server = ConecQuicConnection(
            configuration=scfg, stream_window=65536,
            original_destination_connection_id=first[0][0][6:6 + CONNECTION_ID_LENGTH],
            reset_key=key)
        for data, _ in first:
            self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
        for _ in range(20):
            self.now += 0.001
            for src, dst, addr in ((self.server, self.client, SERVER_ADDR),
                                   (self.client, self.server, CLIENT_ADDR)):
                for data, _ in src.datagrams_to_send(now=self.now):
                    dst.receive_datagram(data, addr, now=self.now)
        assert self.client._handshake_complete and self.server._handshake_complete

    def client_packet(self) -> bytes:
        """A 1-RTT datagram the client sends (a PING)."""
        self.client.send_ping(1)
        return self.client.datagrams_to_send(now=self.now)[0][0]


def test_every_server_id_carries_the_keyed_token() -> None:
    p = Pair()
    ids = p.server._host_cids
    assert len(ids) > 1  # the first, and those issued after the handshake
    for cid in ids:
        assert cid.stateless_reset_token == reset_token(KEY, cid.cid)
    # The client learnt them: from the transport parameters, NEW_CONNECTION_ID frames.
    known = [p.client._peer_cid, *p.client._peer_cid_available]
    assert {c.cid: c.stateless_reset_token for c in known} == \
        {c.cid: c.stateless_reset_token for c in ids}


def test_the_same_id_has_the_same_token_in_any_connection_with_the_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two shards' connections that issued the same id (a restarted shard's
    # and its predecessor's, as far as a client can tell).
    monkeypatch.setattr(shard_ids, "issue", lambda k, n, length: CID)
    a, b = server_conn(KEY, shard=(1, 4)), server_conn(KEY, shard=(1, 4))
    c = server_conn(OTHER_KEY, shard=(1, 4))
    assert a._host_cids[0].cid == b._host_cids[0].cid == c._host_cids[0].cid == CID
    assert a._host_cids[0].stateless_reset_token == b._host_cids[0].stateless_reset_token \
        == reset_token(KEY, CID)
    assert c._host_cids[0].stateless_reset_token == reset_token(OTHER_KEY, CID) \
        != reset_token(KEY, CID)
    # Without a key: aioquic's random token.
    d = server_conn(None, shard=(1, 4))
    assert d._host_cids[0].stateless_reset_token not in (reset_token(KEY, CID), b"", None)


def test_a_reset_for_the_id_in_use_drains_the_client_at_once() -> None:
    p = Pair()
    trigger = p.client_packet()
    assert trigger[1:1 + CONNECTION_ID_LENGTH] == p.client._peer_cid.cid
    reset = StatelessResets(KEY).consider(trigger, p.now)
    assert reset is not None and len(reset) < len(trigger)
    assert p.client.peer_closed() is None
    assert p.client.receive_stateless_reset(reset, p.now)
    assert p.client._state == QuicConnectionState.DRAINING
    assert p.client.peer_closed() == (QuicErrorCode.INTERNAL_ERROR, "stateless reset")
    assert p.client.datagrams_to_send(now=p.now + 0.01) == []  # it sends nothing more
    assert not p.client.receive_stateless_reset(reset, p.now)  # once


def test_a_reset_for_an_available_peer_id_counts_too() -> None:
    p = Pair()
    spare = p.client._peer_cid_available[0].cid
    reset = StatelessResets(KEY).consider(short_header(60, spare), p.now)
    assert reset is not None
    assert p.client.receive_stateless_reset(reset, p.now)


def test_a_reset_made_with_another_key_is_ignored() -> None:
    p = Pair()
    reset = StatelessResets(OTHER_KEY).consider(p.client_packet(), p.now)
    assert reset is not None
    assert not p.client.receive_stateless_reset(reset, p.now)
    assert p.client._state == QuicConnectionState.CONNECTED


def test_a_reset_for_an_id_the_client_does_not_know_is_ignored() -> None:
    p = Pair()
    reset = StatelessResets(KEY).consider(short_header(60, b"\x99" * 8), p.now)
    assert reset is not None
    assert not p.client.receive_stateless_reset(reset, p.now)


def test_a_datagram_too_short_is_no_reset_even_if_it_ends_in_a_token() -> None:
    p = Pair()
    token = reset_token(KEY, p.client._peer_cid.cid)
    assert not p.client.receive_stateless_reset(b"\x40" * 4 + token, p.now)
    assert p.client.receive_stateless_reset(b"\x40" * 5 + token, p.now)


def test_a_server_without_a_key_sends_random_tokens() -> None:
    p = Pair(key=None)
    reset = StatelessResets(KEY).consider(p.client_packet(), p.now)
    assert reset is not None
    assert not p.client.receive_stateless_reset(reset, p.now)


# -- real Coordinators and clients ----------------------------------------------------


async def told(c: Client) -> object:
    """The body of the next message in `c`'s mailbox."""
    return (await asyncio.wait_for(anext(c.mailbox), 5)).body


async def test_a_silently_dropped_client_learns_it_from_a_reset() -> None:
    """frontends=1: the Coordinator forgets a connection without a word
    (`abort`); the client's next packet gets a reset, so it closes at once,
    not 30 s later at its idle timeout."""
    async with coordinator() as h:
        a = await h.client("a")
        b = await h.client("b")
        ep = h.coord._endpoint
        assert ep.server is not None and ep.server.reset_key is not None
        victim = next(conn for conn in ep.connections
                      if conn.peer_address[1] == a._endpoint.local_address[1])
        victim.abort()
        with pytest.raises(ClientClosed, match="stateless reset"):
            await asyncio.wait_for(a.broadcast_count("nothing"), 10)
        assert a.is_closed
        assert ep.resets_sent >= 1
        # Everyone else carries on.
        assert not b.is_closed
        c = await h.client("c")
        await c.tell("b", "still here")
        assert await told(b) == "still here"


async def test_a_fake_reset_does_not_close_a_client() -> None:
    """A reset made with another key, from a raw UDP socket or even from the
    Coordinator's own address, leaves the client alone; the real token ends it."""
    async with coordinator() as h:
        a = await h.client("a")
        b = await h.client("b")
        conn = a._conn
        peer_cid = conn.quic._peer_cid.cid
        fake = StatelessResets(OTHER_KEY).consider(short_header(60, peer_cid), 0.0)
        assert fake is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            for _ in range(3):
                raw.sendto(fake, ("127.0.0.1", a._endpoint.local_address[1]))
        coord_addr = conn.addr
        a._endpoint.datagram_received(fake, coord_addr)
        await asyncio.sleep(0.2)
        assert not a.is_closed
        await a.tell("b", "unharmed")
        assert await told(b) == "unharmed"
        assert h.coord._endpoint.server is not None
        key = h.coord._endpoint.server.reset_key
        assert key is not None
        real = StatelessResets(key).consider(short_header(60, peer_cid), 0.0)
        assert real is not None
        a._endpoint.datagram_received(real, coord_addr)
        await wait_for(lambda: a.is_closed, timeout=2)


async def test_a_channel_the_target_dropped_ends_on_its_reset() -> None:
    """A client that accepts channels answers with resets (its own key): the
    opener's channel ends as soon as it sends, and its Coordinator link stays."""
    async with coordinator() as h:
        a, b = await h.client("a"), await h.client("b")
        await a.new_channel("b")
        assert "b" in a.channels()
        accepted = [c for c in b._endpoint.connections if c is not b._conn]
        assert len(accepted) == 1
        dialled = [c for c in a._endpoint.connections if c is not a._conn]
        assert len(dialled) == 1
        accepted[0].abort()
        await a.tell("b", "into the void")
        await wait_for(lambda: dialled[0].closed and "b" not in a.channels(), timeout=5)
        assert dialled[0].close_reason == "stateless reset"
        assert b._endpoint.resets_sent >= 1
        assert not a.is_closed
        # The mailbox carried the tell on, proxied, in order.
        await a.tell("b", "proxied")
        assert [await told(b), await told(b)] == ["into the void", "proxied"]


async def placed(h: Harness, cid: str) -> tuple[Client, int]:
    before = [f["clients"] for f in (await h.coord.stats())["frontends"]]
    c = await h.client(cid)
    for _ in range(200):
        now = [f["clients"] for f in (await h.coord.stats())["frontends"]]
        grew = [k for k, (x, y) in enumerate(zip(before, now, strict=True)) if y > x]
        if grew:
            return c, grew[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{cid} is on no shard")


@pytest.mark.skipif(sys.platform != "linux", reason="shards need Linux")
@pytest.mark.timeout(90)
async def test_clients_of_a_killed_shard_see_client_closed_at_once() -> None:
    """The default idle timeout (30 s): the clients of a SIGKILLed shard hear
    of it from its successor's resets as soon as they send; the other
    shard's clients keep working."""
    async with coordinator(frontends=2) as h:
        clients: list[tuple[Client, int]] = []
        while len({s for _, s in clients}) < 2 or len(clients) < 4:
            clients.append(await placed(h, f"c{len(clients)}"))
            assert len(clients) < 64, "the kernel put 64 clients on one shard"
        victim = clients[0][1]
        lost = [c for c, s in clients if s == victim]
        kept = [c for c, s in clients if s != victim]
        pid = h.coord.worker_pids("frontend")[victim]
        os.kill(pid, signal.SIGKILL)
        for c in lost:
            with pytest.raises(ClientClosed, match="stateless reset"):
                await asyncio.wait_for(c.broadcast_count("nothing"), 5)
            assert c.is_closed
        for c in kept:
            assert not c.is_closed
        if len(kept) >= 2:
            await kept[0].tell(kept[1].id, "hello")
            assert await told(kept[1]) == "hello"
