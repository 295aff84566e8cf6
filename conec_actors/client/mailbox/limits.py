"""Every named limit of the mailbox, in one place."""

from __future__ import annotations

#: Header `purpose` of mailbox streams.
PURPOSE = "mailbox"
#: A pair's send queue holds this many messages or bytes before `tell` waits.
PAIR_QUEUE_ITEMS = 1024
PAIR_QUEUE_BYTES = 1024 * 1024
#: A batch grows up to this many bytes (a single larger message goes alone,
#: up to the message size limit): big enough to amortise per-frame costs,
#: small enough to keep frames pipelined within a stream window.
BATCH_BYTES = 64 * 1024
#: The inbox (`client.mailbox`) holds this many envelopes or bytes before the
#: stream readers wait (and flow control pushes back on the senders).
INBOX_ITEMS = 1024
INBOX_BYTES = 4 * 1024 * 1024
#: Replies waiting for a return half before `Envelope.reply` waits.
BACK_QUEUE_ITEMS = 1024
#: The latest answers kept per sender (count and bytes), to answer again an
#: ask sent again after a broken stream lost its answer.
ANSWERS_KEPT = 256
ANSWERS_KEPT_BYTES = 1024 * 1024
#: The receiver acknowledges after consuming this many messages (and at a
#: stream's clean end); the sender keeps unacknowledged ones for resending.
ACK_EVERY = 256
#: Mailbox streams a client accepts at once (one per sending peer).
MAX_MAILBOX_STREAMS = 4096
#: A route that breaks this many times in a row without progress is dead.
REOPEN_ATTEMPTS = 3
#: The n-th failure in a row waits n times this long before the next attempt.
REOPEN_BACKOFF = 0.05
#: A stream that lived this long before breaking counts as progress.
ROUTE_SETTLED = 1.0
#: The receiver forgets a sender's sequence numbers this long after its last
#: mailbox stream ended.
SENDER_TTL = 60.0
#: How long a finished stream's return half stays open for the replies of an
#: ask sent without a timeout.
ASK_HOLD_MAX = 300.0
#: A failure message is cut to this many bytes (and to what fits the path back).
FAIL_MESSAGE_MAX = 4096
#: An ask's deadline travels as milliseconds left (`wire.Ask.ttl_ms`); a
#: timeout longer than this (about 24 days) travels as none.
ASK_TTL_MAX_MS = 2**31 - 1
