"""The front-end's session core (coord/session.py): events in, actions out, no
Coordinator and no sockets."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conec_actors import wire
from conec_actors.control import CONTROL_MAX, CONTROL_STREAM
from conec_actors.coord import ipc
from conec_actors.coord.session import (
    CONTROL_REPLY_HIGH,
    CONTROL_REPLY_LOW,
    FRONTEND_NAME,
    HELLO_TIMEOUT,
    MAX_PENDING_CHANNELS,
    MAX_PENDING_OPENS,
    MAX_PENDING_REQUESTS,
    REFUSALS,
    TRANSITIONS,
    Action,
    Admit,
    ArmTimer,
    CancelTimer,
    CloseConnection,
    CreditControl,
    Event,
    Handle,
    Limits,
    NewLeg,
    Register,
    RejectStream,
    ReplaceStale,
    SendControl,
    SessionCore,
    State,
    Unregister,
    WatchControl,
    refusal_reason,
)
from conec_actors.errors import CertificateError
from conec_actors.framing import frame
from conec_actors.transitions import LocalProtocolError

ADDR = ("192.0.2.7", 4433)
CERT = b"\x30\x82cert"
LIMITS = Limits(max_message_size=1 << 20, max_datagram_size=1350, idle_timeout=30.0)


def accept_any(client_id: str) -> None:
    pass


def hello(client_id: str = "alice", version: int = wire.PROTOCOL_VERSION,
          max_message_size: int = 1 << 30, idle: float = 60.0,
          datagram: int = 1500) -> wire.Hello:
    return wire.Hello(client_id, version, max_message_size, idle, datagram)


def framed(*msgs: wire.Control) -> bytes:
    return b"".join(frame(wire.encode(m)) for m in msgs)


def closes(acts: list[Action]) -> CloseConnection:
    found = [a for a in acts if isinstance(a, CloseConnection)]
    assert len(found) == 1, acts
    return found[0]


def sent(acts: list[Action]) -> list[wire.Control]:
    return [a.msg for a in acts if isinstance(a, SendControl)]


def run_control(core: SessionCore, data: bytes, unsent: int = 0) -> list[Action]:
    """Feed control bytes and act on them as the driver does."""
    acts = core.new_stream(CONTROL_STREAM) if core.control_quic_id is None else []
    acts += core.control_data(data, False)
    while (step := core.step_control(unsent)) is not None:
        acts += step
    return acts + core.control_settled()


def at_hello(verify: object = accept_any) -> SessionCore:
    core = SessionCore(7, ADDR, LIMITS, verify)  # type: ignore[arg-type]
    assert core.start(100.0) == [ArmTimer(100.0 + HELLO_TIMEOUT)]
    assert core.handshake_done(CERT) == []
    assert core.state is State.HELLO
    return core


def at_admitting() -> SessionCore:
    core = at_hello()
    acts = run_control(core, framed(hello()))
    assert core.state is State.ADMITTING
    assert Register(ipc.Entry("alice", FRONTEND_NAME, 7, ADDR, CERT)) in acts
    return core


def ready() -> SessionCore:
    core = at_admitting()
    core.admitted(0)
    assert core.state is State.READY
    return core


# -- the transition table --------------------------------------------------------


def test_every_state_but_closed_can_close_and_the_happy_path_is_linear() -> None:
    assert TRANSITIONS[State.HANDSHAKE, Event.CERTIFIED] is State.HELLO
    assert TRANSITIONS[State.HELLO, Event.HELLO] is State.ADMITTING
    assert TRANSITIONS[State.ADMITTING, Event.ADMITTED] is State.READY
    for s in State:
        assert ((s, Event.CLOSE) in TRANSITIONS) == (s is not State.CLOSED)
    assert len(TRANSITIONS) == 7


@pytest.mark.parametrize(("state", "event"), [
    (s, e) for s in State for e in Event if (s, e) not in TRANSITIONS])
def test_illegal_moves_raise(state: State, event: Event) -> None:
    core = SessionCore(1, ADDR, LIMITS, accept_any)
    core.state = state
    with pytest.raises(LocalProtocolError) as info:
        core._move(event)
    assert info.value.state is state and info.value.event is event
    assert core.state is state


def test_the_happy_path_welcomes_with_the_smaller_limits() -> None:
    core = at_admitting()
    acts = core.admitted(0)
    assert core.state is State.READY and core.registered
    assert acts[:2] == [CancelTimer(), Admit(1350)]
    assert sent(acts) == [wire.Welcome(wire.PROTOCOL_VERSION, 1 << 20, 30.0, 1350, ADDR)]
    assert core.max_message_size == 1 << 20


def test_a_client_may_lower_its_limits() -> None:
    core = at_hello()
    run_control(core, framed(hello(max_message_size=1000, idle=5.0, datagram=1200)))
    welcome = sent(core.admitted(0))[0]
    assert welcome == wire.Welcome(wire.PROTOCOL_VERSION, 1000, 5.0, 1200, ADDR)


@pytest.mark.parametrize("announced", [0, -5])
def test_a_hello_without_a_known_limit_gets_the_coordinators(announced: int) -> None:
    core = at_hello()
    run_control(core, framed(hello(max_message_size=announced)))
    welcome = sent(core.admitted(0))[0]
    assert isinstance(welcome, wire.Welcome) and welcome.max_message_size == 1 << 20


def test_admitted_when_not_admitting_is_a_driver_bug() -> None:
    core = at_hello()
    with pytest.raises(LocalProtocolError):
        core.admitted(0)


# -- refusals ----------------------------------------------------------------------


def test_a_refused_certificate_closes_at_the_handshake() -> None:
    core = SessionCore(1, ADDR, LIMITS, accept_any)
    acts = core.handshake_done(None, "certificate refused: expired")
    assert closes(acts) == CloseConnection(wire.Code.CERTIFICATE,
                                           "certificate refused: expired")
    assert CancelTimer() in acts and core.state is State.CLOSED
    assert core.handshake_done(CERT) == [] and core.state is State.CLOSED


def test_a_certificate_not_valid_for_the_id_is_refused() -> None:
    def verify(client_id: str) -> None:
        raise CertificateError(f"not valid for {client_id!r}")

    core = at_hello(verify)
    c = closes(run_control(core, framed(hello("mallory"))))
    assert c.code == wire.Code.CERTIFICATE and "mallory" in c.reason
    assert core.state is State.CLOSED and core.client_id is None


def test_a_bad_id_is_refused() -> None:
    core = at_hello()
    c = closes(run_control(core, framed(hello("no spaces allowed"))))
    assert c.code == wire.Code.INVALID_ID


def test_another_protocol_version_is_refused() -> None:
    core = at_hello()
    c = closes(run_control(core, framed(hello(version=wire.PROTOCOL_VERSION + 1))))
    assert c.code == wire.Code.VERSION and "not supported" in c.reason


def test_an_oversized_control_message_is_refused() -> None:
    core = at_hello()
    core.new_stream(CONTROL_STREAM)
    c = closes(core.control_data((CONTROL_MAX + 1).to_bytes(4, "big"), False))
    assert c.code == wire.Code.PROTOCOL and "too large" in c.reason


def test_a_message_that_is_no_control_message_is_refused() -> None:
    core = at_hello()
    c = closes(run_control(core, frame(b"\xc1garbage")))
    assert c.code == wire.Code.PROTOCOL


def test_a_duplicate_id_is_refused_and_says_which() -> None:
    core = at_admitting()
    c = closes(core.admitted(wire.Code.DUPLICATE_ID))
    assert c.code == wire.Code.DUPLICATE_ID
    assert c.reason == "a client with id 'alice' is already connected"
    assert not core.registered  # the worker kept the other holder


def test_a_reconnect_that_replaced_a_stale_session_closes_it_after_the_welcome() -> None:
    core = at_admitting()
    acts = core.admitted(0, stale=3)
    assert core.state is State.READY and core.registered
    assert acts[:2] == [CancelTimer(), Admit(1350)]
    assert len(sent(acts)) == 1  # the welcome
    assert acts[-1] == ReplaceStale(3)  # once this session is listed


def test_a_stale_session_is_closed_even_if_its_replacement_left_meanwhile() -> None:
    core = at_admitting()
    core.terminated()
    assert core.admitted(0, stale=3) == [Unregister("alice", 7), ReplaceStale(3)]


def test_no_replacement_for_its_own_entry_or_a_refusal() -> None:
    core = at_admitting()
    assert not any(isinstance(a, ReplaceStale) for a in core.admitted(0, stale=7))
    refused = at_admitting()
    acts = refused.admitted(wire.Code.DUPLICATE_ID, stale=3)
    assert closes(acts).code == wire.Code.DUPLICATE_ID
    assert not any(isinstance(a, ReplaceStale) for a in acts)


def test_a_replaced_session_closes_as_duplicate_and_says_so() -> None:
    core = ready()
    assert not core.replaced
    c = closes(core.replace())
    assert c.code == wire.Code.DUPLICATE_ID
    assert "same certificate" in c.reason
    assert core.replaced and core.state is State.CLOSED


def test_a_second_hello_is_refused() -> None:
    core = ready()
    c = closes(run_control(core, framed(hello())))
    assert c == CloseConnection(wire.Code.PROTOCOL, "unexpected hello")


def test_requests_before_the_welcome_are_refused() -> None:
    core = at_hello()
    c = closes(run_control(core, framed(wire.ChannelRequest(1, "bob"))))
    assert c.code == wire.Code.PROTOCOL and "ChannelRequest" in c.reason


def test_closing_the_control_stream_closes_the_connection() -> None:
    core = ready()
    acts = core.control_data(b"", True)
    assert acts == []
    assert core.step_control(0) is None
    assert closes(core.control_settled()).reason == "the control stream was closed"


def test_resetting_the_control_stream_closes_the_connection() -> None:
    core = ready()
    assert closes(core.stream_reset(CONTROL_STREAM)).code == wire.Code.PROTOCOL
    assert core.stream_reset(4) == []  # (after close: nothing more)


# -- the hello deadline ------------------------------------------------------------


def test_no_hello_by_the_deadline_closes() -> None:
    core = at_hello()
    assert core.timer_fired(100.0 + HELLO_TIMEOUT - 0.5) == [ArmTimer(100.0 + HELLO_TIMEOUT)]
    c = closes(core.timer_fired(100.0 + HELLO_TIMEOUT))
    assert c.code == wire.Code.HELLO_TIMEOUT and "no hello within 5 s" in c.reason


@pytest.mark.parametrize("where", ["handshake", "admitting"])
def test_the_deadline_covers_the_handshake_and_admission(where: str) -> None:
    if where == "handshake":
        core = SessionCore(1, ADDR, LIMITS, accept_any)
        core.start(0.0)
    else:
        core = at_admitting()
        core.deadline = 0.0
    assert closes(core.timer_fired(HELLO_TIMEOUT + 100)).code == wire.Code.HELLO_TIMEOUT


def test_the_deadline_does_not_apply_once_ready_or_closed() -> None:
    core = ready()
    assert core.timer_fired(1e9) == []
    core.close(wire.Code.PROTOCOL)
    assert core.timer_fired(1e9) == []


# -- leaving ------------------------------------------------------------------------


def test_leaving_when_admitted_unregisters_once() -> None:
    core = ready()
    acts = core.terminated()
    assert acts == [CancelTimer(), Unregister("alice", 7)]
    assert core.terminated() == [CancelTimer()]


def test_an_admission_that_returns_after_the_client_left_is_undone() -> None:
    core = at_admitting()
    assert core.terminated() == [CancelTimer()]  # not registered yet
    assert core.admitted(0) == [Unregister("alice", 7)]
    assert core.admitted(wire.Code.DUPLICATE_ID) == []


def test_close_twice_acts_once() -> None:
    core = ready()
    assert closes(core.close(wire.Code.PROTOCOL, "x")).reason == "x"
    assert core.close(wire.Code.PROTOCOL, "y") == []


def test_a_close_without_reason_describes_the_code() -> None:
    core = ready()
    assert closes(core.close(wire.Code.COORD_SHUTDOWN)).reason == \
        wire.describe(wire.Code.COORD_SHUTDOWN)


# -- streams ----------------------------------------------------------------------


def test_the_control_stream_comes_first() -> None:
    core = at_hello()
    c = closes(core.new_stream(4))
    assert c == CloseConnection(wire.Code.PROTOCOL, "the control stream must be opened first")


def test_streams_are_ignored_during_the_handshake() -> None:
    core = SessionCore(1, ADDR, LIMITS, accept_any)
    assert core.new_stream(0) == [] and core.control_quic_id is None


def test_streams_open_only_when_ready_and_only_client_bidirectional() -> None:
    core = at_admitting()
    assert core.new_stream(4) == [RejectStream(4, wire.Code.PROTOCOL)]
    core.admitted(0)
    assert core.new_stream(4) == [NewLeg(4)]
    assert core.new_stream(2) == [RejectStream(2, wire.Code.PROTOCOL)]  # unidirectional


def test_pending_opens_are_bounded() -> None:
    core = ready()
    assert all(core.begin_open() for _ in range(MAX_PENDING_OPENS))
    assert not core.begin_open()
    core.open_settled()
    assert core.begin_open() and not core.begin_open()


# -- requests and their bounds ---------------------------------------------------------


def test_channel_requests_go_to_the_front_end() -> None:
    core = ready()
    req = wire.ChannelRequest(1, "bob")
    assert run_control(core, framed(req))[0] == Handle(req)
    assert core.pending_channels == 1


@pytest.mark.parametrize(("peer", "code"), [("alice", wire.Code.CHANNEL_TO_SELF),
                                            ("bad id", wire.Code.NO_SUCH_PEER)])
def test_hopeless_channel_requests_are_answered_at_once(peer: str, code: int) -> None:
    core = ready()
    (intro,) = sent(run_control(core, framed(wire.ChannelRequest(3, peer))))
    assert isinstance(intro, wire.ChannelIntro) and (intro.req, intro.code) == (3, code)
    assert core.pending_channels == 0


def test_pending_channels_are_bounded() -> None:
    core = ready()
    reqs = [wire.ChannelRequest(i, f"p{i}") for i in range(MAX_PENDING_CHANNELS + 1)]
    acts = run_control(core, framed(*reqs))
    assert [a.msg for a in acts if isinstance(a, Handle)] == reqs[:-1]
    (intro,) = sent(acts)
    assert isinstance(intro, wire.ChannelIntro) and intro.code == wire.Code.TOO_MANY_STREAMS
    core.channel_settled()
    assert isinstance(run_control(core, framed(reqs[-1]))[0], Handle)


def test_answers_and_dialing_go_to_the_front_end_uncounted() -> None:
    core = ready()
    msgs: list[wire.ChannelAnswer | wire.ChannelDialing] = [wire.ChannelAnswer(1, 0),
                                                            wire.ChannelDialing(2)]
    acts = run_control(core, framed(*msgs))
    assert [a for a in acts if isinstance(a, Handle)] == [Handle(m) for m in msgs]
    assert core.requests_pending == 0 and core.pending_channels == 0


def test_requests_waiting_for_a_worker_stop_the_reading() -> None:
    core = ready()
    start = core.control.acted_on  # (the hello)
    counts = [wire.BroadcastCount(i, "b") for i in range(MAX_PENDING_REQUESTS + 2)]
    acts = run_control(core, framed(*counts))
    assert len([a for a in acts if isinstance(a, Handle)]) == MAX_PENDING_REQUESTS
    assert WatchControl(True) in acts and core.control_blocked
    # credit covers only what was acted on: two messages stay parked
    (credit,) = [a for a in acts if isinstance(a, CreditControl)]
    assert credit.offset == start + len(framed(*counts[:MAX_PENDING_REQUESTS]))
    assert core.request_done()  # read again
    step = core.step_control(0)
    assert step == [Handle(counts[-2])]
    assert core.step_control(0) is None  # at the bound again
    assert core.request_done() and core.step_control(0) == [Handle(counts[-1])]
    assert WatchControl(False) in core.control_settled() and not core.control_blocked


def test_unread_replies_stop_the_reading_until_below_the_low_mark() -> None:
    core = ready()
    start = core.control.acted_on  # (the hello)
    counts = [wire.BroadcastCount(i, "b") for i in range(3)]
    acts = run_control(core, framed(*counts), unsent=CONTROL_REPLY_HIGH + 1)
    assert not [a for a in acts if isinstance(a, Handle)]
    assert WatchControl(True) in acts
    assert core.step_control(CONTROL_REPLY_LOW + 1) is None  # the low mark now
    assert core.step_control(CONTROL_REPLY_LOW) == [Handle(counts[0])]
    assert core.control_settled() == [CreditControl(start + len(framed(counts[0])))]  # watching
    assert core.step_control(CONTROL_REPLY_LOW) is not None
    assert core.step_control(CONTROL_REPLY_LOW) is not None
    assert core.control_settled()[0] == WatchControl(False)


def test_a_partial_message_earns_no_credit() -> None:
    core = ready()
    start = core.control.acted_on  # (the hello)
    whole = framed(wire.ChannelDialing(1))
    acts = run_control(core, whole + whole[:3])
    assert acts[-1] == CreditControl(start + len(whole))


def test_nothing_is_acted_on_after_a_close() -> None:
    core = ready()
    core.close(wire.Code.PROTOCOL)
    assert core.control_data(framed(wire.ChannelDialing(1)), False) == []
    assert core.step_control(0) is None and core.control_settled() == []
    assert not core.request_done()


# -- death watch ---------------------------------------------------------------------


def test_watch_requests_and_cancels_go_to_the_front_end_uncounted() -> None:
    core = ready()
    msgs: list[wire.WatchRequest | wire.WatchCancel] = [wire.WatchRequest(1, "bob"),
                                                        wire.WatchCancel(1)]
    acts = run_control(core, framed(*msgs))
    assert [a for a in acts if isinstance(a, Handle)] == [Handle(m) for m in msgs]
    assert core.requests_pending == 0 and core.pending_channels == 0


def test_a_watch_of_an_invalid_id_is_not_connected_at_once() -> None:
    core = ready()
    (reply,) = sent(run_control(core, framed(wire.WatchRequest(4, "Not An Id"))))
    assert reply == wire.WatchReply(4, wire.Code.NO_SUCH_PEER)


@pytest.mark.parametrize("msg", [wire.WatchRequest(1, "bob"), wire.WatchCancel(1)])
def test_watch_requests_before_the_welcome_are_refused(msg: wire.Control) -> None:
    core = at_admitting()
    assert closes(run_control(core, framed(msg))).code == wire.Code.PROTOCOL


@pytest.mark.parametrize("msg", [wire.WatchReply(1, 0), wire.PeerTerminated(1, "left")])
def test_the_coordinators_own_watch_messages_are_refused_from_a_client(
        msg: wire.Control) -> None:
    core = ready()
    assert closes(run_control(core, framed(msg))).code == wire.Code.PROTOCOL


# -- groups --------------------------------------------------------------------------


def test_group_requests_go_to_the_front_end_uncounted() -> None:
    core = ready()
    msgs = [wire.GroupRequest(i, op, "g") for i, op in enumerate(sorted(wire.GROUP_OPS))]
    acts = run_control(core, framed(*msgs))
    assert [a for a in acts if isinstance(a, Handle)] == [Handle(m) for m in msgs]
    assert core.requests_pending == 0


@pytest.mark.parametrize("msg", [
    wire.GroupRequest(1, "explode", "g"), wire.GroupRequest(1, "join", ""),
    wire.GroupRequest(1, "join", "x" * (wire.MAX_GROUP_NAME + 1))])
def test_a_bad_group_request_breaks_the_protocol(msg: wire.Control) -> None:
    core = ready()
    assert closes(run_control(core, framed(msg))).code == wire.Code.PROTOCOL


def test_group_requests_before_the_welcome_are_refused() -> None:
    core = at_admitting()
    assert closes(run_control(core, framed(wire.GroupRequest(1, "join", "g")))).code \
        == wire.Code.PROTOCOL


@pytest.mark.parametrize("msg", [wire.GroupReply(1, 0), wire.GroupView("g", ["a"])])
def test_the_coordinators_own_group_messages_are_refused_from_a_client(
        msg: wire.Control) -> None:
    core = ready()
    assert closes(run_control(core, framed(msg))).code == wire.Code.PROTOCOL


def test_load_reports_go_to_the_front_end_and_count_from_zero() -> None:
    core = ready()
    acts = run_control(core, framed(wire.LoadReport(2, 0)))
    assert [a for a in acts if isinstance(a, Handle)] == [Handle(wire.LoadReport(2, 0))]
    core = ready()
    assert closes(run_control(core, framed(wire.LoadReport(-1, 0)))).code \
        == wire.Code.PROTOCOL


# -- refusal reasons and figures (what /metrics counts and the log says) ------------


def _refused_certificate() -> tuple[SessionCore, list[Action]]:
    core = SessionCore(1, ADDR, LIMITS, accept_any)
    return core, core.handshake_done(None, "no")


def _refused_hello(msg: bytes) -> tuple[SessionCore, list[Action]]:
    core = at_hello()
    return core, run_control(core, msg)


def _refused_duplicate() -> tuple[SessionCore, list[Action]]:
    core = at_admitting()
    return core, core.admitted(wire.Code.DUPLICATE_ID)


@pytest.mark.parametrize(("refuse", "expected"), [
    (_refused_certificate, "bad_certificate"),
    (lambda: _refused_hello(framed(hello("no spaces allowed"))), "invalid_id"),
    (lambda: _refused_hello(framed(hello(version=wire.PROTOCOL_VERSION + 1))), "bad_version"),
    (lambda: _refused_hello(frame(b"\xc1garbage")), "protocol_error"),
    (_refused_duplicate, "duplicate_id"),
])
def test_a_refusal_says_why_in_one_word(
        refuse: Callable[[], tuple[SessionCore, list[Action]]], expected: str) -> None:
    core, acts = refuse()
    closes(acts)
    assert core.refusal == expected and core.state is State.CLOSED


def test_the_hello_deadline_is_a_refusal() -> None:
    core = at_hello()
    c = closes(core.timer_fired(100.0 + HELLO_TIMEOUT))
    assert c.code == wire.Code.HELLO_TIMEOUT and core.refusal == "hello_timeout"


def test_closing_an_admitted_client_is_no_refusal() -> None:
    core = ready()
    assert core.refusal is None
    c = closes(run_control(core, framed(hello())))
    assert c.code == wire.Code.PROTOCOL and core.refusal is None


def test_a_refusal_is_given_once() -> None:
    core = at_hello()
    closes(core.close(wire.Code.INVALID_ID))
    assert core.close(wire.Code.PROTOCOL) == [] and core.refusal == "invalid_id"


def test_refusal_reasons_are_words_for_every_code() -> None:
    assert refusal_reason(wire.Code.TOO_MANY_STREAMS) == "too_many_streams"
    assert refusal_reason(0x7FFF_FFFF) == "other"
    assert all(r.isidentifier() and r.islower() for r in REFUSALS.values())


def test_streams_over_add_to_the_clients_figures() -> None:
    core = ready()
    core.stream_over(100, 2, 30, 1)
    core.stream_over(5, 1, 0, 0)
    assert (core.bytes_in, core.messages_in, core.bytes_out, core.messages_out) == (
        105, 3, 30, 1)
