"""Tell and ask: the per-client mailbox machinery behind `Client.tell`,
`Client.ask` and `Client.mailbox`.

Sending. Each (sender, receiver) pair has one *mailbox stream* (a data
stream whose header carries the purpose ``"mailbox"``), a bounded queue and
one writer task. `tell` encodes the message, checks its size and puts it in
the queue; it waits only while the queue is full, and the first tell to a
peer also waits until the stream has opened (``NoResponders``, a ``NoSuchPeer``,
if the peer is not connected). The writer drains the queue: when several tells are queued
it packs them into one frame, and it flushes as soon as the queue is empty,
so an idle line sends each tell at once and a busy one batches (no timers).
On an idle line (nothing queued, the writer waiting, the route settled and
nothing unsent on the stream) `tell` and `ask` skip the queue and write the
frame themselves, which is what the writer would do one loop turn later;
replies take the same shortcut on the return half.

Path. The stream rides the direct channel when one is open and the
Coordinator otherwise; mailbox streams never open channels. When the path
changes, the writer *fences* the old stream before using the new one: it
finishes the old stream and waits until the receiver has consumed all of it
(the receiver answers the clean end with ``Drained``), while tells queued
meanwhile wait. When a stream breaks instead (a channel closed under it), the
writer reopens on the current path and resends what the receiver has not
acknowledged yet; items carry per-pair sequence numbers and the receiver drops
duplicates, so order holds and nothing is lost while the peer stays
connected. When the peer is gone the reopen fails: the route is dead,
queued and in-flight tells are lost, pending asks fail at once with
``PeerGone`` (the peer was reached, and went away before answering), and the
next tell raises ``NoResponders``. So an ask to a peer that closes fails as
soon as its stream is reset, and to one whose connection is lost once the
Coordinator (or, on a channel, the channel) notices, within its idle timeout.

Deadlines. An ask carries the time its asker still waits (``Ask.ttl_ms``,
milliseconds, measured when it is sent); the receiver adds it to its own
clock when the ask arrives (so the hosts' clocks need not agree) and drops
the ask if that deadline passes before it is handed out: `client.mailbox`,
typed mailboxes and `Actor.receive` never see it, and nothing is answered
(the asker's own timer raised `TimeoutError`).

Limits. A pair's size limit is the Coordinator's at first, then the
smallest of every path the pair has opened (the stream's `max_message_size`:
a channel's is the smaller of both ends', a proxied stream's the smallest of
both clients' and the Coordinator's), so the first tell to a peer is checked
once its route has opened and `tell`/`ask` raise ``MessageTooLarge`` rather
than a path dropping the message later. A reply is checked against the return
half it will take; one too large fails that ask alone
(``RemoteError("MessageTooLarge", ...)`` at the asker).

Closing. `Client.close` first drains: new tells and asks raise
``ClientClosed``, and each pair's writer sends what is queued, then fences its
stream (finish, wait for ``Drained``), within `client.CLOSE_DRAIN` (5 s) however
the receivers read.

Receiving. Every incoming mailbox stream is read as its frames arrive, from
the stream's wake-up callback (no reader task in between), into one bounded
inbox (`Client.mailbox`): a receiver that does not read leaves frames unread
in the streams, their flow control stalls and the senders' queues fill, so
their tells wait. Replies to asks, acknowledgements and the fence answer
travel back on the return half of the stream, whose answers are likewise
handled as they arrive.

Wire format (`wire`: msgpack, array-like tagged structs): every frame on a
mailbox stream is one `Batch` ``["mbox", version, session, seq, items]``. Forward
items are `Tell` and `Ask`; `seq` numbers the first of them and the rest
follow consecutively; `session` identifies the sending client instance.
Backward items are `Reply`, `Fail`, `Ack` and `Drained`. Bodies are raw
msgpack (`msgspec.Raw`), decoded lazily with the type the receiver asks for.

Bodies that do not decode. A typed reader (`Mailbox.typed(T)`,
`Actor.message_type`) skips an envelope whose body does not decode as ``T``:
it logs a warning and, for an ask, answers with a ``DecodeError`` failure, so
the asker gets ``RemoteError("DecodeError", ...)`` at once.

The package. A sans-I/O core holds the rules: `state` (the state machines of
a pair, an outgoing stream and an incoming stream, as transition tables),
`outbound` (a pair's numbers, queue, batches, acks, resends and size limit),
`inbound` (each sender's session and duplicates, acks and the fence answer
owed), `wire` (the format) and `limits`. Small asyncio drivers run it:
`sender` (`tell`, `ask`, one writer task per pair), `receiver` (incoming
streams into the inbox), `envelope` (`Mailbox`, `TypedMailbox`, `Envelope`).
The mailbox reaches its client only through `host.MailboxHost`.
"""

from .envelope import Envelope, Mailbox, TypedMailbox
from .host import MailboxHost

__all__ = ["Envelope", "Mailbox", "MailboxHost", "TypedMailbox"]
