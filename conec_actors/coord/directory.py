"""The routing workers' directory shard: sans-I/O, messages in, replies out."""

from __future__ import annotations

from .. import wire
from .ipc import (
    Entry,
    Lookup,
    Rebuild,
    Register,
    Reply,
    Shutdown,
    StatsReply,
    StatsRequest,
    ToWorker,
    Unregister,
)


class Directory:
    """Index of the client ids on this shard: id -> `Entry`.

    Every request is idempotent, so the front-end can replay requests that
    were in flight to a worker that died.

    An id is held by one connection. Another connection registering it is
    refused (`DUPLICATE_ID`) unless it authenticated with the same
    certificate: then it is the same client reconnecting, whose old
    connection is stale (not yet timed out). It takes the id at once, and
    the reply carries the stale entry, which the front-end then closes.
    """

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.handled = 0
        self.lookups = 0
        self.admitted = 0
        self.refused = 0
        self.replaced = 0

    def handle(self, msg: ToWorker) -> Reply | StatsReply | None:
        self.handled += 1
        if isinstance(msg, Lookup):
            self.lookups += 1
            entry = self.entries.get(msg.dst)
            if entry is None:
                return Reply(msg.req, wire.Code.NO_SUCH_PEER)
            return Reply(msg.req, 0, entry)
        if isinstance(msg, Register):
            e = msg.entry
            held = self.entries.get(e.client_id)
            if held is not None and (held.frontend, held.conn_key) != (e.frontend, e.conn_key):
                if held.cert != e.cert:
                    self.refused += 1
                    return Reply(msg.req, wire.Code.DUPLICATE_ID, held)
                self.replaced += 1
                self.entries[e.client_id] = e
                return Reply(msg.req, 0, held)  # the stale entry: close it
            if held is None:
                self.admitted += 1
            self.entries[e.client_id] = e
            return Reply(msg.req, 0, e)
        if isinstance(msg, Unregister):
            held = self.entries.get(msg.client_id)
            if held is not None and (held.frontend, held.conn_key) == (msg.frontend, msg.conn_key):
                del self.entries[msg.client_id]
            return Reply(msg.req, 0)
        if isinstance(msg, Rebuild):
            self.entries = {e.client_id: e for e in msg.entries}
            return Reply(msg.req, 0)
        if isinstance(msg, StatsRequest):
            return StatsReply(msg.req, {
                "entries": len(self.entries), "handled": self.handled,
                "lookups": self.lookups, "admitted": self.admitted,
                "refused": self.refused, "replaced": self.replaced,
            })
        if isinstance(msg, Shutdown):
            return Reply(msg.req, 0)
        return None
