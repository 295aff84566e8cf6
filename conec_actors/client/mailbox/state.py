"""The mailbox's state machines, as data.

Three machines, each an enum of states and a table ``(state, event) -> new
state``, moved by `conec_actors.transitions.move`: a move the table does not
list raises `LocalProtocolError` (the driver asked for something its state
does not allow: a bug), or, for an event the peer caused (``by_peer=True``),
`RemoteProtocolError`, a `ProtocolError` (the peer broke the protocol).

* `PairState`: this client's sending side toward one peer. It opens its first
  stream, delivers, and either drains (the client closes) or dies (the peer
  is gone).
* `SendState`: one outgoing mailbox stream. Open until the writer fences it
  (finishes it to change path or to close) and the receiver answers
  ``Drained``, or until it breaks (reset, closed, a protocol error).
* `RecvState`: one incoming mailbox stream. Its forward half is read until it
  ends cleanly (the fence: answered with ``Drained``) or fails; its return half
  carries replies until it is done.
"""

from __future__ import annotations

import enum

# --- the sending side toward one peer ------------------------------------------------

class PairState(enum.Enum):
    #: No stream has opened yet: the first tells wait (and learn the size limit).
    OPENING = enum.auto()
    #: A route exists (the current stream may be between paths).
    OPEN = enum.auto()
    #: The client is closing: deliver what is queued, fence, end.
    DRAINING = enum.auto()
    #: The peer is gone (or the client closed): everything waiting fails.
    DEAD = enum.auto()


class PairEvent(enum.Enum):
    ROUTED = enum.auto()  #: the first stream opened
    DRAIN = enum.auto()   #: the client began closing
    KILL = enum.auto()    #: the route failed for good, or the client closed


PAIR_TRANSITIONS: dict[tuple[PairState, PairEvent], PairState] = {
    (PairState.OPENING, PairEvent.ROUTED): PairState.OPEN,
    (PairState.OPENING, PairEvent.DRAIN): PairState.DRAINING,
    (PairState.OPENING, PairEvent.KILL): PairState.DEAD,
    (PairState.OPEN, PairEvent.DRAIN): PairState.DRAINING,
    (PairState.OPEN, PairEvent.KILL): PairState.DEAD,
    # Draining before the first stream opened: it opens, and delivers.
    (PairState.DRAINING, PairEvent.ROUTED): PairState.DRAINING,
    (PairState.DRAINING, PairEvent.KILL): PairState.DEAD,
}


# --- one outgoing stream --------------------------------------------------------------

class SendState(enum.Enum):
    #: Carrying tells and asks.
    OPEN = enum.auto()
    #: Finished by the writer, waiting for the receiver's ``Drained``.
    FENCING = enum.auto()
    #: The receiver consumed all of it: the next stream may carry on.
    DRAINED = enum.auto()
    #: Reset, closed or failed: reopen, and resend what is unacknowledged.
    BROKEN = enum.auto()


class SendEvent(enum.Enum):
    FINISH = enum.auto()      #: the writer finished the forward half (fence)
    DRAINED = enum.auto()     #: the receiver answered ``Drained``
    RETURN_END = enum.auto()  #: the return half ended cleanly
    BREAK = enum.auto()       #: reset, closed, or a protocol error


SEND_TRANSITIONS: dict[tuple[SendState, SendEvent], SendState] = {
    (SendState.OPEN, SendEvent.FINISH): SendState.FENCING,
    (SendState.OPEN, SendEvent.BREAK): SendState.BROKEN,
    # The receiver ended the stream unasked.
    (SendState.OPEN, SendEvent.RETURN_END): SendState.BROKEN,
    (SendState.FENCING, SendEvent.DRAINED): SendState.DRAINED,
    # The return half ends after ``Drained`` (its end alone also ends the fence).
    (SendState.FENCING, SendEvent.RETURN_END): SendState.DRAINED,
    (SendState.FENCING, SendEvent.BREAK): SendState.BROKEN,
    (SendState.DRAINED, SendEvent.RETURN_END): SendState.DRAINED,
    (SendState.DRAINED, SendEvent.BREAK): SendState.BROKEN,
    # What still comes on a broken stream changes nothing.
    (SendState.BROKEN, SendEvent.DRAINED): SendState.BROKEN,
    (SendState.BROKEN, SendEvent.RETURN_END): SendState.BROKEN,
    (SendState.BROKEN, SendEvent.BREAK): SendState.BROKEN,
}


# --- one incoming stream --------------------------------------------------------------

class RecvState(enum.Enum):
    #: The forward half is being read; the return half carries answers.
    READING = enum.auto()
    #: The forward half ended cleanly (``Drained`` is owed); the return half
    #: stays open until the asks read from it are answered.
    ENDED = enum.auto()
    #: Both halves are done (or given up).
    CLOSED = enum.auto()


class RecvEvent(enum.Enum):
    CLEAN_END = enum.auto()  #: the forward half ended cleanly
    FAIL = enum.auto()       #: the forward half failed, or the mailbox closed
    BACK_DONE = enum.auto()  #: the return half finished or failed


RECV_TRANSITIONS: dict[tuple[RecvState, RecvEvent], RecvState] = {
    (RecvState.READING, RecvEvent.CLEAN_END): RecvState.ENDED,
    (RecvState.READING, RecvEvent.FAIL): RecvState.CLOSED,
    (RecvState.READING, RecvEvent.BACK_DONE): RecvState.CLOSED,
    (RecvState.ENDED, RecvEvent.FAIL): RecvState.CLOSED,
    (RecvState.ENDED, RecvEvent.BACK_DONE): RecvState.CLOSED,
    # The return half's writer ends after the forward half failed.
    (RecvState.CLOSED, RecvEvent.BACK_DONE): RecvState.CLOSED,
}
