"""A channel's target knocks toward the opener before it accepts the offer,
with real clients and a real Coordinator on loopback (the NATs that make
this order matter are in tests/test_nat.py; conec_actors.client.knocks says
why)."""

from __future__ import annotations

import socket
from typing import Any

from conec_actors.client.knocks import EARLY_KNOCK_TTL, KNOCK

from .conftest import coordinator


def record_sends(client: Any, coord_port: int) -> list[tuple[str, int | None]]:
    """What `client`'s channel socket sends from now on, in order: ("offer",
    None) when an offer arrives, ("knock", TTL) and ("coord", None)."""
    sent: list[tuple[str, int | None]] = []
    endpoint = client._endpoint
    sock = endpoint.sock
    send = endpoint.sendto

    def sendto(data: bytes, addr: Any) -> None:
        if data == KNOCK:
            opt = ((socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
                   if sock.family == socket.AF_INET6 else (socket.IPPROTO_IP, socket.IP_TTL))
            sent.append(("knock", sock.getsockopt(*opt)))
        elif addr[1] == coord_port:
            sent.append(("coord", None))
        send(data, addr)

    link = client._chans._link
    on_offer = link.on_offer

    def offered(offer: Any) -> None:
        sent.append(("offer", None))
        on_offer(offer)

    endpoint.sendto = sendto
    link.on_offer = offered
    return sent


async def test_the_target_knocks_before_it_answers_the_offer() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        sent = record_sends(b, h.coord.address[1])
        await a.new_channel("bob")
        assert b.channels() == ["alice"]
        first = sent.index(("offer", None))
        # The opener dials only once the answer reached it through the
        # Coordinator: a knock sent after the answer can lose that race.
        assert sent[first + 1] == ("knock", EARLY_KNOCK_TTL), sent
        assert ("coord", None) in sent[first + 2:], sent
