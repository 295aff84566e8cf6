"""Connection ids that name a front-end shard, and the steering rule, without I/O.

N shards share one UDP port. The kernel picks a shard's socket for each
datagram by a classic BPF program (`reuseport.attach_steering`) that reads
the first 32-bit word of the packet's destination connection id, big endian,
and takes it modulo N: `shard_of(cid, n)`. For a connection to stay on the
shard that holds its keys, every connection id that shard issues must map
back to it: `issue(k, n)` draws a random id and moves its first word to the
nearest value congruent to k modulo n.

A client's first Initial carries a destination id the client drew at random,
so it lands on whichever shard that id maps to; from then on the client
addresses the ids that shard issued, through NAT rebinding too.
"""

from __future__ import annotations

import os
from collections.abc import Callable

#: Bytes of a connection id the steering program reads.
WORD = 4
_MAX_WORD = 2**32 - 1


def shard_of(cid: bytes, n: int) -> int:
    """The shard (0..n-1) the steering program sends `cid`'s datagrams to.

    `ValueError` if `cid` is shorter than `WORD` bytes or `n` < 1."""
    if n < 1:
        raise ValueError(f"a reuseport group needs at least one shard, not {n}")
    if len(cid) < WORD:
        raise ValueError(f"a steered connection id needs at least {WORD} bytes, "
                         f"not {len(cid)}")
    return int.from_bytes(cid[:WORD], "big") % n


def issue(shard: int, n: int, length: int,
          urandom: Callable[[int], bytes] = os.urandom) -> bytes:
    """A random connection id of `length` bytes that `shard_of` maps to `shard`.

    Only the first word is moved (by less than `n`), so the id keeps all but
    log2(n) bits of its randomness. `ValueError` for a shard outside 0..n-1
    or a length below `WORD`."""
    if not 0 <= shard < n:
        raise ValueError(f"shard {shard} is not one of 0..{n - 1}")
    if length < WORD:
        raise ValueError(f"a steered connection id needs at least {WORD} bytes, "
                         f"not {length}")
    raw = urandom(length)
    word = int.from_bytes(raw[:WORD], "big")
    word += shard - word % n
    if word > _MAX_WORD:  # the top, partial band of 2**32 mod n: step down one band
        word -= n
    return word.to_bytes(WORD, "big") + raw[WORD:]
