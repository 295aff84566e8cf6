"""Tests for conec_actors.endpoint_rules: peer address forms and the Retry demand."""

from __future__ import annotations

from conec_actors.endpoint_rules import (
    RETRY_OFF,
    RETRY_ON,
    RetryDemand,
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
