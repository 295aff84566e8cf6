"""`CoordSession`: the client's control session, messages in, messages out
(no Coordinator, no sockets)."""

from __future__ import annotations

import pytest

from conec_actors import ClientClosed, DuplicateId, ProtocolError, wire
from conec_actors.client.coord_session import TRANSITIONS, CoordSession, SessionEvent, SessionState
from conec_actors.transitions import LocalProtocolError, RemoteProtocolError

WELCOME = wire.Welcome(wire.PROTOCOL_VERSION, 1000, 10.0, 1200, ("127.0.0.1", 5000))
OFFER = wire.ChannelOffer(7, "bob", b"cert", ("10.0.0.2", 4000))


def hello_sent() -> CoordSession:
    s = CoordSession("alice")
    s.hello(2000, 10.0, 1200)
    return s


def ready() -> CoordSession:
    s = hello_sent()
    s.receive(WELCOME)
    return s


def closed() -> CoordSession:
    s = ready()
    s.close(wire.Code.CLIENT_CLOSED, "client closed")
    return s


def test_hello_says_who_and_what_then_waits_for_welcome() -> None:
    s = CoordSession("alice")
    assert s.state is SessionState.CONNECTING
    assert s.hello(2000, 10.0, 1200) == wire.Hello("alice", wire.PROTOCOL_VERSION, 2000,
                                                   10.0, 1200)
    assert s.state is SessionState.HELLO_SENT
    assert s.receive(WELCOME) is WELCOME
    assert s.state is SessionState.READY and s.welcome is WELCOME


def test_hello_only_once() -> None:
    s = hello_sent()
    with pytest.raises(LocalProtocolError):
        s.hello(2000, 10.0, 1200)
    with pytest.raises(LocalProtocolError):
        ready().hello(2000, 10.0, 1200)


@pytest.mark.parametrize("msg", [
    OFFER, wire.PeerDialing("bob"), wire.ChannelIntro(1, 0, "bob"),
    wire.BroadcastCountReply(1, 0), wire.WatchReply(1, 0), wire.PeerTerminated(1, "left")])
def test_only_welcome_may_answer_the_hello(msg: wire.Control) -> None:
    s = hello_sent()
    with pytest.raises(RemoteProtocolError) as err:
        s.receive(msg)
    assert isinstance(err.value, ProtocolError)
    assert f"unexpected {type(msg).__name__} from the Coordinator" in str(err.value)


def test_nothing_comes_before_the_hello() -> None:
    with pytest.raises(RemoteProtocolError):
        CoordSession("alice").receive(WELCOME)


def test_a_second_welcome_breaks_the_protocol() -> None:
    with pytest.raises(RemoteProtocolError):
        ready().receive(WELCOME)


@pytest.mark.parametrize("msg", [
    wire.Hello("x", 1, 1, 1.0, 1200), wire.StreamAccepted(), wire.ChannelHello("x", 1, 1),
    wire.ChannelWelcome("x", 1), wire.ChannelRequest(1, "x"), wire.ChannelAnswer(1, 0),
    wire.BroadcastCount(1, "x"), wire.ChannelDialing(1), wire.WatchRequest(1, "x"),
    wire.WatchCancel(1)])
def test_messages_the_coordinator_never_sends(msg: wire.Control) -> None:
    with pytest.raises(RemoteProtocolError):
        ready().receive(msg)


def test_each_reply_matches_its_request_once() -> None:
    s = ready()
    r1 = s.request_channel("bob", True)
    r2 = s.request_count("room")
    assert r1 == wire.ChannelRequest(r1.req, "bob", True)
    assert r2 == wire.BroadcastCount(r2.req, "room")
    assert r1.req != r2.req and s.waiting == 2
    count = wire.BroadcastCountReply(r2.req, 0, 3, 4)
    assert s.receive(count) is count
    intro = wire.ChannelIntro(r1.req, 0, "bob", b"c", ("1.2.3.4", 5))
    assert s.receive(intro) is intro
    assert s.waiting == 0
    assert s.receive(intro) is None  # answered already: dropped


def test_a_reply_to_nobody_is_dropped() -> None:
    assert ready().receive(wire.ChannelIntro(99, 0, "bob")) is None


def test_an_abandoned_request_drops_its_reply() -> None:
    s = ready()
    req = s.request_count("room").req
    s.abandon(req)
    assert s.waiting == 0
    assert s.receive(wire.BroadcastCountReply(req, 0)) is None


def test_a_reply_of_the_wrong_kind_breaks_the_protocol() -> None:
    s = ready()
    req = s.request_count("room").req
    with pytest.raises(ProtocolError):
        s.receive(wire.ChannelIntro(req, 0, "bob"))


def test_offers_and_dialing_notices_are_handed_on() -> None:
    s = ready()
    assert s.receive(OFFER) is OFFER
    dialing = wire.PeerDialing("bob")
    assert s.receive(dialing) is dialing
    assert s.answer(OFFER.offer, 0) == wire.ChannelAnswer(7, 0)
    assert s.dialing(3) == wire.ChannelDialing(3)
    assert s.state is SessionState.READY


def test_requests_need_a_welcome() -> None:
    s = hello_sent()
    with pytest.raises(LocalProtocolError):
        s.request_channel("bob", True)
    with pytest.raises(LocalProtocolError):
        s.request_count("room")


def test_closing_fails_the_waiting_requests_and_ends_everything() -> None:
    s = ready()
    reqs = [s.request_channel("bob", False).req, s.request_count("room").req]
    ended = s.close(wire.Code.COORD_SHUTDOWN, "bye")
    assert sorted(ended.waiting) == sorted(reqs)
    assert s.state is SessionState.CLOSED and s.waiting == 0
    assert s.close(wire.Code.COORD_SHUTDOWN, "bye").waiting == []  # again: nothing more


def test_a_closed_session_sends_no_request_and_takes_no_message() -> None:
    s = closed()
    with pytest.raises(LocalProtocolError):
        s.request_channel("bob", True)
    with pytest.raises(LocalProtocolError):
        s.request_count("room")
    with pytest.raises(RemoteProtocolError):
        s.receive(OFFER)
    with pytest.raises(LocalProtocolError):
        s.hello(1, 1.0, 1200)


def test_notices_to_a_closed_session_are_dropped() -> None:
    s = closed()
    assert s.answer(7, 0) is None
    assert s.dialing(3) is None


def test_notices_need_a_welcome() -> None:
    with pytest.raises(LocalProtocolError):
        hello_sent().answer(7, 0)
    with pytest.raises(LocalProtocolError):
        CoordSession("alice").dialing(3)


@pytest.mark.parametrize("state", list(SessionState))
def test_close_is_legal_from_every_state(state: SessionState) -> None:
    assert TRANSITIONS[state, SessionEvent.CLOSE] is SessionState.CLOSED


def test_closing_before_the_welcome() -> None:
    for s in (CoordSession("alice"), hello_sent()):
        assert s.close(0, "").waiting == []
        assert s.state is SessionState.CLOSED


def test_a_refused_hello_gives_the_refusal() -> None:
    ended = hello_sent().close(wire.Code.DUPLICATE_ID, "'alice' is taken")
    assert isinstance(ended.error, DuplicateId) and str(ended.error) == "'alice' is taken"


def test_a_lost_coordinator_closes_the_client() -> None:
    ended = ready().close(wire.Code.NO_ERROR, "")
    assert isinstance(ended.error, ClientClosed)


# -- death watch ---------------------------------------------------------------------


def test_an_accepted_watch_gets_its_verdict_once() -> None:
    s = ready()
    msg = s.request_watch("bob")
    assert msg == wire.WatchRequest(msg.req, "bob") and s.waiting == 1
    reply = wire.WatchReply(msg.req, 0)
    assert s.receive(reply) is reply
    assert s.waiting == 0 and s.watching == 1
    verdict = wire.PeerTerminated(msg.req, "vanished")
    assert s.receive(verdict) is verdict
    assert s.watching == 0
    assert s.receive(verdict) is None  # given already: dropped


@pytest.mark.parametrize("code", [wire.Code.NO_SUCH_PEER, wire.Code.TOO_MANY_WATCHES])
def test_a_refused_watch_expects_no_verdict(code: int) -> None:
    s = ready()
    req = s.request_watch("bob").req
    reply = wire.WatchReply(req, code)
    assert s.receive(reply) is reply
    assert s.watching == 0
    assert s.receive(wire.PeerTerminated(req, "left")) is None


def test_a_watch_reply_of_the_wrong_kind_breaks_the_protocol() -> None:
    s = ready()
    req = s.request_watch("bob").req
    with pytest.raises(ProtocolError):
        s.receive(wire.BroadcastCountReply(req, 0))
    s = ready()
    req = s.request_count("room").req
    with pytest.raises(ProtocolError):
        s.receive(wire.WatchReply(req, 0))


def test_a_cancelled_watch_drops_its_reply_and_its_verdict() -> None:
    s = ready()
    accepted = s.request_watch("bob").req
    s.receive(wire.WatchReply(accepted, 0))
    waiting = s.request_watch("bob").req
    assert s.cancel_watch(accepted) == wire.WatchCancel(accepted)
    # Cancelled before its reply came: the Coordinator is told all the same
    # (its cancel follows the request, so it forgets what it accepted).
    assert s.cancel_watch(waiting) == wire.WatchCancel(waiting)
    assert s.waiting == 0 and s.watching == 0
    assert s.receive(wire.WatchReply(waiting, 0)) is None
    assert s.watching == 0
    assert s.receive(wire.PeerTerminated(accepted, "left")) is None


def test_a_verdict_for_no_watch_is_dropped() -> None:
    assert ready().receive(wire.PeerTerminated(42, "left")) is None


def test_watches_need_a_welcome_and_end_with_the_session() -> None:
    with pytest.raises(LocalProtocolError):
        hello_sent().request_watch("bob")
    assert hello_sent().cancel_watch(1) is None
    s = ready()
    req = s.request_watch("bob").req
    s.receive(wire.WatchReply(req, 0))
    pending = s.request_watch("carol").req
    ended = s.close(wire.Code.COORD_SHUTDOWN, "bye")
    assert ended.waiting == [pending] and s.watching == 0
    assert s.cancel_watch(req) is None  # nobody left to tell
    with pytest.raises(LocalProtocolError):
        s.request_watch("bob")
    with pytest.raises(RemoteProtocolError):
        s.receive(wire.PeerTerminated(req, "left"))


# -- groups --------------------------------------------------------------------------


def test_a_group_request_gets_its_reply_once_and_views_follow() -> None:
    s = ready()
    msg = s.request_group("follow", "g")
    assert msg == wire.GroupRequest(msg.req, "follow", "g") and s.waiting == 1
    reply = wire.GroupReply(msg.req, 0, ["a", "b"])
    assert s.receive(reply) is reply
    assert s.waiting == 0
    assert s.receive(reply) is None  # answered already: dropped
    view = wire.GroupView("g", ["b"])
    assert s.receive(view) is view


def test_an_unknown_group_operation_is_refused_here() -> None:
    with pytest.raises(ValueError):
        ready().request_group("explode", "g")


def test_a_group_reply_of_the_wrong_kind_breaks_the_protocol() -> None:
    s = ready()
    req = s.request_group("join", "g").req
    with pytest.raises(ProtocolError):
        s.receive(wire.WatchReply(req, 0))
    s = ready()
    req = s.request_watch("bob").req
    with pytest.raises(ProtocolError):
        s.receive(wire.GroupReply(req, 0))


def test_group_requests_need_a_welcome_and_fail_with_the_session() -> None:
    with pytest.raises(LocalProtocolError):
        hello_sent().request_group("join", "g")
    with pytest.raises(RemoteProtocolError):
        hello_sent().receive(wire.GroupView("g", []))
    s = ready()
    req = s.request_group("members", "g").req
    assert s.close(wire.Code.COORD_SHUTDOWN, "bye").waiting == [req]
    with pytest.raises(RemoteProtocolError):
        s.receive(wire.GroupView("g", []))


def test_the_coordinator_never_sends_a_group_request() -> None:
    with pytest.raises(RemoteProtocolError):
        ready().receive(wire.GroupRequest(1, "join", "g"))


def test_load_reports_only_while_ready() -> None:
    assert hello_sent().report_load(1, 2) is None
    assert ready().report_load(1, 2) == wire.LoadReport(1, 2)
    assert closed().report_load(1, 2) is None
    with pytest.raises(RemoteProtocolError):
        ready().receive(wire.LoadReport(1, 2))
