"""Proxied streams at the front-end (coord/proxy.py) with stand-in connections
and a stand-in routing worker: headers, refusals, bounds, splicing, relaying."""

from __future__ import annotations

from collections.abc import Callable

from conec_actors import wire
from conec_actors.coord import ipc
from conec_actors.coord.fanout import BroadcastHub
from conec_actors.coord.pairing import MAX_STREAMS_PER_PAIR
from conec_actors.coord.proxy import PAUSE_MARK, HeaderLeg, ProxiedLeg, Relay
from conec_actors.coord.session import MAX_PENDING_OPENS
from conec_actors.framing import frame
from conec_actors.stream_state import HEADER_FRAME_MAX

from .test_fanout import FakeConn, FakePeer


class Quic:
    def __init__(self) -> None:
        self.room = True

    def can_open_stream(self) -> bool:
        return self.room


class Conn(FakeConn):
    def __init__(self) -> None:
        super().__init__()
        self.quic = Quic()
        self.next_sid = 3  # server-initiated bidirectional streams: 3, 7, ...
        self.watching: dict[int, object] = {}
        self.on_room: Callable[[], None] | None = None

    def new_stream_id(self) -> int:
        self.next_sid += 4
        return self.next_sid - 4

    def watch_drain(self, quic_id: int, cb: object) -> None:
        self.watching[quic_id] = cb

    def unwatch_drain(self, quic_id: int) -> None:
        self.watching.pop(quic_id, None)

    def on_stream_room(self, cb: Callable[[], None] | None) -> None:
        self.on_room = cb


class Peer(FakePeer):
    conn: Conn

    def __init__(self, key: int, client_id: str, max_message_size: int = 1 << 20) -> None:
        super().__init__(key, client_id, max_message_size)
        self.conn = Conn()


class Setup:
    def __init__(self) -> None:
        self.peers: dict[int, Peer] = {}
        self.lookups: list[tuple[ipc.ToWorker, ipc.ReplyCallback | None]] = []
        self.relay = Relay(self.peers.get, BroadcastHub(self._no_broadcasts, 1),  # type: ignore[arg-type]
                           self._route)

    @staticmethod
    def _no_broadcasts(name: str, make: ipc.MakeRequest, cb: ipc.ReplyCallback) -> None:
        raise AssertionError("no broadcast here")

    def _route(self, client_id: str, make: ipc.MakeRequest,
               cb: ipc.ReplyCallback | None) -> None:
        self.lookups.append((make(len(self.lookups) + 1), cb))

    def peer(self, key: int, client_id: str, **kw: int) -> Peer:
        p = self.peers[key] = Peer(key, client_id, **kw)
        return p

    def open(self, opener: Peer, dst: str, n: int, quic_id: int, data: bytes = b"") -> None:
        leg = HeaderLeg(opener, quic_id, self.relay)  # type: ignore[arg-type]
        opener.legs[quic_id] = leg
        leg.data(frame(wire.encode(wire.StreamHeader("proxied", dst, n))) + data, False)

    def route_all(self) -> None:
        """The routing worker answers every lookup from the peers it knows."""
        while self.lookups:
            msg, cb = self.lookups.pop(0)
            assert isinstance(msg, ipc.Lookup) and cb is not None
            found = [p for p in self.peers.values() if p.client_id == msg.dst]
            cb(ipc.Reply(msg.req, 0, found[0].core.entry()) if found
               else ipc.Reply(msg.req, wire.Code.NO_SUCH_PEER))


def test_a_stream_is_spliced_once_routed_and_data_flows_with_credit() -> None:
    st = Setup()
    alice, bob = st.peer(1, "alice"), st.peer(2, "bob", max_message_size=1000)
    st.open(alice, "bob", 0, 4, frame(b"early"))
    assert isinstance(alice.legs[4], ProxiedLeg) and alice.core.pending_opens == 1
    st.route_all()
    assert alice.core.pending_opens == 0
    (header, early) = bob.conn.frames(3)
    assert wire.decode(header) == wire.StreamHeader("proxied", "alice", 0,
                                                    max_message_size=1000)
    assert early == b"early"
    assert alice.conn.frames(4) == [wire.encode(wire.StreamAccepted(1000))]
    alice.legs[4].data(frame(b"more"), True)
    assert bob.conn.frames(3)[-1] == b"more" and 3 in bob.conn.ended
    assert st.relay.messages_forwarded == 2 and st.relay.streams_opened == 1


def test_nobody_there_resets_the_stream() -> None:
    st = Setup()
    alice = st.peer(1, "alice")
    st.open(alice, "nobody", 0, 4)
    st.route_all()
    assert alice.conn.resets[4] == wire.Code.NO_SUCH_PEER and 4 not in alice.legs
    assert alice.core.pending_opens == 0


def test_bad_headers_reset_the_stream() -> None:
    st = Setup()
    alice = st.peer(1, "alice")
    too_long = HeaderLeg(alice, 4, st.relay)  # type: ignore[arg-type]
    too_long.data((HEADER_FRAME_MAX + 1).to_bytes(4, "big"), False)
    cut = HeaderLeg(alice, 8, st.relay)  # type: ignore[arg-type]
    cut.data(frame(b"xy")[:4], True)
    direct = HeaderLeg(alice, 12, st.relay)  # type: ignore[arg-type]
    direct.data(frame(wire.encode(wire.StreamHeader("direct", "bob", 0))), False)
    assert alice.conn.resets == {4: wire.Code.PROTOCOL, 8: wire.Code.PROTOCOL,
                                 12: wire.Code.PROTOCOL}
    assert st.lookups == []


def test_a_stream_number_is_used_once() -> None:
    st = Setup()
    alice = st.peer(1, "alice")
    st.open(alice, "bob", 5, 4)
    st.open(alice, "bob", 5, 8)
    assert alice.conn.resets == {8: wire.Code.STREAM_ID_IN_USE}
    st.open(alice, "bob", 2**62, 12)
    assert alice.conn.resets[12] == wire.Code.PROTOCOL


def test_pending_opens_are_bounded() -> None:
    st = Setup()
    alice = st.peer(1, "alice")
    for i in range(MAX_PENDING_OPENS + 1):
        st.open(alice, "bob", i, 4 * (i + 1))
    assert len(st.lookups) == MAX_PENDING_OPENS
    assert alice.conn.resets == {4 * (MAX_PENDING_OPENS + 1): wire.Code.TOO_MANY_STREAMS}


def test_opens_beyond_the_pairs_slots_wait_unseen_until_one_ends() -> None:
    st = Setup()
    alice, bob = st.peer(1, "alice"), st.peer(2, "bob")
    for i in range(MAX_STREAMS_PER_PAIR + 1):
        st.open(alice, "bob", i, 4 * (i + 1))
    st.route_all()
    assert len(bob.legs) == MAX_STREAMS_PER_PAIR and alice.core.pending_opens == 1
    waiting = alice.legs[4 * (MAX_STREAMS_PER_PAIR + 1)]
    assert 4 * (MAX_STREAMS_PER_PAIR + 1) not in alice.conn.sent  # not accepted yet
    first = bob.legs[3]
    first.data(b"", True)  # bob finishes the first stream ...
    alice.legs[4].data(b"", True)  # ... and so does alice: it is over
    assert alice.core.pending_opens == 0 and isinstance(waiting, ProxiedLeg)
    assert waiting.other is not None and len(bob.legs) == MAX_STREAMS_PER_PAIR


def test_opens_wait_for_room_in_the_targets_stream_limit() -> None:
    st = Setup()
    alice, bob = st.peer(1, "alice"), st.peer(2, "bob")
    bob.conn.quic.room = False
    st.open(alice, "bob", 0, 4)
    st.route_all()
    assert bob.legs == {} and bob.conn.on_room is not None
    bob.conn.quic.room = True
    room, bob.conn.on_room = bob.conn.on_room, None  # what Conn does once there is room
    room()
    assert len(bob.legs) == 1 and bob.conn.on_room is None


def test_a_target_that_leaves_fails_the_opens_waiting_for_it() -> None:
    st = Setup()
    alice, bob = st.peer(1, "alice"), st.peer(2, "bob")
    bob.conn.quic.room = False
    st.open(alice, "bob", 0, 4)
    st.route_all()
    st.relay.target_gone(bob)  # type: ignore[arg-type]
    assert alice.conn.resets[4] == wire.Code.NO_SUCH_PEER and alice.core.pending_opens == 0


def test_a_message_over_the_streams_limit_resets_both_legs() -> None:
    st = Setup()
    alice, bob = st.peer(1, "alice"), st.peer(2, "bob", max_message_size=10)
    st.open(alice, "bob", 0, 4)
    st.route_all()
    alice.legs[4].data(frame(b"x" * 11), False)
    assert alice.conn.resets[4] == wire.Code.MESSAGE_TOO_LARGE
    assert bob.conn.resets[3] == wire.Code.MESSAGE_TOO_LARGE
    assert alice.legs == {} and bob.legs == {}


def test_a_writer_is_paused_while_its_reader_holds_much_unsent_then_resumed() -> None:
    st = Setup()
    alice, bob = st.peer(1, "alice"), st.peer(2, "bob")
    st.open(alice, "bob", 0, 4)
    st.route_all()
    leg = alice.legs[4]
    assert isinstance(leg, ProxiedLeg)
    backlog = [0]
    bob.conn.unsent = lambda q: backlog[0]  # type: ignore[method-assign]
    leg.data(frame(b"a"), False)
    backlog[0] = 10  # a little unsent is no pause
    leg.data(frame(b"b"), False)
    assert (st.relay.writers_paused, st.relay.writers_resumed) == (0, 0)
    backlog[0] = PAUSE_MARK + 1
    leg.data(frame(b"c"), False)
    leg.data(frame(b"d"), False)
    assert (st.relay.writers_paused, st.relay.writers_resumed) == (1, 0)
    backlog[0] = 10
    leg.credit()  # draining, not drained
    assert st.relay.writers_resumed == 0
    backlog[0] = 0
    bob.conn.watching[3]()  # type: ignore[operator]  # drained: the watch fires
    assert (st.relay.writers_paused, st.relay.writers_resumed) == (1, 1)
    assert 3 not in bob.conn.watching


def test_each_end_counts_what_it_sent_and_keeps_it_when_the_stream_is_over() -> None:
    st = Setup()
    alice, bob = st.peer(1, "alice"), st.peer(2, "bob")
    st.open(alice, "bob", 0, 4, frame(b"early"))
    st.route_all()
    a_leg, b_leg = alice.legs[4], bob.legs[3]
    a_leg.data(frame(b"more") + frame(b""), False)
    b_leg.data(frame(b"reply"), False)
    sent = len(frame(b"early") + frame(b"more") + frame(b""))
    assert a_leg.figures() == (sent, 3, len(frame(b"reply")), 1)
    assert b_leg.figures() == (len(frame(b"reply")), 1, sent, 3)
    a_leg.data(b"", True)
    b_leg.data(b"", True)
    assert alice.legs == {} and bob.legs == {}
    assert (alice.core.bytes_in, alice.core.messages_in, alice.core.bytes_out,
            alice.core.messages_out) == (sent, 3, len(frame(b"reply")), 1)
    assert (bob.core.messages_in, bob.core.messages_out) == (1, 3)
