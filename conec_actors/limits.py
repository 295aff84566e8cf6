"""Limits two sides agree on: each announces its own, both keep to the smaller.

On the wire a limit of 0 means unknown (an older peer, or a message that does
not carry it): it never lowers the agreed value.
"""

from __future__ import annotations


def effective_limit(*values: int) -> int:
    """The smallest of `values` that is known (> 0); 0 if none is.

    For max_message_size: a client's own and the Coordinator's when a client
    says hello, both ends' when a stream opens, both peers' on a channel, the
    least of a broadcast's receivers.
    """
    best = 0
    for v in values:
        if v > 0 and (best == 0 or v < best):
            best = v
    return best
