"""`closing`: what a close code means to the client, for the Coordinator's
connection and a direct channel alike."""

from __future__ import annotations

import pytest

from conec_actors import (
    CertificateError,
    ClientClosed,
    ConnectFailed,
    DuplicateId,
    NoSuchPeer,
    PeerNotListening,
    ProtocolError,
    wire,
)
from conec_actors.closing import connection_error, refusal_error


@pytest.mark.parametrize("channel", [None, "'bob'"])
def test_a_tls_alert_is_a_certificate_error(channel: str | None) -> None:
    err = connection_error(0x100 + 42, "bad certificate", channel=channel)
    assert isinstance(err, CertificateError)
    assert "bad certificate" in str(err)
    assert ("with 'bob'" in str(err)) == (channel is not None)
    assert "alert 298" in str(connection_error(0x12A, ""))


@pytest.mark.parametrize("channel", [None, "'bob'"])
def test_a_refusal_code_gives_its_error(channel: str | None) -> None:
    err = connection_error(wire.Code.DUPLICATE_ID, "taken", channel=channel)
    assert isinstance(err, DuplicateId) and str(err) == "taken"
    assert isinstance(connection_error(wire.Code.PROTOCOL, "", channel=channel),
                      ProtocolError)


@pytest.mark.parametrize("code", [wire.Code.NO_ERROR, wire.Code.PATH_FAILED, 0x42, 0x1FFFF])
def test_other_ends_are_a_lost_coordinator_or_a_failed_channel(code: int) -> None:
    lost = connection_error(code, "")
    assert isinstance(lost, ClientClosed)
    assert str(lost).startswith("the connection to the Coordinator ended: ")
    failed = connection_error(code, "gone", channel="'bob'")
    assert isinstance(failed, ConnectFailed)
    assert str(failed) == "the channel to 'bob' ended: gone"


def test_refusals_of_an_introduction() -> None:
    err = refusal_error("bob", wire.Code.NO_SUCH_PEER, "whatever")
    assert isinstance(err, NoSuchPeer) and str(err) == "no client 'bob' is connected"
    assert isinstance(refusal_error("bob", wire.Code.PEER_NOT_LISTENING, ""),
                      PeerNotListening)
    unreachable = refusal_error("bob", wire.Code.PATH_FAILED, "")
    assert isinstance(unreachable, ConnectFailed) and "'bob'" in str(unreachable)
