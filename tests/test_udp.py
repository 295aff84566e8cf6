"""Tests for conec_actors.udp: the socket an endpoint reads and writes."""

from __future__ import annotations

import socket

from conec_actors.udp import DEFAULT_TTL, make_socket


def test_bound_to_one_address_and_non_blocking() -> None:
    with make_socket("127.0.0.1", 0) as sock:
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
        assert sock.getsockname()[1] != 0
        assert not sock.getblocking()


def test_dual_stack_or_ipv4_without_a_host() -> None:
    with make_socket(None, 0) as sock:
        assert sock.family in (socket.AF_INET, socket.AF_INET6)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"hi", ("127.0.0.1", sock.getsockname()[1]))
            sock.settimeout(5)
            data, _ = sock.recvfrom(100)
        assert data == b"hi"


def test_default_ttl_is_a_hop_count() -> None:
    assert 1 <= DEFAULT_TTL <= 255
