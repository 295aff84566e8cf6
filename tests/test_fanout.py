"""Broadcast fan-out at the front-end (coord/fanout.py) with stand-in
connections and a stand-in broadcast worker: no Coordinator, no sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from conec_actors import wire
from conec_actors.coord import ipc
from conec_actors.coord.fanout import BroadcastHub, MemberLeg
from conec_actors.coord.legs import Leg
from conec_actors.coord.session import Limits, SessionCore, State
from conec_actors.framing import FrameDecoder, frame
from conec_actors.stream_state import BROADCAST_HIGH_WATER, BROADCAST_LOW_WATER

LIMIT = 1 << 20


@dataclass
class FakeConn:
    """Records what the front-end does to a connection's streams."""

    sent: dict[int, bytearray] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    resets: dict[int, int] = field(default_factory=dict)
    stops: dict[int, int] = field(default_factory=dict)
    windows: dict[int, int] = field(default_factory=dict)
    credit: dict[int, int] = field(default_factory=dict)
    closed: bool = False

    def send(self, quic_id: int, data: bytes, end: bool = False) -> None:
        self.sent.setdefault(quic_id, bytearray()).extend(data)
        if end:
            self.ended.add(quic_id)

    def reset(self, quic_id: int, code: int) -> None:
        self.resets[quic_id] = code

    def stop(self, quic_id: int, code: int) -> None:
        self.stops[quic_id] = code

    def unsent(self, quic_id: int) -> int:
        return 0

    def consume_to(self, quic_id: int, offset: int) -> None:
        self.credit[quic_id] = offset

    def set_stream_window(self, quic_id: int, window: int) -> None:
        self.windows[quic_id] = window

    def watch_drain(self, quic_id: int, cb: object) -> None:
        pass

    def unwatch_drain(self, quic_id: int) -> None:
        pass

    def forget_stream(self, quic_id: int) -> None:
        pass

    def frames(self, quic_id: int) -> list[bytes]:
        return FrameDecoder(LIMIT + 64).feed(bytes(self.sent.get(quic_id, b"")))


class FakePeer:
    """A session in state ready, as its legs see it."""

    def __init__(self, key: int, client_id: str, max_message_size: int = LIMIT) -> None:
        self.conn = FakeConn()
        self.core = SessionCore(key, ("192.0.2.1", key), Limits(max_message_size, 1200, 30.0),
                                lambda _: None)
        self.core.state = State.READY
        self.core.client_id = client_id
        self.core.max_message_size = max_message_size
        self.legs: dict[int, Leg] = {}

    @property
    def conn_key(self) -> int:
        return self.core.conn_key

    @property
    def client_id(self) -> str | None:
        return self.core.client_id

    @property
    def max_message_size(self) -> int:
        return self.core.max_message_size


class Worker:
    """Stands in for the broadcast worker: keeps the requests, answers on demand."""

    def __init__(self) -> None:
        self.requests: list[tuple[ipc.ToWorker, ipc.ReplyCallback]] = []
        self.next_req = 1

    def __call__(self, name: str, make: ipc.MakeRequest, cb: ipc.ReplyCallback) -> None:
        self.requests.append((make(self.next_req), cb))
        self.next_req += 1

    def answer(self, **kw: object) -> ipc.ToWorker:
        msg, cb = self.requests.pop(0)
        cb(ipc.BroadcastReply(msg.req, **kw))  # type: ignore[arg-type]
        return msg


def join(hub: BroadcastHub, worker: Worker, peer: FakePeer, name: str = "room",
         quic_id: int = 4) -> MemberLeg:
    leg = MemberLeg(peer, quic_id, 0)  # type: ignore[arg-type]
    peer.legs[quic_id] = leg
    assert peer.core.begin_open()
    hub.join(leg, name)
    req = worker.answer(epoch=1, senders=1, receivers=1)
    assert isinstance(req, ipc.Join) and req.member == ipc.Member(peer.client_id or "",
                                                                  peer.conn_key, quic_id)
    return leg


def test_a_member_is_accepted_once_the_worker_agrees_and_gets_a_window() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 1)
    alice = FakePeer(1, "alice")
    join(hub, worker, alice)
    assert alice.conn.frames(4) == [wire.encode(wire.StreamAccepted())]
    assert alice.conn.windows[4] > 0 and alice.core.pending_opens == 0
    assert list(hub.broadcasts["room"].members) == [alice.legs[4]]


def test_a_refused_join_resets_the_stream() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 1)
    alice = FakePeer(1, "alice")
    leg = MemberLeg(alice, 4, 0)  # type: ignore[arg-type]
    alice.legs[4] = leg
    assert alice.core.begin_open()
    hub.join(leg, "room")
    worker.answer(code=wire.Code.TOO_MANY_STREAMS)
    assert alice.conn.resets[4] == wire.Code.TOO_MANY_STREAMS
    assert alice.core.pending_opens == 0 and 4 not in alice.legs


def test_a_bad_name_is_refused_without_asking_the_worker() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 1)
    alice = FakePeer(1, "alice")
    leg = MemberLeg(alice, 4, 0)  # type: ignore[arg-type]
    assert alice.core.begin_open()
    hub.join(leg, "")
    assert worker.requests == [] and alice.conn.resets[4] == wire.Code.PROTOCOL
    assert alice.core.pending_opens == 0


def test_every_member_gets_every_message_tagged_in_one_order() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 1)
    alice, bob = FakePeer(1, "alice"), FakePeer(2, "bob")
    la, lb = join(hub, worker, alice), join(hub, worker, bob)
    la.data(frame(b"one") + frame(b"two")[:3], False)
    lb.data(frame(b"three"), False)
    la.data(frame(b"two")[3:], False)
    want = [wire.sender_tag("alice") + b"one", wire.sender_tag("bob") + b"three",
            wire.sender_tag("alice") + b"two"]
    accepted = wire.encode(wire.StreamAccepted())
    assert alice.conn.frames(4) == [accepted, *want]
    assert bob.conn.frames(4) == [accepted, *want]
    assert hub.messages_forwarded == 3 and hub.deliveries == 6
    assert alice.conn.credit[4] == len(frame(b"one") + frame(b"two"))


def test_a_reader_with_a_smaller_limit_gets_a_notice_instead() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 1)
    alice, small = FakePeer(1, "alice"), FakePeer(2, "small", max_message_size=10)
    la = join(hub, worker, alice)
    join(hub, worker, small)
    la.data(frame(b"x" * 100), False)
    tag = wire.sender_tag("alice")
    assert small.conn.frames(4)[-1] == wire.too_large_notice(100, tag)
    assert alice.conn.frames(4)[-1] == tag + b"x" * 100


def test_a_message_over_the_senders_limit_resets_it_and_it_leaves() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 1)
    alice, bob = FakePeer(1, "alice", max_message_size=10), FakePeer(2, "bob")
    la = join(hub, worker, alice)
    join(hub, worker, bob)
    la.data(frame(b"x" * 11), False)
    assert alice.conn.resets[4] == wire.Code.MESSAGE_TOO_LARGE
    leave = worker.requests[-1][0]
    assert isinstance(leave, ipc.Leave) and leave.sending and leave.receiving


def test_when_every_member_finished_the_readers_streams_end_cleanly() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 1)
    alice, bob = FakePeer(1, "alice"), FakePeer(2, "bob")
    la, lb = join(hub, worker, alice), join(hub, worker, bob)
    la.data(b"", True)
    leave = worker.answer(senders=1, receivers=2)
    assert isinstance(leave, ipc.Leave) and (leave.sending, leave.receiving) == (True, False)
    lb.data(b"", True)
    worker.answer(senders=0, receivers=2, ended="finished")
    assert alice.conn.ended == {4} and bob.conn.ended == {4}
    assert "room" not in hub.broadcasts


def test_rebuild_lists_the_broadcasts_of_one_shard() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 2)
    alice = FakePeer(1, "alice")
    names = ["a", "b", "c", "d", "e"]
    for i, name in enumerate(names):
        join(hub, worker, alice, name, quic_id=4 * (i + 1))
    shards = [[b.name for b in hub.rebuild(k, 9).broadcasts] for k in range(2)]
    assert sorted(shards[0] + shards[1]) == names
    assert all(ipc.shard_of(n, 2) == k for k in range(2) for n in shards[k])


def test_each_member_counts_what_it_sent_and_what_it_was_given() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 1)
    alice, bob = FakePeer(1, "alice"), FakePeer(2, "bob")
    la, lb = join(hub, worker, alice), join(hub, worker, bob)
    la.data(frame(b"one") + frame(b"two"), False)
    lb.data(frame(b"three"), False)
    tagged = [len(frame(wire.sender_tag(who) + m)) for who, m in (
        ("alice", b"one"), ("alice", b"two"), ("bob", b"three"))]
    assert la.figures() == (len(frame(b"one") + frame(b"two")), 2, sum(tagged), 3)
    assert lb.figures() == (len(frame(b"three")), 1, sum(tagged), 3)


def test_a_reader_over_the_high_watermark_pauses_the_senders_once() -> None:
    worker = Worker()
    hub = BroadcastHub(worker, 1)
    alice, bob, carol = FakePeer(1, "alice"), FakePeer(2, "bob"), FakePeer(3, "carol")
    la, lb, lc = (join(hub, worker, p) for p in (alice, bob, carol))
    backlog = {2: 0, 3: 0}
    bob.conn.unsent = lambda q: backlog[2]  # type: ignore[method-assign]
    carol.conn.unsent = lambda q: backlog[3]  # type: ignore[method-assign]
    la.data(frame(b"x"), False)
    assert (hub.writers_paused, hub.writers_resumed) == (0, 0)
    backlog[2] = backlog[3] = BROADCAST_HIGH_WATER + 1
    la.data(frame(b"y"), False)  # both fall behind: the broadcast pauses once
    assert (hub.writers_paused, hub.writers_resumed) == (1, 0)
    backlog[2] = 0
    lb.on_drain()  # one caught up, the other still holds everyone back
    assert (hub.writers_paused, hub.writers_resumed) == (1, 0)
    backlog[3] = BROADCAST_LOW_WATER
    lc.on_drain()
    assert (hub.writers_paused, hub.writers_resumed) == (1, 1)
