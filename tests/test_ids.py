"""Tests for conec_actors.ids: client id validation and the stable hash."""

from __future__ import annotations

import hashlib

import pytest

from conec_actors import ClientConfig, CoordConfig, InvalidId
from conec_actors.errors import ConecError
from conec_actors.ids import MAX_ID_LENGTH, check_id, is_valid_id, stable_hash

LABEL_63 = "a" * 63
ID_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])

VALID = [
    "a",
    "z",
    "alice",
    "a-b.c-d",
    "x1.example.com",
    "a1",
    "1a",
    "123abc",
    "0-0.a",
    "1.2.3.a",
    "a--b",
    "xn--bcher-kva.example",
    LABEL_63,
    f"{LABEL_63}.{LABEL_63}",
    "a" + "-" * 61 + "b",
    ID_253,
]

INVALID = [
    "",
    "Alice",
    "ALICE",
    "alice.Example.com",
    "-a",
    "a-",
    "-",
    "a.-b",
    "a.b-",
    "a..b",
    ".a",
    "a.",
    ".",
    "a" * 64,
    f"b.{'a' * 64}.c",
    ID_253 + "e",
    ".".join(["a" * 63] * 4),
    "a_b",
    "_a",
    "a b",
    " a",
    "a ",
    "a\n",
    "a\t",
    "a/b",
    "a:b",
    "a@b",
    "ali\u00e7e",
    "\u00e9",
    "\u0430lice",  # Cyrillic a
    "a\u200bb",  # zero-width space
    "\uff41",  # fullwidth a
    "1.2.3.4",
    "abc.123",
    "123",
    "0",
    "a.b.0",
    "\u0661",  # Arabic-Indic digit one
]


@pytest.mark.parametrize("client_id", VALID)
def test_valid_ids(client_id: str) -> None:
    assert check_id(client_id) == client_id
    assert check_id(client_id) is client_id
    assert is_valid_id(client_id)


def test_boundary_lengths() -> None:
    assert len(LABEL_63) == 63
    assert len(ID_253) == MAX_ID_LENGTH == 253
    assert check_id(ID_253) == ID_253


@pytest.mark.parametrize("client_id", INVALID)
def test_invalid_ids(client_id: str) -> None:
    with pytest.raises(InvalidId):
        check_id(client_id)
    assert not is_valid_id(client_id)


@pytest.mark.parametrize("client_id", [0, 1, None, b"alice", bytearray(b"a"), ["a"], 1.5])
def test_non_str_ids(client_id: object) -> None:
    with pytest.raises(InvalidId) as info:
        check_id(client_id)
    assert type(client_id).__name__ in str(info.value)
    assert not is_valid_id(client_id)


def test_str_subclass_is_accepted() -> None:
    class Name(str):
        pass

    assert check_id(Name("alice")) == "alice"


def test_invalid_id_is_a_value_error() -> None:
    assert issubclass(InvalidId, ValueError)
    assert issubclass(InvalidId, ConecError)
    with pytest.raises(ValueError):
        check_id("Alice")


def test_uppercase_is_not_lowered() -> None:
    with pytest.raises(InvalidId) as info:
        check_id("Alice")
    assert "Alice" in str(info.value)


def test_too_long_message_names_the_length() -> None:
    with pytest.raises(InvalidId) as info:
        check_id("a" * 300)
    assert "300" in str(info.value)


def test_client_config_checks_id() -> None:
    with pytest.raises(InvalidId):
        ClientConfig("Alice", "localhost")
    with pytest.raises(InvalidId):
        ClientConfig("1.2.3.4", "localhost")
    with pytest.raises(InvalidId):
        ClientConfig("", "localhost")


def test_client_config_accepts_valid_id() -> None:
    cfg = ClientConfig("alice", "localhost")
    assert cfg.id == "alice"


# --- stable_hash ---------------------------------------------------------------


@pytest.mark.parametrize("s", ["", "a", "alice", "x1.example.com", ID_253, "ünïcode"])
def test_stable_hash_definition(s: str) -> None:
    expected = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")
    assert stable_hash(s) == expected


def test_stable_hash_is_stable_and_64_bit() -> None:
    values = [stable_hash(f"client-{i}") for i in range(200)]
    assert values == [stable_hash(f"client-{i}") for i in range(200)]
    assert all(isinstance(v, int) and 0 <= v < 2**64 for v in values)
    # distinct inputs spread out (no collisions among a few hundred ids)
    assert len(set(values)) == len(values)


def test_stable_hash_known_value() -> None:
    """Pinned so a change of algorithm (which would reshard a running
    deployment's ids differently across versions) is noticed."""
    assert stable_hash("alice") == 0x4DEAEC0CCE54DA89
    assert stable_hash("") == 0xE4A6A0577479B2B4
    assert stable_hash("alice") != stable_hash("bob")


def test_configs_take_only_their_first_two_arguments_by_position() -> None:
    # DESIGN: CoordConfig(cert, key, *, ...) and ClientConfig(id, coord, *, ...)
    with pytest.raises(TypeError):
        CoordConfig(b"cert", b"key", "0.0.0.0")  # type: ignore[misc]
    with pytest.raises(TypeError):
        ClientConfig("alice", "localhost", 1719)  # type: ignore[misc]
    assert ClientConfig("alice", "localhost", port=1720).port == 1720
