"""What the user holds: `Mailbox` (`client.mailbox`), `TypedMailbox` and
`Envelope`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast, overload

import msgspec

from ...errors import MessageTooLarge
from ...wire import DECODE_ERRORS
from .host import MailboxHost
from .inbound import NO_DEADLINE, expired
from .limits import FAIL_MESSAGE_MAX, PURPOSE
from .receiver import InRoute, Receiver
from .sender import Outbox
from .state import PairEvent, SendState
from .wire import Fail, ReplyOut, any_decoder, decoder_for, encoder

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Room a `Fail` item needs besides its message.
_FAIL_ROOM = 64


class Envelope(Generic[T]):
    """A message told or asked by `sender`, as read from `client.mailbox`.

    `body` is the decoded message: builtins (``bytes`` stay ``bytes``, a
    Struct arrives as a ``dict``) unless the reader asked for a type. For an
    ask (`is_ask`), `await envelope.reply(value)` sends the answer; for a tell
    it does nothing.
    """

    __slots__ = ("_ask_id", "_receiver", "_replied", "_route", "body", "sender")

    def __init__(self, sender: str, body: T, ask_id: int | None, route: InRoute | None,
                 receiver: Receiver) -> None:
        self.sender = sender
        self.body = body
        self._ask_id = ask_id
        self._route = route
        self._receiver = receiver
        self._replied = False

    @property
    def is_ask(self) -> bool:
        """True for an `ask` (which waits for `reply`), False for a `tell`."""
        return self._ask_id is not None

    async def reply(self, value: Any) -> None:
        """Answer an ask with `value` (bytes or any msgspec-encodable value);
        a no-op for a tell or an ask already answered.

        Raises `MessageTooLarge` if the encoded answer exceeds the size limit
        of the path back to the asker (the smallest of both clients' and, when
        proxied, the Coordinator's); the asker then gets
        `RemoteError("MessageTooLarge", ...)` at once and the path stays usable.
        and `TypeError` if `value` cannot be encoded (nothing is sent: answer
        again or let the asker time out).
        """
        if self._ask_id is None or self._replied:
            return
        item = encoder.encode(ReplyOut(self._ask_id, value))
        # The limit of the path back to the asker (a channel's is the smaller
        # of both ends'), checked here so an answer too large for it fails
        # this ask alone instead of the return half.
        limit = self._receiver.back_limit(self.sender, self._route)
        if len(item) > limit:
            err = MessageTooLarge(f"the reply of {len(item)} bytes exceeds the message "
                                  f"size limit toward {self.sender!r} ({limit} bytes for "
                                  "a reply)")
            await self._fail("MessageTooLarge", str(err))
            raise err
        await self._send(item)

    async def _fail(self, type_name: str, message: str) -> None:
        """Answer an ask with a failure (raised as `RemoteError` by the asker)."""
        if self._ask_id is None or self._replied:
            return
        # Cut the message so that the failure itself fits the path back.
        room = min(FAIL_MESSAGE_MAX,
                   self._receiver.back_limit(self.sender, self._route) - _FAIL_ROOM)
        message = message.encode()[:max(0, room)].decode(errors="ignore")
        await self._send(encoder.encode(Fail(self._ask_id, type_name, message)))

    async def _send(self, item: bytes) -> None:
        self._replied = True
        self._receiver.asks_taken -= 1
        route = self._route
        assert route is not None and self._ask_id is not None
        await self._receiver.answer(self.sender, route, item, self._ask_id)

    def __repr__(self) -> str:
        kind = "ask" if self.is_ask else "tell"
        return f"<Envelope {kind} from {self.sender!r}: {self.body!r}>"


class TypedMailbox(Generic[T]):
    """`client.mailbox.typed(T)`: an async iterator of `Envelope[T]`."""

    __slots__ = ("_decoder", "_mailbox", "_type")

    def __init__(self, mailbox: Mailbox, typ: Any) -> None:
        self._mailbox = mailbox
        self._type = typ
        self._decoder = decoder_for(typ)

    def __aiter__(self) -> TypedMailbox[T]:
        return self

    async def __anext__(self) -> Envelope[T]:
        env = await self._mailbox._next(self._decoder, self._type)
        if env is None:
            raise StopAsyncIteration
        return cast(Envelope[T], env)


class Mailbox(Outbox):
    """The mailbox component of a `Client` (`client.mailbox`).

    Iterate it (``async for envelope in client.mailbox``) to read what other
    clients told or asked this one; it ends when the client closes. Use
    `typed(T)` to decode bodies as ``T``. `tell` and `ask` are also available
    on the client itself.
    """

    # The sending half is the base class (not a member) so that `tell` and
    # `ask` cost no forwarding call; the receiving half is a member.

    def __init__(self, host: MailboxHost) -> None:
        super().__init__(host)
        self._receiver = Receiver(host, self._loop, self._session)
        self._inbox = self._receiver.inbox
        host.handle_purpose(PURPOSE, self._receiver.on_stream)

    # -- for death watch ------------------------------------------------------------

    def reading_from(self, peer: str) -> bool:
        """Whether a mailbox stream from `peer` is still being read: until
        it ends, tells from `peer` may still arrive in the inbox."""
        return self._receiver.reading_from(peer)

    def when_read_ends(self, cb: Callable[[str], None] | None) -> None:
        """Call `cb(peer)` whenever the last mailbox stream from `peer` that
        was being read ends (None stops)."""
        self._receiver.on_read_end = cb

    @property
    def queued(self) -> int:
        """Envelopes in the inbox, not yet taken by a reader."""
        return len(self._inbox)

    # -- user-facing reading -----------------------------------------------------------

    async def _next(self, decoder: msgspec.msgpack.Decoder[Any], typ: Any
                    ) -> Envelope[Any] | None:
        """The next envelope that decodes and is not an expired ask, or None
        at the end."""
        while True:
            d = await self._inbox.get()
            if d is None:
                return None
            if d.deadline != NO_DEADLINE and expired(d.deadline, self._loop.time()):
                self._receiver.drop_expired(d)
                continue
            try:
                body = decoder.decode(d.body)
            except DECODE_ERRORS as exc:
                what = getattr(typ, "__name__", repr(typ))
                log.warning("mailbox: skipped a message from %r that does not decode as "
                            "%s: %s", d.sender, what, exc)
                env: Envelope[Any] = Envelope(d.sender, None, d.ask_id, d.route,
                                              self._receiver)
                if d.ask_id is not None and not self._closed:
                    self._receiver.asks_taken += 1  # _fail answers it
                    await env._fail("DecodeError", f"the message does not decode as {what}: "
                                                   f"{exc}")
                continue
            if d.ask_id is not None:
                self._receiver.asks_taken += 1
            return Envelope(d.sender, body, d.ask_id, d.route, self._receiver)

    def __aiter__(self) -> Mailbox:
        return self

    async def __anext__(self) -> Envelope[Any]:
        env = await self._next(any_decoder, None)
        if env is None:
            raise StopAsyncIteration
        return env

    @overload
    def typed(self, typ: type[T]) -> TypedMailbox[T]: ...
    @overload
    def typed(self, typ: Any) -> TypedMailbox[Any]: ...

    def typed(self, typ: Any) -> TypedMailbox[Any]:
        """An async iterator of envelopes whose bodies are decoded as `typ` (a
        msgspec Struct, dataclass or builtin type). An envelope that does not
        decode is skipped with a warning in the log; an ask among them is
        answered with ``RemoteError("DecodeError", ...)``."""
        return TypedMailbox(self, typ)

    # -- figures ------------------------------------------------------------------------

    def frames_sent(self, peer: str) -> int:
        """Mailbox frames sent to `peer` so far (each carries one or more messages)."""
        pair = self._pairs.get(peer)
        return pair.frames if pair is not None else 0

    def messages_sent(self, peer: str) -> int:
        """Tells and asks sent to `peer` so far, as they went on the wire
        (a message resent after a broken path counts again)."""
        pair = self._pairs.get(peer)
        return pair.messages if pair is not None else 0

    def route(self, peer: str) -> str | None:
        """The path of the mailbox stream to `peer`: ``"direct"``,
        ``"proxied"``, or None while there is none (never told, or between
        paths)."""
        pair = self._pairs.get(peer)
        if pair is None or pair.stream is None or pair.stream.state is SendState.BROKEN:
            return None
        return pair.stream.kind

    @property
    def asks_taken(self) -> int:
        """Asks this client has read from the mailbox and not answered yet."""
        return self._receiver.asks_taken

    @property
    def pending_asks(self) -> int:
        """Asks waiting for their answer."""
        return len(self._pending)

    # -- the end ----------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Deliver every tell and ask already accepted, then return (within
        `timeout` seconds whatever the receivers do); refuse new ones with
        `ClientClosed`. Called by `Client.close` before it closes."""
        if self._closed or self._draining:
            return
        self._draining = True
        writers: list[asyncio.Task[None]] = []
        for pair in self._pairs.values():
            if pair.dead is None and pair.writer is not None and not pair.writer.done():
                pair.handle(PairEvent.DRAIN)
                pair.wake.set()
                writers.append(pair.writer)
        if writers:
            await asyncio.wait(writers, timeout=timeout)

    def end_inbox(self) -> None:
        """Nothing more can arrive: readers get what is queued, then the end."""
        self._inbox.end()

    def close(self) -> None:
        """End the mailbox (called by `Client` when it closes): fail what
        waits, stop reading, cancel the mailbox's tasks; `wait_closed` awaits
        them."""
        if self._closed:
            return
        self._closed = True
        self._host.handle_purpose(PURPOSE, None)
        self._receiver.close()
        self._close_sending()

    async def wait_closed(self) -> None:
        """Return once every task of the mailbox has ended (after `close`)."""
        await self._wait_writers()
        await self._receiver.wait_closed()
