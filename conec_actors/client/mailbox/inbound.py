"""The receiving side's bookkeeping, without I/O.

`KnownSender` is what the receiver remembers of one sending peer: the session
of the sending client instance and the last sequence number consumed, so that
items resent after a broken stream are dropped. `InboundLog` is one incoming
mailbox stream: its `RecvState`, when an ``Ack`` is due, the ``Drained`` owed
for a clean end, the asks still unanswered, and the answers waiting for the
return half (cut into frames within its size limit). `ask_deadline` and
`expired` say when an ask's deadline (carried as time left) passes on this
receiver's clock: an expired ask is dropped, never handed out. The asyncio driver
(`receiver`) subclasses both, so the per-message path reads these fields
directly.
"""

from __future__ import annotations

import math
from collections import deque

from ...transitions import move
from .limits import ACK_EVERY, ASK_HOLD_MAX, BATCH_BYTES
from .state import RECV_TRANSITIONS, RecvEvent, RecvState
from .wire import BATCH_OVERHEAD, DRAINED, Ack, Batch, encoder

#: The deadline of a tell, or of an ask without one.
NO_DEADLINE = math.inf


def ask_deadline(ttl_ms: int | None, now: float) -> float:
    """The deadline on this receiver's clock of an ask that arrives at `now`
    with `ttl_ms` milliseconds left (`wire.Ask.ttl_ms`; None: no deadline, as
    from senders older than the field)."""
    return NO_DEADLINE if ttl_ms is None else now + ttl_ms * 0.001


def expired(deadline: float, now: float) -> bool:
    """An ask with `deadline` must not be handed out at `now`: its asker has
    given up (it got `TimeoutError` from its own timer)."""
    return now >= deadline


class KnownSender:
    """What the receiver remembers of one sending peer."""

    __slots__ = ("last", "session")

    def __init__(self) -> None:
        #: The sending client instance (a new one starts its numbers afresh).
        self.session: int | None = None
        #: The last sequence number consumed.
        self.last = -1

    def begin_batch(self, session: int, seq: int) -> None:
        """A batch of `session` whose first item is `seq` arrived: a session
        not seen before starts afresh from it."""
        if self.session != session:
            self.session = session
            self.last = seq - 1

    def fresh_from(self, seq: int) -> int:
        """In a batch whose first item is `seq`, the index of the first item
        not consumed yet: those before it are duplicates (sent again after a
        broken stream) to drop."""
        return self.last - seq + 1

    def consumed(self, seq: int) -> None:
        """Every item up to `seq` was consumed (or dropped as a duplicate)."""
        if seq > self.last:
            self.last = seq


class InboundLog:
    """One incoming mailbox stream: what is owed on its return half."""

    __slots__ = ("ack_to", "back", "batch", "consumed", "drained", "hold_until",
                 "next_item", "pending_asks", "state")

    def __init__(self) -> None:
        self.state = RecvState.READING
        #: A batch not yet wholly delivered (the inbox was full) and the index
        #: of its next item.
        self.batch: Batch | None = None
        self.next_item = 0
        #: Messages consumed since the last ``Ack``.
        self.consumed = 0
        #: An ``Ack`` up to this sequence number is due.
        self.ack_to: int | None = None
        #: ``Drained`` is due (the forward half ended cleanly).
        self.drained = False
        #: Asks read from this stream and not yet answered, and until when
        #: the return half stays open for them.
        self.pending_asks = 0
        self.hold_until = 0.0
        #: Encoded answers waiting for the return half.
        self.back: deque[bytes] = deque()

    def handle(self, event: RecvEvent) -> None:
        self.state = move("incoming mailbox stream", RECV_TRANSITIONS, self.state, event)

    # -- the forward half -----------------------------------------------------------

    def asked(self, timeout: float, now: float) -> None:
        """An ask with `timeout` (0: none) was consumed at `now`: the return
        half stays open for its answer until then (or `ASK_HOLD_MAX`)."""
        self.pending_asks += 1
        hold = timeout if timeout > 0 else ASK_HOLD_MAX
        self.hold_until = max(self.hold_until, now + hold)

    def batch_done(self, count: int, sender: KnownSender) -> bool:
        """A batch of `count` items was consumed: True when an ``Ack`` became
        due (every `ACK_EVERY` messages)."""
        self.batch = None
        self.consumed += count
        if self.consumed >= ACK_EVERY:
            self.consumed = 0
            self.ack_to = sender.last
            return True
        return False

    def clean_end(self, sender: KnownSender) -> None:
        """The forward half ended cleanly and all of it was consumed: the
        fence is answered with an ``Ack`` and ``Drained``."""
        self.handle(RecvEvent.CLEAN_END)
        if sender.session is not None:
            self.ack_to = sender.last
        self.drained = True

    # -- the return half ------------------------------------------------------------

    def answered(self) -> bool:
        """An ask from this stream was answered: True when that was the last
        one the ended stream waited for."""
        self.pending_asks -= 1
        return self.state is RecvState.ENDED and self.pending_asks <= 0

    def dropped(self) -> bool:
        """An ask read from this stream expired before it was handed out: it
        will never be answered (True as for `answered`: the ended stream
        waited for it alone)."""
        return self.answered()

    def give_up_asks(self) -> None:
        """The hold expired: stop waiting for answers."""
        self.pending_asks = 0

    def has_work(self) -> bool:
        """The return half has something to send, or can be finished."""
        return bool(self.back or self.ack_to is not None or self.drained
                    or (self.state is RecvState.ENDED and self.pending_asks <= 0))

    def nothing_owed(self) -> bool:
        """Nothing waits to be sent on the return half (a reply may go at once)."""
        return not self.back and self.ack_to is None and not self.drained

    def can_finish(self) -> bool:
        """The forward half ended, its asks are answered and everything owed
        was sent: finish the return half."""
        return (self.state is RecvState.ENDED and self.pending_asks <= 0
                and self.nothing_owed())

    def cut_back(self, hard: int) -> list[bytes]:
        """The next frame's items for the return half of frame limit `hard`:
        queued answers up to `BATCH_BYTES`, then the ``Ack`` and ``Drained``
        due if they fit (else they go in the next frame)."""
        soft = min(BATCH_BYTES, hard)
        back = self.back
        items: list[bytes] = []
        size = BATCH_OVERHEAD
        while back and (not items or size + len(back[0]) <= soft):
            item = back.popleft()
            items.append(item)
            size += len(item)
        if self.ack_to is not None:
            ack = encoder.encode(Ack(self.ack_to))
            if not items or size + len(ack) <= hard:
                items.append(ack)
                size += len(ack)
                self.ack_to = None
        if self.drained and (not items or size + len(DRAINED) <= hard):
            items.append(DRAINED)
            self.drained = False
        return items
