"""Two shortcuts through nats-py on the payload path between Coordinators,
each worth a loop turn on the latency of every batch (measured by
`bench/federation.py`: ask p50 between hosts 2.4x -> 1.9-2.1x of one
Coordinator's on this machine).

nats-py hands a published message to a flusher task, and a received one to
a task per callback subscription; both wake the loop once more. Here a
batch is written straight to nats-py's transport when nothing of its own
waits to be written (`write_now`), and a subscription's messages are handled
as nats-py's reader parses them (`Inline`). Both reach into nats-py's
internals (the `cluster` extra keeps it below 3); when those are not as
expected, `write_now` says no and `Inline.install` refuses, and
`tests/test_nats_fast.py` fails, so an upgrade that moves them is seen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def write_now(nc: Any, subject: str, data: bytes) -> bool:
    """Write a PUB of `data` on `subject` to `nc`'s connection now, if
    nothing nats-py queued waits before it (the order of what we publish is
    kept: the caller writes nothing through `publish` meanwhile) and it is
    connected. False: use `publish`."""
    transport = getattr(nc, "_transport", None)
    if transport is None or getattr(nc, "_pending_data_size", None) != 0 or \
            not nc.is_connected or nc.is_reconnecting:
        return False
    # NATS's own protocol: PUB <subject> [reply-to] <#bytes>\r\n<payload>\r\n
    transport.writelines([f"PUB {subject} {len(data)}\r\n".encode(), data, b"\r\n"])
    return True


class Inline:
    """Stands in for a nats-py subscription's queue of pending messages and
    hands each to `handle` as nats-py's reader parses it (no task between).
    What `handle` does is bounded (the streams' credit) and nothing is held
    here, so the subscription is never a slow consumer."""

    def __init__(self, sub: Any, handle: Callable[[Any], None]) -> None:
        self._sub = sub
        self._handle = handle

    @classmethod
    def install(cls, sub: Any, handle: Callable[[Any], None]) -> None:
        """Take `sub`'s messages (a subscription made without `cb`)."""
        if getattr(sub, "_cb", None) is not None or not hasattr(sub, "_pending_queue") \
                or not hasattr(sub, "_pending_size"):
            raise RuntimeError("nats-py's subscriptions changed: cannot take messages inline")
        sub._pending_queue = cls(sub, handle)

    def put_nowait(self, msg: Any) -> None:
        self._sub._pending_size = 0
        try:
            self._handle(msg)
        except Exception:
            log.exception("error handling a message from NATS")

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def full(self) -> bool:
        return False

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        pass

    async def get(self) -> Any:
        raise RuntimeError("messages are handled inline")
