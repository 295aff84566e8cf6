"""The control plane between front-end shards (coord/shard_control.py),
without shards: `shard_wire` messages in, messages and host calls out.

The shard under test is index 1 of 3: connection keys, offer ids and group
names name their shard (`key % 3`, `offer % 3`, `stable_hash(name) % 3`)."""

from __future__ import annotations

from collections.abc import Mapping

from conec_actors import wire
from conec_actors.coord import ipc
from conec_actors.coord import shard_wire as sw
from conec_actors.coord.intros import Introductions, Offer
from conec_actors.coord.session import Limits, SessionCore, State
from conec_actors.coord.shard_control import Client, CrossShard
from conec_actors.coord.watches import Reason
from conec_actors.ids import stable_hash

HERE, COUNT = 1, 3


class Session:
    """A local client's session: records the control messages sent to it."""

    def __init__(self, key: int, client_id: str, state: State = State.READY) -> None:
        self.core = SessionCore(key, ("192.0.2.1", 4000), Limits(1 << 20, 1200, 30.0),
                                lambda _: None)
        self.core.state = state
        self.core.client_id = client_id
        self.got: list[wire.Control] = []

    @property
    def client_id(self) -> str | None:
        return self.core.client_id

    def send_control(self, msg: wire.Control) -> None:
        self.got.append(msg)


class Host:
    """A shard's control plane (`ControlPlane`): records the calls made of it."""

    def __init__(self, index: int) -> None:
        self._sessions: dict[int, Client] = {}
        self._by_id: dict[str, Client] = {}
        self._intros = Introductions(index + COUNT, COUNT)  # as ControlPlane's
        self.calls: list[tuple[object, ...]] = []

    def add(self, key: int, client_id: str, state: State = State.READY) -> Session:
        s = Session(key, client_id, state)
        self._sessions[key] = s
        self._by_id[client_id] = s
        return s

    @property
    def sessions(self) -> Mapping[int, Client]:
        return self._sessions

    @property
    def by_id(self) -> Mapping[str, Client]:
        return self._by_id

    @property
    def intros(self) -> Introductions:
        return self._intros

    def intro_failed(self, offer: Offer, code: int, reason: str) -> None:
        self.calls.append(("intro_failed", offer, code, reason))

    def answered(self, offer_id: int, target: int, code: int) -> None:
        self.calls.append(("answered", offer_id, target, code))

    def watch_known(self, watcher: int, req: int, peer: str, connected: bool) -> None:
        self.calls.append(("watch_known", watcher, req, peer, connected))

    def group_op(self, conn: int, member: str, op: str, name: str, req: int) -> None:
        self.calls.append(("group_op", conn, member, op, name, req))

    def load(self, member: str, asks: int, tells: int) -> None:
        self.calls.append(("load", member, asks, tells))

    def gone_elsewhere(self, conn: int, client_id: str, reason: Reason) -> None:
        self.calls.append(("gone_elsewhere", conn, client_id, reason))

    def replace_stale(self, key: int) -> None:
        self.calls.append(("replace_stale", key))


class Setup:
    def __init__(self, index: int = HERE) -> None:
        self.host = Host(index)
        self.sent: list[tuple[int, sw.ShardMsg]] = []
        self.cross = CrossShard(self.host, index, COUNT,
                                lambda shard, msg: self.sent.append((shard, msg)))

    def take(self) -> list[tuple[int, sw.ShardMsg]]:
        out = list(self.sent)
        self.sent.clear()
        return out


def group_homed_at(shard: int) -> str:
    return next(f"g{i}" for i in range(100) if stable_hash(f"g{i}") % COUNT == shard)


def entry(client_id: str, key: int) -> ipc.Entry:
    return ipc.Entry(client_id, f"fe{key % COUNT}", key, ("192.0.2.9", 5000), b"cert")


OFFER = wire.ChannelOffer(0, "alice", b"cert", ("192.0.2.9", 5000))


# -- placement ------------------------------------------------------------------------

def test_keys_and_groups_name_their_shard() -> None:
    c = Setup().cross
    assert [c.shard_of(k) for k in (0, 1, 2, 3, 4, 8)] == [0, 1, 2, 0, 1, 2]
    assert [c.is_local(k) for k in (0, 1, 2, 4, 7)] == [False, True, False, True, True]
    assert c.home_of_group("g") == stable_hash("g") % COUNT
    assert {c.home_of_group(f"g{i}") for i in range(30)} == {0, 1, 2}


# -- outgoing --------------------------------------------------------------------------

def test_requests_go_to_the_shard_named_by_their_key() -> None:
    st = Setup()
    c = st.cross
    c.control(5, wire.GroupReply(3, 0, ["a"]))
    c.offer(entry("bob", 6), 10, OFFER)
    c.answer(11, 4, 0)  # offer 11 is shard 2's
    c.watch_ask(0, 4, 9, "carol")
    c.replace(8)
    assert st.take() == [
        (2, sw.Control(5, wire.encode(wire.GroupReply(3, 0, ["a"])))),
        (0, sw.Offer(6, "bob", 10, wire.encode(OFFER))),
        (2, sw.Answer(11, 4, 0)),
        (0, sw.WatchAsk(4, 9, "carol")),
        (2, sw.Replace(8)),
    ]


def test_a_group_homed_here_is_not_sent() -> None:
    st = Setup()
    assert st.cross.group_op(4, "alice", wire.GroupRequest(1, "join", group_homed_at(HERE))) \
        is False
    st.cross.load(4, "alice", wire.LoadReport(1, 2))
    assert st.sent == []


def test_group_requests_go_to_the_groups_home_and_loads_follow_joins() -> None:
    st = Setup()
    c = st.cross
    g0, g2 = group_homed_at(0), group_homed_at(2)
    c.load(4, "alice", wire.LoadReport(1, 2))  # a member of no group elsewhere
    assert c.group_op(4, "alice", wire.GroupRequest(1, "members", g0)) is True
    c.load(4, "alice", wire.LoadReport(1, 2))  # asking is not joining
    assert st.take() == [(0, sw.GroupOp(4, "alice", "members", g0, 1))]
    assert c.group_op(4, "alice", wire.GroupRequest(2, "join", g2))
    assert c.group_op(4, "alice", wire.GroupRequest(3, "join", g2))
    c.group_op(7, "bob", wire.GroupRequest(1, "join", g0))
    st.take()
    c.load(4, "alice", wire.LoadReport(3, 4))
    assert st.take() == [(2, sw.Load("alice", 3, 4))]  # once per home shard
    c.load(7, "bob", wire.LoadReport(0, 1))
    assert st.take() == [(0, sw.Load("bob", 0, 1))]


def test_a_departure_is_told_to_every_other_shard_and_forgets_its_groups() -> None:
    st = Setup()
    c = st.cross
    c.group_op(4, "alice", wire.GroupRequest(1, "join", group_homed_at(0)))
    st.take()
    c.left(4, "alice", "vanished")
    assert st.take() == [(0, sw.Left(4, "alice", "vanished")),
                         (2, sw.Left(4, "alice", "vanished"))]
    c.load(4, "alice", wire.LoadReport(1, 1))
    assert st.sent == []


def test_a_client_never_admitted_leaves_without_a_word() -> None:
    st = Setup()
    c = st.cross
    c.group_op(4, "", wire.GroupRequest(1, "join", group_homed_at(2)))
    st.take()
    c.left(4, None, "left")
    c.load(4, "", wire.LoadReport(1, 1))  # its group homes are forgotten too
    assert st.sent == []


# -- incoming --------------------------------------------------------------------------

def test_a_control_message_reaches_its_session_here() -> None:
    st = Setup()
    s = st.host.add(4, "alice")
    st.cross.deliver(0, sw.Control(4, wire.encode(wire.GroupReply(3, 0, ["a"]))))
    st.cross.deliver(0, sw.Control(7, wire.encode(wire.GroupReply(4, 0))))  # gone: dropped
    assert s.got == [wire.GroupReply(3, 0, ["a"])]
    assert st.sent == [] and st.host.calls == []


def test_an_offer_reaches_its_target_when_it_is_the_one_named() -> None:
    st = Setup()
    s = st.host.add(4, "bob")
    st.cross.deliver(2, sw.Offer(4, "bob", 5, wire.encode(OFFER)))
    assert s.got == [OFFER] and st.sent == []


def test_an_offer_to_a_client_not_here_comes_back_as_no_peer() -> None:
    st = Setup()
    sessions = [st.host.add(4, "bob", State.ADMITTING), st.host.add(7, "carol"),
                st.host.add(10, "dave", State.CLOSED)]
    for msg in (sw.Offer(13, "erin", 5, b"x"),  # no such connection
                sw.Offer(4, "bob", 8, b"x"),  # not ready yet
                sw.Offer(7, "bob", 11, b"x"),  # the key now holds another client
                sw.Offer(10, "dave", 14, b"x")):  # closing
        st.cross.deliver(2, msg)
    assert st.take() == [(2, sw.NoPeer(5)), (2, sw.NoPeer(8)), (2, sw.NoPeer(11)),
                         (2, sw.NoPeer(14))]
    assert [s.got for s in sessions] == [[], [], []]


def test_no_peer_fails_a_known_offer_once() -> None:
    st = Setup()
    h = st.host
    offer_id = h.intros.offer(4, 9, entry("bob", 6), now=0.0)
    assert offer_id % COUNT == HERE
    offer = h.intros.offers[offer_id]
    st.cross.deliver(0, sw.NoPeer(offer_id))
    st.cross.deliver(0, sw.NoPeer(offer_id))  # late: known no more
    st.cross.deliver(0, sw.NoPeer(offer_id + COUNT))  # never made
    assert h.calls == [("intro_failed", offer, wire.Code.NO_SUCH_PEER,
                        "no client 'bob' is connected")]
    assert h.intros.offers == {} and st.sent == []


def test_an_answer_goes_to_the_host() -> None:
    st = Setup()
    st.cross.deliver(2, sw.Answer(4, 8, 0))
    st.cross.deliver(2, sw.Answer(7, 8, wire.Code.PEER_NOT_LISTENING))
    assert st.host.calls == [("answered", 4, 8, 0),
                             ("answered", 7, 8, wire.Code.PEER_NOT_LISTENING)]


def test_a_watch_ask_is_answered_by_whether_the_peer_is_connected_here() -> None:
    st = Setup()
    st.host.add(4, "bob")
    st.host.add(7, "carol", State.ADMITTING)
    st.host.add(10, "dave", State.CLOSED)
    for peer in ("bob", "carol", "dave", "erin"):
        st.cross.deliver(2, sw.WatchAsk(5, 3, peer))
    assert st.take() == [(2, sw.WatchState(5, 3, "bob", True)),
                         (2, sw.WatchState(5, 3, "carol", False)),
                         (2, sw.WatchState(5, 3, "dave", False)),
                         (2, sw.WatchState(5, 3, "erin", False))]
    assert st.host.calls == []


def test_watch_states_group_ops_and_loads_go_to_the_host() -> None:
    st = Setup()
    st.cross.deliver(0, sw.WatchState(4, 3, "bob", True))
    st.cross.deliver(2, sw.GroupOp(5, "carol", "join", "g", 7))
    st.cross.deliver(2, sw.Load("carol", 2, 9))
    assert st.host.calls == [("watch_known", 4, 3, "bob", True),
                             ("group_op", 5, "carol", "join", "g", 7),
                             ("load", "carol", 2, 9)]
    assert st.sent == []


def test_a_departure_elsewhere_is_left_or_vanished() -> None:
    st = Setup()
    reasons: list[Reason] = ["left", "vanished", "not-connected"]
    for i, reason in enumerate(reasons):
        st.cross.deliver(0, sw.Left(3 * i, f"c{i}", reason))
    st.cross.deliver(0, sw.Left(9, "c3", "bogus"))
    assert st.host.calls == [("gone_elsewhere", 0, "c0", "left"),
                             ("gone_elsewhere", 3, "c1", "vanished"),
                             ("gone_elsewhere", 6, "c2", "vanished"),
                             ("gone_elsewhere", 9, "c3", "vanished")]


def test_replace_closes_the_stale_connection_here() -> None:
    st = Setup()
    st.cross.deliver(0, sw.Replace(4))
    assert st.host.calls == [("replace_stale", 4)] and st.sent == []


def test_a_dead_shards_clients_vanish() -> None:
    st = Setup()
    st.cross.shard_down([entry("bob", 6), entry("carol", 9)])
    st.cross.shard_down([])
    assert st.host.calls == [("gone_elsewhere", 6, "bob", "vanished"),
                             ("gone_elsewhere", 9, "carol", "vanished")]
    assert st.sent == []


def test_two_shards_introduce_through_the_wire() -> None:
    # Shard 1's alice (key 4) is introduced to shard 0's bob (key 6).
    a, b = Setup(HERE), Setup(0)
    bob = b.host.add(6, "bob")

    def cross(src: Setup, dst: Setup) -> None:
        for to, msg in src.take():
            assert to == dst.cross.index
            [got] = sw.decode(sw.encode([msg]))
            assert isinstance(got, sw.ControlMsg)
            dst.cross.deliver(src.cross.index, got)

    first = a.host.intros.offer(4, 9, entry("bob", 6), now=0.0)
    a.cross.offer(entry("bob", 6), first, OFFER)
    cross(a, b)
    assert bob.got == [OFFER]
    b.cross.answer(first, 6, 0)  # what bob's shard does with bob's answer
    cross(b, a)
    assert a.host.calls == [("answered", first, 6, 0)]
    a.host.calls.clear()
    # bob is gone before the next offer reaches his shard.
    b.host.sessions[6].core.state = State.CLOSED
    second = a.host.intros.offer(4, 10, entry("bob", 6), now=0.0)
    offer = a.host.intros.offers[second]
    a.cross.offer(entry("bob", 6), second, OFFER)
    cross(a, b)
    cross(b, a)
    assert bob.got == [OFFER]
    assert a.host.calls == [("intro_failed", offer, wire.Code.NO_SUCH_PEER,
                             "no client 'bob' is connected")]
