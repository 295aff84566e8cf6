"""Tests for conec_actors.endpoint_rules: peer address forms and the admission
of new connections (packet headers in, replies or acceptance out)."""

from __future__ import annotations

from conec_actors._quic import SMALLEST_MAX_DATAGRAM_SIZE, PacketInfo, parse_packet
from conec_actors.endpoint_rules import (
    RETRY_OFF,
    RETRY_ON,
    Accept,
    Admission,
    Reply,
    RetryDemand,
    RetryMode,
    normalize_address,
    unmap_address,
)


def test_unmap_address_turns_mapped_ipv4_back() -> None:
    assert unmap_address(("::ffff:10.0.0.1", 4433, 0, 0)) == ("10.0.0.1", 4433)
    assert unmap_address(("::1", 4433, 0, 0)) == ("::1", 4433)
    assert unmap_address(("127.0.0.1", 9)) == ("127.0.0.1", 9)


def test_unmap_address_keeps_a_malformed_mapped_host() -> None:
    assert unmap_address(("::ffff:zz", 1)) == ("::ffff:zz", 1)


def test_normalize_address_on_a_dual_stack_socket() -> None:
    assert normalize_address(("127.0.0.1", 5), True) == ("::ffff:127.0.0.1", 5, 0, 0)
    assert normalize_address(("::1", 5), True) == ("::1", 5, 0, 0)


def test_normalize_address_on_an_ipv4_socket() -> None:
    assert normalize_address(("127.0.0.1", "5"), False) == ("127.0.0.1", 5)


def test_retry_always_and_never() -> None:
    d = RetryDemand()
    assert d.needed(True, 0)
    assert not d.needed(False, 10 * RETRY_ON)


def test_retry_auto_switches_with_hysteresis() -> None:
    d = RetryDemand()
    assert not d.needed("auto", RETRY_ON)  # at the threshold: not yet
    assert d.needed("auto", RETRY_ON + 1)
    assert d.needed("auto", RETRY_OFF)  # between the thresholds: still on
    assert not d.needed("auto", RETRY_OFF - 1)
    assert not d.needed("auto", RETRY_ON)  # between the thresholds: still off


def test_retry_thresholds_are_settable() -> None:
    d = RetryDemand(on=2, off=1)
    assert d.needed("auto", 3)
    assert not d.needed("auto", 0)


# -- admission of new connections ---------------------------------------------------------

V1 = 0x00000001
ADDR = ("192.0.2.7", 5000)
FULL = SMALLEST_MAX_DATAGRAM_SIZE


def initial(token: bytes = b"", version: int | None = V1, dcid: bytes = b"d" * 8,
            is_initial: bool = True, is_vn: bool = False) -> PacketInfo:
    return PacketInfo(dcid, b"s" * 8, version, is_initial, is_vn, token)


def consider(adm: Admission, pkt: PacketInfo, size: int = FULL, retry: RetryMode = False,
             half_open: int = 0, addr: tuple[str, int] = ADDR) -> Reply | Accept | None:
    return adm.consider(pkt, size, addr, 100.0, versions=[V1], retry=retry,
                        half_open=half_open)


def test_a_full_size_initial_starts_a_connection() -> None:
    assert consider(Admission(), initial()) == Accept(b"d" * 8, None)


def test_knocks_and_junk_keep_no_state() -> None:
    adm = Admission()
    assert consider(adm, initial(), size=FULL - 1) is None  # too small to be an Initial
    assert consider(adm, initial(is_initial=False)) is None  # a Handshake for nobody
    assert consider(adm, initial(is_vn=True)) is None  # never answer a negotiation


def test_an_unknown_version_gets_a_version_negotiation_if_full_size() -> None:
    adm = Admission()
    reply = consider(adm, initial(version=0x0A0A0A0A))
    assert isinstance(reply, Reply) and not reply.is_retry
    assert parse_packet(reply.data) is not None
    assert parse_packet(reply.data).is_version_negotiation  # type: ignore[union-attr]
    assert consider(adm, initial(version=0x0A0A0A0A), size=100) is None


def test_retry_then_the_token_that_comes_back_is_accepted() -> None:
    adm = Admission()
    reply = consider(adm, initial(), retry=True)
    assert isinstance(reply, Reply) and reply.is_retry
    retry = parse_packet(reply.data)
    assert retry is not None and retry.token
    # the client's next Initial: to the Retry's source id, with its token
    back = initial(token=retry.token, dcid=retry.scid)
    assert consider(adm, back, retry=True) == Accept(b"d" * 8, retry.scid)
    # honoured even if the server stopped demanding Retries meanwhile
    assert consider(adm, back, retry=False) == Accept(b"d" * 8, retry.scid)


def test_a_token_that_is_not_valid_is_answered_with_a_close() -> None:
    adm = Admission()
    reply = consider(adm, initial(token=b"forged"))
    assert isinstance(reply, Reply) and not reply.is_retry
    retry = parse_packet(consider(adm, initial(), retry=True).data)  # type: ignore[union-attr]
    assert retry is not None
    elsewhere = consider(adm, initial(token=retry.token, dcid=retry.scid),
                         addr=("192.0.2.8", 5000))  # a token is bound to its address
    assert isinstance(elsewhere, Reply) and not elsewhere.is_retry


def test_auto_retry_follows_the_half_open_count() -> None:
    adm = Admission()
    assert isinstance(consider(adm, initial(), retry="auto", half_open=RETRY_ON), Accept)
    verdict = consider(adm, initial(), retry="auto", half_open=RETRY_ON + 1)
    assert isinstance(verdict, Reply) and verdict.is_retry
