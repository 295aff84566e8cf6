"""The broadcast workers' book: membership, counts and epochs of the
broadcasts on this shard. Sans-I/O: messages in, replies out.

The front-end carries the payload and fans it out; this book decides who is
a member, what the counts are, when a broadcast ends and when a name starts
afresh (a new epoch). Every request is idempotent so the front-end can
replay what was in flight to a worker that died.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import wire
from .ipc import (
    BroadcastReply,
    Count,
    Join,
    Leave,
    Member,
    RebuildBroadcasts,
    Shutdown,
    StatsReply,
    StatsRequest,
    ToWorker,
)

#: Members of one broadcast; a join beyond this is refused.
MAX_MEMBERS = 1024


@dataclass
class _Broadcast:
    epoch: int
    senders: set[Member] = field(default_factory=set)
    receivers: set[Member] = field(default_factory=set)

    def reply(self, req: int, ended: str = "") -> BroadcastReply:
        return BroadcastReply(req, 0, self.epoch, len(self.senders), len(self.receivers),
                              ended)


class BroadcastBook:
    """All broadcasts of one shard."""

    def __init__(self) -> None:
        self.broadcasts: dict[str, _Broadcast] = {}
        self._epoch = 0
        self.handled = 0
        self.joins = 0
        self.ended = 0

    def _new_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    def handle(self, msg: ToWorker) -> BroadcastReply | StatsReply | None:
        self.handled += 1
        if isinstance(msg, Join):
            b = self.broadcasts.get(msg.name)
            if b is None:
                b = self.broadcasts[msg.name] = _Broadcast(self._new_epoch())
            if msg.member not in b.receivers and len(b.receivers | b.senders) >= MAX_MEMBERS:
                return BroadcastReply(msg.req, wire.Code.BROADCAST_FULL, b.epoch,
                                      len(b.senders), len(b.receivers))
            if msg.member not in b.receivers:
                self.joins += 1
            b.senders.add(msg.member)
            b.receivers.add(msg.member)
            return b.reply(msg.req)
        if isinstance(msg, Leave):
            b = self.broadcasts.get(msg.name)
            if b is None or b.epoch != msg.epoch:
                # Already over (a replay, or the front-end raced the end).
                return BroadcastReply(msg.req, wire.Code.NO_SUCH_BROADCAST, msg.epoch)
            if msg.sending:
                b.senders.discard(msg.member)
            if msg.receiving:
                b.receivers.discard(msg.member)
            ended = ""
            if not b.receivers:
                ended = "no-readers"
            elif not b.senders:
                ended = "finished"
            if ended:
                del self.broadcasts[msg.name]
                self.ended += 1
            return b.reply(msg.req, ended)
        if isinstance(msg, Count):
            b = self.broadcasts.get(msg.name)
            if b is None:
                return BroadcastReply(msg.req, wire.Code.NO_SUCH_BROADCAST)
            return b.reply(msg.req)
        if isinstance(msg, RebuildBroadcasts):
            self.broadcasts = {
                s.name: _Broadcast(s.epoch, set(s.senders), set(s.receivers))
                for s in msg.broadcasts}
            self._epoch = max([self._epoch, *(s.epoch for s in msg.broadcasts)])
            return BroadcastReply(msg.req)
        if isinstance(msg, StatsRequest):
            return StatsReply(msg.req, {
                "broadcasts": len(self.broadcasts), "handled": self.handled,
                "joins": self.joins, "ended": self.ended,
                "members": sum(len(b.receivers) for b in self.broadcasts.values())})
        if isinstance(msg, Shutdown):
            return BroadcastReply(msg.req)
        return None

