"""`packet_window.PacketWindow` answers as aioquic's own duplicate window does."""

from __future__ import annotations

import random

from aioquic.quic.recovery import QuicPacketNumberWindow

from conec_actors.packet_window import SIZE, PacketWindow


def test_fresh_numbers_are_new_and_received_ones_duplicates() -> None:
    w = PacketWindow()
    assert 0 not in w and 5 not in w
    w.add(0)
    w.add(5)
    assert 0 in w and 5 in w and 3 not in w


def test_numbers_older_than_the_window_count_as_received() -> None:
    w = PacketWindow()
    w.add(1000)
    assert 1000 - SIZE in w  # below the window: a duplicate, or too old to tell
    assert 1000 - SIZE + 1 not in w  # inside it, never received
    w.add(1000 - SIZE + 1)
    assert 1000 - SIZE + 1 in w
    w.add(10)  # far below: nothing to remember
    assert 1001 not in w


def test_same_answers_as_aioquic_on_random_arrivals() -> None:
    rng = random.Random(7)
    for _ in range(50):
        ours, theirs = PacketWindow(), QuicPacketNumberWindow()
        pn = 0
        for _ in range(2000):
            # Mostly in order, some reordering, duplicates and jumps.
            pn = max(0, pn + rng.choice([1, 1, 1, 2, -3, 0, 40, 300, -200]))
            for probe in range(max(0, pn - 2 * SIZE), pn + 3):
                assert (probe in ours) == (probe in theirs), probe
            ours.add(pn)
            theirs.add(pn)


def test_a_connection_uses_it() -> None:
    from aioquic.quic.configuration import QuicConfiguration

    from conec_actors._quic import ConecQuicConnection

    quic = ConecQuicConnection(configuration=QuicConfiguration(is_client=True),
                               stream_window=65536)
    quic.connect(("127.0.0.1", 9), now=0.0)
    assert all(isinstance(s.received_packets, PacketWindow) for s in quic._spaces.values())
