"""Client ids (lowercase DNS names) and the stable hash used for sharding."""

from __future__ import annotations

import re
from hashlib import blake2b

from .errors import InvalidId

MAX_ID_LENGTH = 253
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


def check_id(client_id: object) -> str:
    """Return `client_id` if it is a valid id, else raise `InvalidId`.

    An id is a lowercase DNS name: labels of 1-63 characters from a-z, 0-9 and
    '-', not starting or ending with '-', joined by '.', at most 253 characters,
    and the last label is not all digits (so no id parses as an IP address).
    """
    if not isinstance(client_id, str):
        raise InvalidId(f"client id must be a str, not {type(client_id).__name__}")
    if not client_id:
        raise InvalidId("client id must not be empty")
    if len(client_id) > MAX_ID_LENGTH:
        raise InvalidId(f"client id is {len(client_id)} characters long; at most "
                        f"{MAX_ID_LENGTH} are allowed")
    if client_id != client_id.lower():
        raise InvalidId(f"client id {client_id!r} has uppercase letters; ids are "
                        "lowercase DNS names (nothing is lowered for you)")
    labels = client_id.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidId(
                f"client id {client_id!r}: label {label!r} is not 1-63 characters of "
                "a-z, 0-9 and '-' (not starting or ending with '-')")
    if labels[-1].isdigit():
        raise InvalidId(f"client id {client_id!r}: the last label must not be all "
                        "digits (an id must not look like an IP address)")
    return client_id


def is_valid_id(client_id: object) -> bool:
    """True if `client_id` is a valid client id."""
    try:
        check_id(client_id)
    except InvalidId:
        return False
    return True


def stable_hash(s: str) -> int:
    """Process-independent hash used to shard ids and broadcast names."""
    return int.from_bytes(blake2b(s.encode(), digest_size=8).digest(), "big")
