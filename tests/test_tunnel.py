"""Streams tunnelled between front-end shards (coord/tunnel.py), without
shards: `shard_wire` messages in, messages and connection calls out.

Shard 0 is "here" unless a test says otherwise; connection keys name their
home shard (`key % count`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from conec_actors import wire
from conec_actors.coord import shard_wire as sw
from conec_actors.coord.legs import Leg, Peer
from conec_actors.coord.session import Limits, SessionCore, State
from conec_actors.coord.tunnel import RemoteConn, RemoteSession, TunnelLeg, Tunnels
from conec_actors.ids import stable_hash

GONE = wire.Code.PEER_GONE


class Sent(list[tuple[int, sw.ShardMsg]]):
    """What a module sent to other shards, as (shard, message)."""

    def __call__(self, shard: int, msg: sw.ShardMsg) -> None:
        self.append((shard, msg))

    def take(self) -> list[tuple[int, sw.ShardMsg]]:
        out = list(self)
        self.clear()
        return out


class Conn:
    """A client connection: records the calls the legs make of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.pending: dict[int, int] = {}  # unsent, per stream
        self.watching: dict[int, Callable[[], None]] = {}
        self.closed = False

    def send(self, quic_id: int, data: bytes, end: bool = False) -> None:
        self.calls.append(("send", quic_id, data, end))

    def consume_to(self, quic_id: int, offset: int) -> None:
        self.calls.append(("consume_to", quic_id, offset))

    def set_stream_window(self, quic_id: int, window: int) -> None:
        self.calls.append(("window", quic_id, window))

    def reset(self, quic_id: int, code: int) -> None:
        self.calls.append(("reset", quic_id, code))

    def stop(self, quic_id: int, code: int) -> None:
        self.calls.append(("stop", quic_id, code))

    def forget_stream(self, quic_id: int) -> None:
        self.calls.append(("forget_stream", quic_id))

    def unsent(self, quic_id: int) -> int:
        return self.pending.get(quic_id, 0)

    def watch_drain(self, quic_id: int, cb: Callable[[], None]) -> None:
        self.watching[quic_id] = cb

    def unwatch_drain(self, quic_id: int) -> None:
        self.watching.pop(quic_id, None)

    def take(self) -> list[tuple[object, ...]]:
        out = list(self.calls)
        self.calls.clear()
        return out


class Session:
    """A local client's session in state ready, as its legs see it."""

    def __init__(self, key: int, client_id: str) -> None:
        self.conn = Conn()
        self.core = SessionCore(key, ("192.0.2.1", 4000), Limits(1 << 20, 1200, 30.0),
                                lambda _: None)
        self.core.state = State.READY
        self.core.client_id = client_id
        self.legs: dict[int, Leg] = {}

    @property
    def conn_key(self) -> int:
        return self.core.conn_key

    @property
    def client_id(self) -> str | None:
        return self.core.client_id

    @property
    def max_message_size(self) -> int:
        return 1 << 20


class Recorder(Leg):
    """A far leg that records what reaches it."""

    __slots__ = ("seen",)

    def __init__(self, session: Peer, quic_id: int, base: int = 0) -> None:
        super().__init__(session, quic_id, base)
        self.seen: list[tuple[object, ...]] = []

    def data(self, data: bytes, fin: bool) -> None:
        self.seen.append(("data", data, fin))

    def reset(self, code: int) -> None:
        self.seen.append(("reset", code))

    def stopped(self, code: int) -> None:
        self.seen.append(("stopped", code))

    def session_gone(self) -> None:
        self.seen.append(("gone",))


class Opener:
    """Opens a `Recorder` for every far stream, and records the call."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def open_member(self, s: Peer, quic_id: int, base: int, name: str) -> object:
        self.calls.append(("member", s, quic_id, base, name))
        leg = s.legs[quic_id] = Recorder(s, quic_id, base)
        return leg

    def open_from_remote(self, s: Peer, msg: sw.Open) -> None:
        self.calls.append(("proxied", s, msg))
        s.legs[msg.stream] = Recorder(s, msg.stream, msg.base)


class Shard:
    """One shard's `Tunnels` (index `index` of `count`) and its local sessions."""

    def __init__(self, index: int = 0, count: int = 3) -> None:
        self.sent = Sent()
        self.sessions: dict[int, Session] = {}
        self.opener = Opener()
        self.tunnels = Tunnels(cast("dict[int, Peer]", self.sessions), self.opener, index,
                               count, self.sent)

    def session(self, key: int, client_id: str) -> Session:
        assert key % self.tunnels.count == self.tunnels.index
        s = self.sessions[key] = Session(key, client_id)
        return s

    def carry(self, s: Session, quic_id: int, far: int, pending: list[bytes] | None = None,
              fin: bool = False) -> TunnelLeg:
        open_ = proxied_open(s.conn_key, quic_id, s.client_id or "")
        return self.tunnels.carry(cast(Peer, s), quic_id, 5, far, open_, pending or [], fin)

    def far_open(self, home: int, key: int, quic_id: int, **kw: str) -> RemoteSession:
        self.tunnels.deliver(home, [proxied_open(key, quic_id, "alice", **kw)])
        return self.tunnels.remote[key]


def proxied_open(key: int, quic_id: int, client_id: str, kind: str = "proxied",
                 broadcast: str = "") -> sw.Open:
    return sw.Open(key, quic_id, client_id, 1000, 5, kind, 1, "p", 31, "bob", broadcast)


def msgs(sent: list[tuple[int, sw.ShardMsg]]) -> list[sw.ShardMsg]:
    return [m for _, m in sent]


# -- RemoteConn / RemoteCore: the far shard's stand-in for a home shard's client ----

KEY = 7  # homed at shard 1 of 3


def remote() -> tuple[RemoteSession, Sent]:
    sent = Sent()
    return RemoteSession(1, KEY, "alice", 1000, sent), sent


def test_a_remote_session_stands_for_the_client_of_its_home_shard() -> None:
    rs, sent = remote()
    assert (rs.conn_key, rs.client_id, rs.max_message_size) == (KEY, "alice", 1000)
    assert (rs.conn.home, rs.conn.conn) == (1, KEY)
    assert rs.core.state is State.READY and rs.core.client_id == "alice"
    assert rs.legs == {} and sent == []


def test_writes_go_home_as_data_and_count_as_unsent_until_drained() -> None:
    rs, sent = remote()
    c = rs.conn
    c.send(4, b"abc")
    c.send(4, b"de", end=True)
    c.send(8, b"x")
    assert sent.take() == [(1, sw.Data(KEY, 4, b"abc", False)),
                           (1, sw.Data(KEY, 4, b"de", True)), (1, sw.Data(KEY, 8, b"x"))]
    assert (c.unsent(4), c.unsent(8), c.unsent(12)) == (5, 1, 0)
    c.drained(4, 3)
    assert (c.unsent(4), c.unsent(8)) == (2, 1)
    c.drained(4, 5)
    assert c.unsent(4) == 0
    assert sent == []  # drain reports are not answered


def test_a_drain_report_calls_the_streams_watcher_until_unwatched() -> None:
    rs, _ = remote()
    c = rs.conn
    calls: list[str] = []
    c.watch_drain(4, lambda: calls.append("4"))
    c.watch_drain(8, lambda: calls.append("8"))
    c.send(4, b"abcd")
    c.drained(4, 2)
    assert calls == ["4"]
    c.unwatch_drain(4)
    c.unwatch_drain(4)  # twice is fine
    c.drained(4, 4)
    c.drained(8, 0)
    assert calls == ["4", "8"]


def test_credit_goes_home_only_when_it_grows_per_stream() -> None:
    rs, sent = remote()
    c = rs.conn
    c.consume_to(4, 0)  # nothing to credit yet
    c.consume_to(4, 10)
    c.consume_to(4, 10)
    c.consume_to(4, 7)
    c.consume_to(8, 3)
    c.consume_to(4, 11)
    assert msgs(sent) == [sw.Consumed(KEY, 4, 10), sw.Consumed(KEY, 8, 3),
                          sw.Consumed(KEY, 4, 11)]


def test_window_reset_and_stop_go_home() -> None:
    rs, sent = remote()
    rs.conn.set_stream_window(4, 4096)
    rs.conn.reset(4, 17)
    rs.conn.stop(8, 18)
    assert msgs(sent) == [sw.Window(KEY, 4, 4096), sw.Reset(KEY, 4, 17), sw.Stop(KEY, 8, 18)]


def test_a_forgotten_stream_goes_home_once_with_its_figures() -> None:
    rs, sent = remote()
    c = rs.conn
    calls: list[int] = []
    c.send(4, b"abcd")
    c.consume_to(4, 9)
    c.watch_drain(4, lambda: calls.append(1))
    sent.clear()
    # What a leg does once both directions are over (`Leg.forget_if_done`).
    c.forget_stream(4)
    rs.core.stream_over(10, 2, 4, 1)
    assert msgs(sent) == [sw.Forget(KEY, 4, 10, 2, 4, 1)]
    assert c.unsent(4) == 0
    c.drained(4, 4)
    assert calls == []  # its watcher went with it


def test_a_leg_ending_both_ways_on_a_remote_session_tells_the_home_shard() -> None:
    rs, sent = remote()
    leg = rs.legs[4] = Leg(cast(Peer, rs), 4)
    leg.end_both(21)
    assert msgs(sent) == [sw.Stop(KEY, 4, 21), sw.Reset(KEY, 4, 21),
                          sw.Forget(KEY, 4, 0, 0, 0, 0)]
    assert rs.legs == {}


def test_a_settled_open_goes_home_while_the_client_is_there() -> None:
    rs, sent = remote()
    rs.core.open_settled()
    assert msgs(sent.take()) == [sw.Settled(KEY)]
    rs.core.state = State.CLOSED
    rs.core.open_settled()
    assert sent == []


def test_a_closed_remote_connection_says_nothing() -> None:
    rs, sent = remote()
    c = rs.conn
    c.closed = True
    c.send(4, b"abc", end=True)
    c.consume_to(4, 10)
    c.set_stream_window(4, 10)
    c.reset(4, 1)
    c.stop(4, 1)
    c.forget_stream(4)
    rs.core.stream_over(1, 1, 1, 1)
    assert sent == []
    assert c.unsent(4) == 0


def test_remote_conn_is_what_proxied_legs_use() -> None:
    # A RemoteSession passes for a `legs.Peer` (ProxiedLeg reads `conn.closed`).
    rs, _ = remote()
    assert isinstance(rs.conn, RemoteConn) and rs.conn.closed is False


# -- TunnelLeg: the home shard's leg, moving bytes ------------------------------------

def test_carrying_a_stream_opens_it_at_the_far_shard_with_what_came_before() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2, pending=[b"ab", b"cd"])
    assert s.legs == {0: leg} and (leg.far, leg.base) == (2, 5)
    assert sh.sent.take() == [(2, proxied_open(3, 0, "alice")), (2, sw.Data(3, 0, b"abcd"))]
    leg = sh.carry(s, 4, far=1)
    assert sh.sent.take() == [(1, proxied_open(3, 4, "alice"))]  # no empty Data
    sh.carry(s, 8, far=1, fin=True)
    assert msgs(sh.sent.take()) == [proxied_open(3, 8, "alice"), sw.Data(3, 8, b"", True)]
    assert leg.in_done is False


def test_client_data_goes_to_the_far_shard_until_its_fin() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    sh.sent.clear()
    leg.data(b"hello", False)
    leg.data(b"", True)
    leg.data(b"late", False)
    leg.data(b"", True)
    leg.reset(9)  # its input is over already
    assert sh.sent.take() == [(2, sw.Data(3, 0, b"hello")), (2, sw.Data(3, 0, b"", True))]
    assert leg.in_done and s.legs == {0: leg}  # kept until the far shard forgets it


def test_a_client_reset_or_stop_goes_to_the_far_shard_once() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    s.conn.watching[0] = leg.report
    sh.sent.clear()
    leg.reset(9)
    leg.reset(9)
    leg.data(b"x", True)
    leg.stopped(10)
    leg.stopped(10)
    assert msgs(sh.sent.take()) == [sw.Reset(3, 0, 9), sw.Stop(3, 0, 10)]
    assert 0 not in s.conn.watching
    assert s.legs == {0: leg}
    leg.write(b"after stop", False)  # nobody reads it any more
    assert s.conn.calls == [] and sh.sent == []


def test_far_writes_are_reported_drained_only_as_the_client_takes_them() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    sh.sent.clear()
    c = s.conn
    c.pending[0] = 5  # the write waits in the send buffer
    leg.write(b"hello", False)
    assert c.take() == [("send", 0, b"hello", False)]
    assert sh.sent == []  # nothing left the buffer: no report
    assert c.watching[0] == leg.report
    c.pending[0] = 2
    c.watching[0]()
    assert msgs(sh.sent.take()) == [sw.Drained(3, 0, 3)]
    c.watching[0]()  # no change: no report
    assert sh.sent == []
    c.pending[0] = 0
    c.watching[0]()
    assert msgs(sh.sent.take()) == [sw.Drained(3, 0, 5)]
    assert 0 not in c.watching


def test_a_write_sent_at_once_is_reported_at_once_and_the_fin_ends_output() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    sh.sent.clear()
    leg.write(b"abc", False)
    leg.write(b"de", True)
    leg.write(b"late", False)
    assert s.conn.take() == [("send", 0, b"abc", False), ("send", 0, b"de", True)]
    assert msgs(sh.sent) == [sw.Drained(3, 0, 3), sw.Drained(3, 0, 5)]
    assert leg.out_done and s.conn.watching == {}


def test_writes_to_a_closed_connection_count_as_drained() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    sh.sent.clear()
    s.conn.closed = True
    s.conn.pending[0] = 4  # what a closed connection still holds never leaves
    leg.write(b"abcd", False)
    assert msgs(sh.sent) == [sw.Drained(3, 0, 4)]
    assert s.conn.watching == {}


def test_forgetting_removes_the_leg_and_keeps_the_far_shards_figures() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    s.conn.watching[0] = leg.report
    leg.forget((10, 2, 30, 4))
    assert s.legs == {} and leg.in_done and leg.out_done
    assert s.conn.take() == [("forget_stream", 0)] and s.conn.watching == {}
    assert (s.core.bytes_in, s.core.messages_in, s.core.bytes_out,
            s.core.messages_out) == (10, 2, 30, 4)
    leg.forget((10, 2, 30, 4))  # counted once
    assert s.core.bytes_in == 10 and s.conn.calls == []


def test_cutting_ends_both_ways_as_a_peer_gone() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    sh.sent.clear()
    leg.cut()
    assert s.conn.take() == [("stop", 0, GONE), ("reset", 0, GONE), ("forget_stream", 0)]
    assert s.legs == {} and sh.sent == []  # the far shard is gone: nothing to say


# -- Tunnels.deliver: the home side ----------------------------------------------------

def test_the_far_shards_messages_act_on_the_home_clients_stream() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    sh.carry(s, 0, far=2)
    sh.sent.clear()
    sh.tunnels.deliver(2, [sw.Data(3, 0, b"hi"), sw.Consumed(3, 0, 40),
                           sw.Window(3, 0, 8192), sw.Stop(3, 0, 11)])
    assert s.conn.take() == [("send", 0, b"hi", False), ("consume_to", 0, 40),
                             ("window", 0, 8192), ("stop", 0, 11)]
    assert msgs(sh.sent.take()) == [sw.Drained(3, 0, 2)]
    sh.tunnels.deliver(2, [sw.Reset(3, 0, 12)])
    assert s.conn.take()[0] == ("reset", 0, 12)
    sh.tunnels.deliver(2, [sw.Forget(3, 0, 1, 2, 3, 4)])
    assert s.legs == {}
    assert (s.core.bytes_in, s.core.messages_out) == (1, 4)


def test_a_reset_from_the_far_shard_keeps_the_leg_for_its_figures() -> None:
    # The far leg resets the client's stream, then forgets it: Reset, then
    # Forget. The client's stream was over both ways at the Reset already,
    # but its figures come with the Forget.
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    leg.data(b"abc", True)
    sh.tunnels.deliver(2, [sw.Reset(3, 0, 12)])
    assert s.legs == {0: leg}
    sh.tunnels.deliver(2, [sw.Forget(3, 0, 3, 1, 0, 0)])
    assert s.legs == {}
    assert (s.core.bytes_in, s.core.messages_in) == (3, 1)
    assert s.conn.take() == [("reset", 0, 12), ("forget_stream", 0)]


def test_a_stop_from_the_far_shard_keeps_the_leg_for_its_figures() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    sh.tunnels.deliver(2, [sw.Data(3, 0, b"xy", True), sw.Stop(3, 0, 13)])
    assert s.legs == {0: leg}
    sh.tunnels.deliver(2, [sw.Forget(3, 0, 0, 0, 2, 1)])
    assert s.legs == {} and (s.core.bytes_out, s.core.messages_out) == (2, 1)


def test_a_settled_open_is_counted_by_the_home_session() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    assert s.core.begin_open()
    sh.tunnels.deliver(2, [sw.Settled(3)])
    assert s.core.pending_opens == 0


def test_the_home_side_ignores_what_is_not_for_a_tunnelled_stream_here() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    leg = sh.carry(s, 0, far=2)
    s.legs[4] = Recorder(cast(Peer, s), 4)  # a stream not tunnelled
    sh.sent.clear()
    sh.tunnels.deliver(2, [
        sw.Data(6, 0, b"no such connection"), sw.Settled(6),
        sw.Data(3, 8, b"no such stream"), sw.Reset(3, 8, 1),
        sw.Data(3, 4, b"not a tunnel"), sw.Stop(3, 4, 1), sw.Forget(3, 4),
        # only ever sent to the far side:
        sw.Drained(3, 0, 5), sw.Gone(3), proxied_open(3, 0, "alice"),
    ])
    assert s.conn.calls == [] and sh.sent == [] and sh.opener.calls == []
    assert s.legs[4].seen == [] and s.legs[0] is leg  # type: ignore[attr-defined]
    assert sh.tunnels.remote == {}


def test_session_gone_tells_each_far_shard_used_once() -> None:
    sh = Shard(count=4)
    s = sh.session(4, "alice")
    other = sh.session(8, "bob")
    sh.carry(s, 0, far=2)
    sh.carry(s, 4, far=2)
    sh.carry(s, 8, far=3)
    sh.sent.clear()
    sh.tunnels.session_gone(cast(Peer, s))
    assert sorted(sh.sent.take(), key=lambda x: x[0]) == [(2, sw.Gone(4)), (3, sw.Gone(4))]
    sh.tunnels.session_gone(cast(Peer, s))
    sh.tunnels.session_gone(cast(Peer, other))  # never tunnelled
    assert sh.sent == []


# -- Tunnels.deliver: the far side -----------------------------------------------------

def test_an_open_makes_one_remote_session_per_connection() -> None:
    sh = Shard()
    rs = sh.far_open(1, 7, 0)
    assert (rs.conn.home, rs.conn_key, rs.client_id, rs.max_message_size) == (1, 7, "alice",
                                                                              1000)
    assert sh.opener.calls == [("proxied", rs, proxied_open(7, 0, "alice"))]
    assert sh.far_open(1, 7, 4) is rs
    assert set(rs.legs) == {0, 4}
    sh.far_open(2, 5, 0)
    assert set(sh.tunnels.remote) == {7, 5} and sh.tunnels.remote[5].conn.home == 2
    assert sh.sent == []


def test_a_broadcast_open_joins_the_member_here() -> None:
    sh = Shard()
    rs = sh.far_open(1, 7, 0, kind="broadcast", broadcast="news")
    assert sh.opener.calls == [("member", rs, 0, 5, "news")]
    assert isinstance(rs.legs[0], Recorder)


def test_the_home_shards_messages_reach_the_far_leg() -> None:
    sh = Shard()
    rs = sh.far_open(1, 7, 0)
    leg = cast(Recorder, rs.legs[0])
    seen: list[int] = []
    rs.conn.send(0, b"abcdef")
    rs.conn.watch_drain(0, lambda: seen.append(rs.conn.unsent(0)))
    sh.tunnels.deliver(1, [sw.Data(7, 0, b"hi"), sw.Drained(7, 0, 4), sw.Reset(7, 0, 3),
                           sw.Stop(7, 0, 4), sw.Data(7, 0, b"", True)])
    assert leg.seen == [("data", b"hi", False), ("reset", 3), ("stopped", 4),
                        ("data", b"", True)]
    assert seen == [2]


def test_the_far_side_ignores_what_is_not_for_a_stream_here() -> None:
    sh = Shard()
    rs = sh.far_open(1, 7, 0)
    leg = cast(Recorder, rs.legs[0])
    sh.sent.clear()
    sh.tunnels.deliver(1, [
        sw.Data(10, 0, b"no such remote session"), sw.Gone(10),
        sw.Data(7, 4, b"no such stream"), sw.Drained(7, 4, 1),
        # only ever sent to the home side:
        sw.Consumed(7, 0, 5), sw.Window(7, 0, 5), sw.Forget(7, 0), sw.Settled(7),
    ])
    assert leg.seen == [] and sh.sent == [] and rs.conn.unsent(4) == 0
    assert sh.tunnels.remote == {7: rs}


def test_gone_ends_the_remote_sessions_legs_and_silences_it() -> None:
    sh = Shard()
    rs = sh.far_open(1, 7, 0)
    sh.far_open(1, 7, 4)
    legs = [cast(Recorder, leg) for leg in rs.legs.values()]
    other = sh.far_open(1, 10, 0)
    sh.tunnels.deliver(1, [sw.Gone(7)])
    assert [leg.seen for leg in legs] == [[("gone",)], [("gone",)]]
    assert rs.legs == {} and rs.conn.closed and rs.core.state is State.CLOSED
    assert sh.tunnels.remote == {10: other}
    rs.conn.send(0, b"to nobody")
    rs.core.open_settled()
    sh.tunnels.deliver(1, [sw.Gone(7), sw.Data(7, 0, b"late")])
    assert sh.sent == [] and [leg.seen for leg in legs] == [[("gone",)], [("gone",)]]
    sh.far_open(1, 7, 8)  # the same key again: a new session
    assert sh.tunnels.remote[7] is not rs


# -- Tunnels: control messages, placement, shards that die -----------------------------

def test_control_messages_go_to_the_control_plane_in_order() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    sh.carry(s, 0, far=2)
    got: list[tuple[int, sw.ControlMsg]] = []
    sh.tunnels.deliver(2, [sw.Load("x", 1, 2)])  # no control plane yet: dropped
    sh.tunnels.control = lambda shard, msg: got.append((shard, msg))
    ctl: list[sw.ShardMsg] = [
        sw.Control(3, b"m"), sw.Offer(3, "alice", 5, b"o"), sw.NoPeer(5), sw.Answer(5, 3, 0),
        sw.WatchAsk(3, 1, "bob"), sw.WatchState(3, 1, "bob", True),
        sw.GroupOp(3, "alice", "join", "g", 2), sw.Load("alice", 1, 2),
        sw.Left(3, "alice", "left"), sw.Replace(3)]
    sh.tunnels.deliver(2, [ctl[0], sw.Data(3, 0, b"x"), *ctl[1:]])
    assert got == [(2, m) for m in ctl]
    assert s.conn.take() == [("send", 0, b"x", False)]


def test_streams_are_placed_by_connection_and_broadcast() -> None:
    t = Shard(index=1, count=3).tunnels
    assert [t.shard_of_key(k) for k in (0, 1, 2, 3, 7)] == [0, 1, 2, 0, 1]
    assert t.home_of("news") == stable_hash("news") % 3
    assert {t.home_of(f"b{i}") for i in range(30)} == {0, 1, 2}


def test_a_dead_shard_ends_its_clients_streams_here_and_ours_carried_there() -> None:
    sh = Shard()
    s = sh.session(3, "alice")
    cut = sh.carry(s, 0, far=1)
    kept = sh.carry(s, 4, far=2)
    dead = sh.far_open(1, 7, 0)
    dead_leg = cast(Recorder, dead.legs[0])
    alive = sh.far_open(2, 5, 0)
    sh.sent.clear()
    s.conn.calls.clear()
    sh.tunnels.shard_down(1)
    assert dead_leg.seen == [("gone",)] and dead.conn.closed
    assert sh.tunnels.remote == {5: alive} and alive.legs[0].seen == []  # type: ignore[attr-defined]
    assert s.legs == {4: kept} and cut.in_done and cut.out_done
    assert s.conn.take() == [("stop", 0, GONE), ("reset", 0, GONE), ("forget_stream", 0)]
    assert sh.sent == []
    sh.tunnels.shard_down(1)  # once is enough
    assert s.conn.calls == []
    sh.tunnels.session_gone(cast(Peer, s))
    assert sh.sent == [(2, sw.Gone(3))]  # shard 1 is not told


# -- two shards, through the wire --------------------------------------------------------

class Echo(Leg):
    """A far leg that writes back what it reads and credits as it drains."""

    __slots__ = ("read",)

    def __init__(self, session: Peer, quic_id: int, base: int) -> None:
        super().__init__(session, quic_id, base)
        self.read = 0

    def data(self, data: bytes, fin: bool) -> None:
        conn = self.session.conn
        self.read += len(data)
        conn.send(self.quic_id, data, end=fin)
        self.in_done = self.out_done = fin
        self.credit()

    def credit(self) -> None:
        conn = self.session.conn
        conn.consume_to(self.quic_id, self.base + self.read - conn.unsent(self.quic_id))
        if conn.unsent(self.quic_id):
            conn.watch_drain(self.quic_id, self.credit)
        if self.in_done:
            self.forget_if_done()

    def figures(self) -> tuple[int, int, int, int]:
        return (self.read, 1, self.read, 1)


class EchoOpener(Opener):
    def open_from_remote(self, s: Peer, msg: sw.Open) -> None:
        s.legs[msg.stream] = Echo(s, msg.stream, msg.base)


def test_a_stream_tunnelled_between_two_shards_carries_bytes_and_credit() -> None:
    home, far = Shard(0, 2), Shard(1, 2)
    far.tunnels.opener = EchoOpener()

    def pump() -> None:
        # Each shard's batch crosses the wire to the other, until quiet.
        while home.sent or far.sent:
            for src, dst in ((home, far), (far, home)):
                batch = src.sent.take()
                if batch:
                    assert {k for k, _ in batch} == {dst.tunnels.index}
                    dst.tunnels.deliver(src.tunnels.index,
                                        sw.decode(sw.encode([m for _, m in batch])))

    s = home.session(2, "alice")
    leg = home.carry(s, 0, far=1, pending=[b"ping"])
    s.conn.pending[0] = 4  # the echo waits in alice's send buffer
    pump()
    # The header (5 bytes) is credited; "ping" only once its echo left.
    assert s.conn.take() == [("send", 0, b"ping", False), ("consume_to", 0, 5)]
    assert s.conn.watching == {0: leg.report}
    s.conn.pending[0] = 0
    s.conn.watching[0]()
    pump()
    assert s.conn.take() == [("consume_to", 0, 5 + 4)]
    assert s.conn.watching == {}
    leg.data(b"", True)
    pump()
    assert s.conn.take() == [("send", 0, b"", True), ("forget_stream", 0)]
    assert s.legs == {}
    assert (s.core.bytes_in, s.core.messages_in, s.core.bytes_out,
            s.core.messages_out) == (4, 1, 4, 1)
    assert set(far.tunnels.remote) == {2}
    home.tunnels.session_gone(cast(Peer, s))
    pump()
    assert far.tunnels.remote == {}
