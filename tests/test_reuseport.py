"""A steered reuseport group: datagrams reach the socket their destination
connection id names (real sockets on loopback), and QUIC connections issue
only ids that name their shard."""

from __future__ import annotations

import os
import select
import socket
import ssl

import pytest
from aioquic.quic.configuration import QuicConfiguration

from conec_actors import certs, reuseport, shard_ids, tlsconf
from conec_actors._quic import CONNECTION_ID_LENGTH, ConecQuicConnection, RetryGate, parse_packet

pytestmark = pytest.mark.skipif(reuseport.supported() is not None,
                                reason=str(reuseport.supported()))


def short_header(dcid: bytes) -> bytes:
    return bytes([0x40]) + dcid + os.urandom(30)


def long_header(dcid: bytes) -> bytes:
    return bytes([0xC0]) + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid \
        + bytes([8]) + os.urandom(8) + os.urandom(30)


def receive_all(socks: list[socket.socket], expect: int) -> dict[int, list[bytes]]:
    got: dict[int, list[bytes]] = {i: [] for i in range(len(socks))}
    n = 0
    while n < expect:
        ready, _, _ = select.select(socks, [], [], 5.0)
        assert ready, f"only {n} of {expect} datagrams arrived"
        for s in ready:
            while True:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                got[socks.index(s)].append(data)
                n += 1
    return got


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_each_datagram_reaches_the_socket_its_connection_id_names(n: int) -> None:
    group = reuseport.steered_group("127.0.0.1", 0, n)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        port = group[0].getsockname()[1]
        assert all(s.getsockname()[1] == port for s in group)
        sent: dict[bytes, int] = {}
        for i in range(60):
            k = i % n
            cid = shard_ids.issue(k, n, CONNECTION_ID_LENGTH)
            packet = short_header(cid) if i % 2 else long_header(cid)
            sent[packet] = k
            sender.sendto(packet, ("127.0.0.1", port))
        got = receive_all(group, len(sent))
        for k, packets in got.items():
            assert packets and all(sent[p] == k for p in packets)
    finally:
        sender.close()
        for s in group:
            s.close()


def test_a_new_source_port_stays_on_the_same_socket() -> None:
    """What plain SO_REUSEPORT (a 4-tuple hash) gets wrong: a NAT rebinding."""
    group = reuseport.steered_group("127.0.0.1", 0, 3)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(12)]
    try:
        port = group[0].getsockname()[1]
        cid = shard_ids.issue(2, 3, CONNECTION_ID_LENGTH)
        for s in senders:  # twelve source ports, one connection id
            s.sendto(short_header(cid), ("127.0.0.1", port))
        got = receive_all(group, len(senders))
        assert len(got[2]) == len(senders)
    finally:
        for s in senders + group:
            s.close()


def test_a_datagram_too_short_for_a_connection_id_goes_to_socket_zero() -> None:
    group = reuseport.steered_group("127.0.0.1", 0, 3)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"\x40\x01", ("127.0.0.1", group[0].getsockname()[1]))
        assert receive_all(group, 1)[0] == [b"\x40\x01"]
    finally:
        sender.close()
        for s in group:
            s.close()


def test_the_program_is_refused_for_no_socket() -> None:
    with pytest.raises(ValueError, match="at least one"):
        reuseport.steering_program(0)


def _config(is_client: bool) -> QuicConfiguration:
    ck = certs.self_signed(["coord.test"])
    return tlsconf.quic_configuration(
        is_client=is_client, cert_pem=ck.cert_pem, key_pem=ck.key_pem, idle_timeout=10.0,
        max_datagram_size=1200, stream_window=65536,
        server_name="coord.test" if is_client else None)


@pytest.mark.parametrize("k,n", [(0, 1), (0, 3), (2, 3), (5, 8)])
def test_a_shard_connection_issues_only_ids_that_name_it(k: int, n: int) -> None:
    """A whole handshake, in memory: every datagram the client sends after
    its first Initial is addressed to an id that names shard k."""
    client_cfg = _config(True)
    client_cfg.verify_mode = ssl.CERT_NONE
    client = ConecQuicConnection(configuration=client_cfg, stream_window=65536)
    client.connect(("127.0.0.1", 4433), now=0.0)
    first = [d for d, _ in client.datagrams_to_send(now=0.0)]
    info = parse_packet(first[0])
    assert info is not None
    server = ConecQuicConnection(configuration=_config(False), stream_window=65536,
                                 original_destination_connection_id=info.dcid,
                                 shard=(k, n))
    dcids = []
    to_server, now = first, 0.0
    for _ in range(10):
        for d in to_server:
            server.receive_datagram(d, ("127.0.0.1", 5000), now=now)
        for d, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(d, ("127.0.0.1", 4433), now=now)
        to_server = [d for d, _ in client.datagrams_to_send(now=now)]
        for d in to_server:
            info = parse_packet(d)
            assert info is not None
            dcids.append(info.dcid)
        now += 0.01
    assert client._handshake_complete and server._handshake_complete
    assert dcids
    assert {shard_ids.shard_of(c, n) for c in dcids} == {k}
    issued = [c.cid for c in server._host_cids]
    assert len(issued) > 1 and len(set(issued)) == len(issued)
    assert {shard_ids.shard_of(c, n) for c in issued} == {k}


def _initial() -> tuple[bytes, ConecQuicConnection]:
    client_cfg = _config(True)
    client_cfg.verify_mode = ssl.CERT_NONE
    client = ConecQuicConnection(configuration=client_cfg, stream_window=65536)
    client.connect(("127.0.0.1", 4433), now=0.0)
    return next(d for d, _ in client.datagrams_to_send(now=0.0)), client


def test_a_retry_from_one_shard_validates_at_another_and_names_the_shard_asked() -> None:
    key = RetryGate.new_key()
    gates = [RetryGate(key, shard=(k, 3)) for k in range(3)]
    first, client = _initial()
    pkt = parse_packet(first)
    assert pkt is not None
    addr = ("127.0.0.1", 5000)
    retry = gates[0].retry_packet(pkt, addr, now=1.0, to_shard=2)
    client.receive_datagram(retry, ("127.0.0.1", 4433), now=1.0)
    again = parse_packet(next(d for d, _ in client.datagrams_to_send(now=1.0)))
    assert again is not None and again.token
    assert shard_ids.shard_of(again.dcid, 3) == 2
    assert gates[2].validate(again, addr, now=1.5) == pkt.dcid
    assert RetryGate().validate(again, addr, now=1.5) is None  # another Coordinator's key
