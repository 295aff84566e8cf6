"""The sending side's bookkeeping, without I/O: the outbound log of one
(sender, receiver) pair and the state of one outgoing stream.

`OutboundLog` numbers the pair's tells and asks (one sequence per pair),
holds them queued and then sent-but-unacknowledged, cuts them into batches
within the size limits, trims them on ``Ack``, and gives what to resend on a
new stream after a broken one. It also keeps the pair's size limit (the
Coordinator's at first, then the smallest of every path opened) and counts
the failures that make a route dead, and decides what a dead route means:
`NoResponders` for what is sent next, `PeerGone` for the asks it carried.
`SendRoute` is the state of one stream (`SendState`). The asyncio driver
(`sender`) subclasses both, so the hot path reads these fields directly.
"""

from __future__ import annotations

import math
from collections import deque

import msgspec

from ...errors import (
    ClientClosed,
    ConecError,
    MessageTooLarge,
    NoResponders,
    NoSuchPeer,
    PeerGone,
)
from ...transitions import move
from .limits import (
    ASK_TTL_MAX_MS,
    BATCH_BYTES,
    PAIR_QUEUE_BYTES,
    PAIR_QUEUE_ITEMS,
    REOPEN_ATTEMPTS,
    REOPEN_BACKOFF,
    ROUTE_SETTLED,
)
from .state import (
    PAIR_TRANSITIONS,
    SEND_TRANSITIONS,
    PairEvent,
    PairState,
    SendEvent,
    SendState,
)
from .wire import BATCH_OVERHEAD, Ask


def check_size(peer: str, item: bytes, max_message_size: int) -> None:
    """`MessageTooLarge` if `item` does not fit one frame of `max_message_size`."""
    limit = max_message_size - BATCH_OVERHEAD
    if len(item) > limit:
        raise MessageTooLarge(
            f"message of {len(item)} encoded bytes exceeds the message size limit toward "
            f"{peer!r} ({limit} bytes for a tell or ask, max_message_size "
            f"{max_message_size})")


def ttl_ms(timeout: float | None) -> int | None:
    """The deadline an ask carries (`wire.Ask.ttl_ms`): the `timeout` left
    when it is sent, in milliseconds rounded up; None for no timeout (or one
    beyond `ASK_TTL_MAX_MS`). 0 means it had expired already."""
    if timeout is None:
        return None
    ms = math.ceil(timeout * 1000.0) if timeout > 0 else 0
    return ms if ms <= ASK_TTL_MAX_MS else None


def ask_id_of(item: bytes) -> int | None:
    """The id of an encoded `Ask` item; None for a tell (or anything else)."""
    try:
        decoded = msgspec.msgpack.decode(item)
    except msgspec.DecodeError:
        return None
    if (isinstance(decoded, list) and len(decoded) > 1
            and decoded[0] == Ask.__struct_config__.tag and isinstance(decoded[1], int)):
        return decoded[1]
    return None


def copy_error(err: ConecError) -> ConecError:
    """A fresh instance to raise (one instance raised many times grows its
    traceback): a `ClientClosed`, `PeerGone` or `NoResponders` (anything
    else becomes one) with the same message and cause."""
    kind = type(err) if isinstance(err, ClientClosed | PeerGone | NoResponders) \
        else NoResponders
    fresh: ConecError = kind(str(err))
    fresh.__cause__ = err.__cause__
    return fresh


class OutboundLog:
    """The outbound log of one (sender, receiver) pair."""

    __slots__ = ("asks_kept", "awaiting", "dead", "failures", "frames", "limit", "messages",
                 "next_seq", "opened", "peer", "queue", "queued_bytes", "state", "unacked")

    def __init__(self, peer: str, limit: int) -> None:
        self.peer = peer
        #: The pair's message size limit (max_message_size of a frame): the
        #: Coordinator's, then the smallest of every path opened to the peer.
        self.limit = limit
        self.state = PairState.OPENING
        #: A stream has opened (the peer was there): asks may be waiting on it.
        self.opened = False
        #: Why the pair died (set with `PairState.DEAD`): what the next tell
        #: or ask to the peer raises (`NoResponders` or `ClientClosed`).
        self.dead: ConecError | None = None
        #: (seq, encoded item) waiting to be sent, then sent but not yet
        #: acknowledged by the receiver (resent if the stream breaks).
        self.queue: deque[tuple[int, bytes]] = deque()
        self.unacked: deque[tuple[int, bytes]] = deque()
        self.queued_bytes = 0
        self.next_seq = 0
        #: Ids of the asks sent on this pair and not answered yet.
        self.awaiting: set[int] = set()
        #: ask id -> (seq, item) of those acknowledged but not answered: a
        #: broken stream may have lost their answer, so they go again on the
        #: next one (the receiver, which has them, answers them again).
        self.asks_kept: dict[int, tuple[int, bytes]] = {}
        #: Stream failures in a row without progress.
        self.failures = 0
        self.frames = 0
        self.messages = 0

    # -- the pair's life ------------------------------------------------------

    def handle(self, event: PairEvent) -> None:
        self.state = move("mailbox pair", PAIR_TRANSITIONS, self.state, event)
        if event is PairEvent.ROUTED:
            self.opened = True

    def learn_limit(self, path_limit: int) -> None:
        """A stream opened on a path of `path_limit`: the pair's limit is the
        smallest seen."""
        self.limit = min(self.limit, path_limit)

    def kill(self, exc: ConecError) -> tuple[ConecError, ConecError]:
        """The route is dead because of `exc`: forget every message. Returns
        (`dead`, the error for the asks pending on the pair). `dead` is what
        the next tell or ask raises: `ClientClosed` if the client closed,
        else `NoResponders` (the peer is not there). The pending asks get
        `PeerGone` if a stream had opened (the peer was there and went away
        with them), else `dead`."""
        if isinstance(exc, ClientClosed):
            dead: ConecError = exc
        elif isinstance(exc, NoSuchPeer):
            dead = exc if isinstance(exc, NoResponders) else NoResponders(str(exc))
            dead.__cause__ = exc.__cause__
        else:
            dead = NoResponders(f"the mailbox route to {self.peer!r} failed: {exc}")
        self.handle(PairEvent.KILL)
        self.dead = dead
        self.queue.clear()
        self.unacked.clear()
        self.awaiting.clear()
        self.asks_kept.clear()
        self.queued_bytes = 0
        if self.opened and not isinstance(dead, ClientClosed):
            gone = PeerGone(f"{self.peer!r} went away before answering ({dead})")
            gone.__cause__ = dead.__cause__
            return dead, gone
        return dead, dead

    # -- messages in ----------------------------------------------------------------

    def full(self) -> bool:
        return len(self.queue) >= PAIR_QUEUE_ITEMS or self.queued_bytes >= PAIR_QUEUE_BYTES

    def push(self, item: bytes) -> None:
        """Queue `item` under the next sequence number."""
        self.queue.append((self.next_seq, item))
        self.next_seq += 1
        self.queued_bytes += len(item)

    def sent_alone(self, item: bytes) -> None:
        """`item` went in a frame of its own under `next_seq`, past the queue
        (the idle line's fast path)."""
        self.unacked.append((self.next_seq, item))
        self.next_seq += 1
        self.frames += 1
        self.messages += 1

    # -- batches out -----------------------------------------------------------------

    def cut_batch(self, hard: int) -> tuple[int, list[bytes]]:
        """The next batch from the queue: (seq of its first item, items), up
        to `BATCH_BYTES` (or `hard`, the frame limit, if smaller); a single
        larger item goes alone. The items become unacknowledged."""
        return self._cut(self.queue, hard, True)

    def cut_resend(self, resend: deque[tuple[int, bytes]], hard: int
                   ) -> tuple[int, list[bytes]]:
        """The next batch of `resend` (from `to_resend`), cut as `cut_batch`."""
        return self._cut(resend, hard, False)

    def _cut(self, src: deque[tuple[int, bytes]], hard: int, from_queue: bool
             ) -> tuple[int, list[bytes]]:
        soft = min(BATCH_BYTES, hard)
        items: list[bytes] = []
        size = BATCH_OVERHEAD
        seq0 = src[0][0]
        while src:
            seq, data = src[0]
            if items and size + len(data) > soft:
                break
            if seq != seq0 + len(items):  # a batch's items are consecutive
                break
            src.popleft()
            items.append(data)
            size += len(data)
            if from_queue:
                self.queued_bytes -= len(data)
                self.unacked.append((seq, data))
        return seq0, items

    def sent(self, count: int) -> None:
        """A frame of `count` items went on the wire."""
        self.frames += 1
        self.messages += count

    def drop(self, seq: int, item: bytes) -> None:
        """Forget an item that no path will carry (too large for it)."""
        try:
            self.unacked.remove((seq, item))
        except ValueError:
            pass

    # -- answers in, and path changes ---------------------------------------------------

    def acked(self, seq: int) -> None:
        """The receiver consumed every message up to `seq`."""
        unacked = self.unacked
        awaiting = self.awaiting
        while unacked and unacked[0][0] <= seq:
            s, data = unacked.popleft()
            if awaiting:  # (a tell-only pair decodes nothing)
                ask_id = ask_id_of(data)
                if ask_id is not None and ask_id in awaiting:
                    self.asks_kept[ask_id] = (s, data)

    def ask_waiting(self, ask_id: int) -> None:
        """An ask is being sent on this pair (`ask_done` when it is over)."""
        self.awaiting.add(ask_id)

    def ask_done(self, ask_id: int) -> None:
        """An ask was answered, failed or given up: never send it again."""
        self.awaiting.discard(ask_id)
        self.asks_kept.pop(ask_id, None)

    def progressed(self) -> None:
        """The receiver answered on the current stream: the route works."""
        self.failures = 0

    def to_resend(self) -> deque[tuple[int, bytes]]:
        """What to send again on a new stream after a broken one: everything
        the receiver has not acknowledged (it drops what it already has), and
        the asks it acknowledged but has not answered (it answers them again
        from what it keeps, without running them twice)."""
        if not self.asks_kept:
            return deque(self.unacked)
        return deque(sorted([*self.asks_kept.values(), *self.unacked]))

    def route_broke(self, progress: bool, lived: float) -> float:
        """A stream broke after `lived` seconds (`progress`: the receiver had
        answered on it): the delay before reopening. `NoSuchPeer` once it
        broke `REOPEN_ATTEMPTS` times in a row without progress."""
        if progress or lived >= ROUTE_SETTLED:
            return 0.0
        self.failures += 1
        if self.failures >= REOPEN_ATTEMPTS:
            raise NoSuchPeer(f"the mailbox route to {self.peer!r} keeps failing")
        return REOPEN_BACKOFF * self.failures

    def open_failed(self, exc: ConecError) -> float:
        """Opening a stream failed with `exc`: the delay before trying again;
        `NoSuchPeer` after `REOPEN_ATTEMPTS` failures in a row."""
        self.failures += 1
        if self.failures >= REOPEN_ATTEMPTS:
            raise NoSuchPeer(f"cannot open a mailbox stream to {self.peer!r}: {exc}") from None
        return REOPEN_BACKOFF * self.failures


class SendRoute:
    """One outgoing mailbox stream: its path, its age and its `SendState`."""

    __slots__ = ("kind", "opened_at", "progress", "state")

    def __init__(self, kind: str, now: float) -> None:
        #: ``"direct"`` or ``"proxied"``.
        self.kind = kind
        self.opened_at = now
        self.state = SendState.OPEN
        #: The receiver answered something on it.
        self.progress = False

    def handle(self, event: SendEvent) -> None:
        """A move this side makes (finish, break)."""
        self.state = move("mailbox stream", SEND_TRANSITIONS, self.state, event)

    def receive(self, event: SendEvent) -> None:
        """A move the receiver caused (`ProtocolError` if not allowed)."""
        self.state = move("mailbox stream", SEND_TRANSITIONS, self.state, event,
                          by_peer=True)
