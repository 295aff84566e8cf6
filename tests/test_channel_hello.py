"""`ChannelHandshake`: a direct channel's certificate checks and hello
exchange, results in, refusals and messages out (no network)."""

from __future__ import annotations

import pytest

from conec_actors import CertificateError, ConnectFailed, ProtocolError, wire
from conec_actors.client.hello import (
    TRANSITIONS,
    ChannelHandshake,
    HelloEvent,
    HelloState,
    Ready,
    Refuse,
    peer_wins_tie,
)
from conec_actors.transitions import LocalProtocolError, RemoteProtocolError

V = wire.PROTOCOL_VERSION
BOB_CERT = b"bob's certificate"


def opener(max_size: int = 1000) -> ChannelHandshake:
    return ChannelHandshake("alice", max_size, opener=True, peer="bob",
                            expected_cert=BOB_CERT)


def target(max_size: int = 1000) -> ChannelHandshake:
    return ChannelHandshake("bob", max_size, opener=False)


def opener_hello_sent(max_size: int = 1000) -> ChannelHandshake:
    hs = opener(max_size)
    hs.certificate(BOB_CERT)
    hs.chain_checked(None)
    return hs


def target_waiting(max_size: int = 1000) -> ChannelHandshake:
    hs = target(max_size)
    hs.certificate(b"alice's certificate", "alice")
    hs.chain_checked(None)
    return hs


# -- the opener -----------------------------------------------------------------------


def test_opener_checks_the_vouched_certificate_then_says_hello() -> None:
    hs = opener(1000)
    assert hs.state is HelloState.HANDSHAKE and not hs.verified
    assert hs.certificate(BOB_CERT) == "bob"
    assert hs.state is HelloState.IDENTIFIED and not hs.verified
    assert hs.chain_checked(None) == wire.ChannelHello("alice", V, 1000)
    assert hs.state is HelloState.HELLO_SENT and hs.verified and not hs.ready


def test_opener_is_ready_on_welcome_with_the_smaller_limit() -> None:
    hs = opener_hello_sent(1000)
    assert hs.receive(wire.ChannelWelcome("bob", 600)) == Ready()
    assert hs.ready and hs.max_message_size == 600


def test_opener_refuses_another_certificate() -> None:
    hs = opener()
    out = hs.certificate(b"someone else's")
    assert isinstance(out, Refuse) and out.code == wire.Code.CERTIFICATE
    assert "other than the one the Coordinator vouched for" in out.reason
    assert hs.state is HelloState.CLOSED


@pytest.mark.parametrize("make", [opener, target])
def test_no_certificate_is_refused(make: type[ChannelHandshake]) -> None:
    hs = make()
    assert hs.certificate(None) == Refuse(wire.Code.CERTIFICATE, "no certificate presented")
    assert hs.state is HelloState.CLOSED


@pytest.mark.parametrize("make", [opener, target])
def test_a_refused_chain_is_refused(make: type[ChannelHandshake]) -> None:
    hs = make()
    hs.certificate(BOB_CERT, "alice")
    assert hs.chain_checked("expired") == Refuse(wire.Code.CERTIFICATE, "expired")
    assert hs.state is HelloState.CLOSED and not hs.verified


def test_opener_takes_no_hello() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        opener_hello_sent().receive(wire.ChannelHello("bob", V, 1000))
    assert "unexpected ChannelHello on a channel" in str(err.value)


# -- the target -----------------------------------------------------------------------


def test_target_learns_the_peer_from_the_introduction_then_waits_for_hello() -> None:
    hs = target()
    assert hs.peer is None
    assert hs.certificate(b"alice's certificate", "alice") == "alice"
    assert hs.peer == "alice" and hs.state is HelloState.IDENTIFIED
    assert hs.chain_checked(None) is None  # the target says nothing first
    assert hs.state is HelloState.AWAITING_HELLO and hs.verified


def test_target_refuses_a_certificate_nobody_introduced() -> None:
    hs = target()
    assert hs.certificate(b"stranger", None) == Refuse(
        wire.Code.CERTIFICATE, "certificate not introduced by the Coordinator")
    assert hs.state is HelloState.CLOSED


def test_target_welcomes_a_good_hello_with_the_smaller_limit() -> None:
    hs = target_waiting(1000)
    assert hs.receive(wire.ChannelHello("alice", V, 4000)) == Ready(
        wire.ChannelWelcome("bob", 1000))
    assert hs.ready and hs.max_message_size == 1000


def test_a_peer_that_announces_no_limit_leaves_ours() -> None:
    hs = target_waiting(1000)
    assert hs.receive(wire.ChannelHello("alice", V, 0)) == Ready(
        wire.ChannelWelcome("bob", 1000))
    opener = opener_hello_sent(1000)
    opener.receive(wire.ChannelWelcome("bob", 0))
    assert hs.max_message_size == opener.max_message_size == 1000


def test_target_refuses_a_hello_from_another_id() -> None:
    hs = target_waiting()
    out = hs.receive(wire.ChannelHello("mallory", V, 1000))
    assert isinstance(out, Refuse) and out.code == wire.Code.CERTIFICATE
    assert "'mallory'" in out.reason and "'alice'" in out.reason
    assert hs.state is HelloState.CLOSED


def test_target_refuses_another_version() -> None:
    hs = target_waiting()
    out = hs.receive(wire.ChannelHello("alice", V + 1, 1000))
    assert isinstance(out, Refuse) and out.code == wire.Code.VERSION
    assert hs.state is HelloState.CLOSED


def test_target_takes_one_hello_and_no_welcome() -> None:
    hs = target_waiting()
    with pytest.raises(RemoteProtocolError):
        hs.receive(wire.ChannelWelcome("alice", 1000))
    hs.receive(wire.ChannelHello("alice", V, 1000))
    with pytest.raises(RemoteProtocolError):
        hs.receive(wire.ChannelHello("alice", V, 1000))


# -- either end -----------------------------------------------------------------------


@pytest.mark.parametrize("make", [opener, target])
def test_no_control_message_before_the_certificate_check(
        make: type[ChannelHandshake]) -> None:
    hs = make()
    with pytest.raises(ProtocolError, match="before the certificate check"):
        hs.receive(wire.ChannelHello("alice", V, 1000))
    hs.certificate(BOB_CERT, "alice")
    with pytest.raises(ProtocolError, match="before the certificate check"):
        hs.receive(wire.ChannelWelcome("bob", 1000))


@pytest.mark.parametrize("msg", [
    wire.Welcome(V, 1, 1.0, 1200, ("", 0)), wire.ChannelOffer(1, "x", b"", ("", 0)),
    wire.StreamAccepted(), wire.ChannelRequest(1, "x")])
def test_other_control_messages_break_the_protocol(msg: wire.Control) -> None:
    for hs in (opener_hello_sent(), target_waiting()):
        with pytest.raises(RemoteProtocolError):
            hs.receive(msg)


def test_a_ready_channel_takes_no_more_control_messages() -> None:
    hs = opener_hello_sent()
    hs.receive(wire.ChannelWelcome("bob", 1000))
    with pytest.raises(RemoteProtocolError):
        hs.receive(wire.ChannelWelcome("bob", 1000))


def test_checks_happen_in_order() -> None:
    with pytest.raises(LocalProtocolError):
        opener().chain_checked(None)  # before the certificate
    hs = opener_hello_sent()
    with pytest.raises(LocalProtocolError):
        hs.certificate(BOB_CERT)  # twice
    with pytest.raises(LocalProtocolError):
        hs.chain_checked(None)


def test_a_closed_handshake_takes_nothing_more() -> None:
    hs = opener_hello_sent()
    hs.close(wire.Code.CHANNEL_CLOSED, "")
    assert hs.state is HelloState.CLOSED and not hs.verified
    with pytest.raises(ProtocolError):
        hs.receive(wire.ChannelWelcome("bob", 1000))
    with pytest.raises(LocalProtocolError):
        hs.certificate(BOB_CERT)
    with pytest.raises(LocalProtocolError):
        hs.chain_checked(None)
    hs.close(wire.Code.CHANNEL_CLOSED, "")  # closing again is harmless


def test_the_end_names_the_peer_once_known() -> None:
    err = opener_hello_sent().close(wire.Code.CHANNEL_CLOSED, "bob closed it")
    assert isinstance(err, ConnectFailed)
    assert str(err) == "the channel to 'bob' ended: bob closed it"
    err = opener().close(0x12A, "bad certificate")
    assert isinstance(err, CertificateError) and "with 'bob'" in str(err)
    err = target().close(wire.Code.NO_ERROR, "")
    assert isinstance(err, ConnectFailed) and "the channel to the peer ended" in str(err)


@pytest.mark.parametrize("state", list(HelloState))
def test_close_is_legal_from_every_state(state: HelloState) -> None:
    assert TRANSITIONS[state, HelloEvent.CLOSE] is HelloState.CLOSED


def test_a_closed_handshake_cannot_refuse() -> None:
    assert (HelloState.CLOSED, HelloEvent.REFUSE) not in TRANSITIONS


# -- the tie between two attempts made at once -------------------------------------------


def test_the_lower_id_wins_the_tie() -> None:
    assert peer_wins_tie("bob", "alice")
    assert not peer_wins_tie("alice", "bob")
    assert not peer_wins_tie("alice", "alice")
