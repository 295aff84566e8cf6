"""How `federation.Federation` numbers the batches it sends (no NATS: a
recording stand-in for the nats-py connection, a stand-in for the tunnels).

federation_core's contract: a sender numbers its batches to each peer from 0
in each of its epochs. Its epoch changes when its NATS connection breaks, and
also when a batch it received showed a gap (`Members.batch`): then too its
next batches must start from 0, or every receiver sees a gap of its own, bumps
its epoch, and the two Coordinators cut each other's streams for as long as
they talk.
"""

from __future__ import annotations

import asyncio

from conec_actors.coord import federation_core as fc
from conec_actors.coord import shard_wire as sw
from conec_actors.coord.federation import Federation, payload_subject
from conec_actors.coord.peers import Peers, remote_peer

X, Y, Y_INC = 1, 2, 777
Y0 = remote_peer(Y, 0)


class Recorder:
    """nats-py's connection, as far as `Federation` publishes on it."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append((subject, data))


class Tunnels:
    def __init__(self) -> None:
        self.down: list[int] = []
        self.delivered: list[tuple[int, list[sw.ShardMsg]]] = []

    def shard_down(self, peer: int) -> None:
        self.down.append(peer)

    def deliver(self, peer: int, msgs: list[sw.ShardMsg]) -> None:
        self.delivered.append((peer, msgs))


class Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data


def federation() -> tuple[Federation, Recorder, Tunnels]:
    fed = Federation(["nats://127.0.0.1:1"], "x")
    fed.cnum = X
    fed.peers = Peers(0, 1, X)
    fed.members = fc.Members(X, fed.incarnation)
    fed.connected = True
    nc = Recorder()
    fed._nc = nc
    tunnels = Tunnels()
    fed.tunnels = tunnels  # type: ignore[assignment]
    fed._apply(fed.members.heard(fc.Heartbeat(Y, Y_INC, "y", 1, 0), 0.0))
    return fed, nc, tunnels


async def sent(fed: Federation, nc: Recorder) -> list[tuple[int, int]]:
    """Let the batches queued this turn go out: (epoch, seq) of each."""
    await asyncio.sleep(0)
    while fed._publisher is not None:
        await asyncio.sleep(0)
    out = []
    for subject, data in nc.published:
        assert subject == payload_subject(Y, 0)
        cnum, _shard, count, inc, epoch, seq = fc.unpack_head(data)
        assert (cnum, count, inc) == (X, 1, fed.incarnation)
        out.append((epoch, seq))
    nc.published.clear()
    return out


def data(n: int) -> sw.Data:
    return sw.Data(5, 0, bytes([n]))


async def from_y(fed: Federation, seq: int, epoch: int = 0) -> None:
    fed._payload(Msg(fc.pack_head(Y, 0, 1, Y_INC, epoch, seq) + sw.encode([data(0)])))


async def test_batches_to_a_peer_are_numbered_from_0() -> None:
    fed, nc, _ = federation()
    fed.send(Y0, data(1))
    fed.send(Y0, data(2))  # same turn: one batch
    assert await sent(fed, nc) == [(0, 0)]
    fed.send(Y0, data(3))
    assert await sent(fed, nc) == [(0, 1)]


async def test_after_a_gap_our_next_batches_start_a_new_epoch_from_0() -> None:
    fed, nc, tunnels = federation()
    for _ in range(3):
        fed.send(Y0, data(1))
        await sent(fed, nc)
    await from_y(fed, 0)
    await from_y(fed, 2)  # Y's batch 1 was lost: cut, and a new epoch here
    assert tunnels.down == [Y0]
    assert fed.members is not None and fed.members.epoch == 1
    fed.send(Y0, data(2))
    assert await sent(fed, nc) == [(1, 0)]


async def test_a_receiver_following_us_cuts_once_and_sees_no_gap() -> None:
    fed, nc, _ = federation()
    y = fc.Members(Y, Y_INC)  # Y's view of us
    events: list[fc.Event] = []

    async def to_y() -> None:
        fed.send(Y0, data(1))
        await asyncio.sleep(0)
        while fed._publisher is not None:
            await asyncio.sleep(0)
        for _subject, raw in nc.published:
            events.extend(y.batch(*fc.unpack_head(raw), 0.0)[1])
        nc.published.clear()

    await to_y()
    await from_y(fed, 0)
    await from_y(fed, 2)  # a gap here: our epoch 1
    for _ in range(3):
        await to_y()
    assert events == [fc.Joined(X, 1), fc.Cut(X)]  # our new epoch: once
    assert y.epoch == 0  # no gap there, so no cut comes back to us
