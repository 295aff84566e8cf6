"""The sending side's driver: `tell`, `ask`, and one writer task per peer.

Each (sender, receiver) pair is a `_Pair`: its `OutboundLog` (numbers, queue,
unacknowledged items, size limit) plus the asyncio parts (the writer task, the
event that wakes it, the tellers waiting for room). The writer opens the
pair's stream (`_OutRoute`, a `SendRoute`), packs the queue into batches, fences
the old stream when the path changes or the client closes, and reopens and
resends when a stream breaks. Answers on a stream's return half are read from
its wake-up callback.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
from collections import deque
from typing import Any

import msgspec

from ..._util import Waiters
from ...errors import (
    ClientClosed,
    ConecError,
    DecodeError,
    MessageTooLarge,
    NoChannel,
    NoResponders,
    NoSuchPeer,
    ProtocolError,
    RemoteError,
    StreamClosed,
    StreamReset,
)
from ...ids import is_valid_id
from ...streams import InStream, OutStream
from ...wire import DECODE_ERRORS, Code
from .host import MailboxHost
from .limits import PURPOSE
from .outbound import OutboundLog, SendRoute, ask_id_of, check_size, copy_error, ttl_ms
from .state import PairEvent, PairState, SendEvent, SendState
from .streamio import log_failure, write_idle
from .wire import (
    Ack,
    AskOut,
    Drained,
    Fail,
    Reply,
    TellOut,
    decode_batch,
    decoder_for,
    encode_batch,
    encoder,
)

log = logging.getLogger(__name__)

_OPEN = SendState.OPEN
_BROKEN = SendState.BROKEN


def _time_out(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _OutRoute(SendRoute):
    """One outgoing mailbox stream (the current or a fenced one)."""

    __slots__ = ("drained", "recv", "send")

    def __init__(self, kind: str, send: OutStream, recv: InStream, now: float) -> None:
        super().__init__(kind, now)
        self.send = send
        self.recv = recv
        #: Set when the fence is answered (or the stream ended or broke).
        self.drained = asyncio.Event()


class _Pair(OutboundLog):
    """This client's sending state toward one peer."""

    __slots__ = ("idle", "putters", "routed", "stream", "wake", "writer")

    def __init__(self, peer: str, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        super().__init__(peer, limit)
        self.putters = Waiters()
        self.wake = asyncio.Event()
        #: Resolved when the first stream opened (the route exists).
        self.routed: asyncio.Future[None] = loop.create_future()
        self.stream: _OutRoute | None = None
        self.writer: asyncio.Task[None] | None = None
        #: True while the writer waits with nothing to do (no batch in flight,
        #: no fence or resend under way).
        self.idle = False


class Outbox:
    """The sending half of the mailbox: `tell`, `ask` and the pairs' writers."""

    def __init__(self, host: MailboxHost) -> None:
        self._host = host
        self._loop = asyncio.get_running_loop()
        self._session = secrets.randbits(63)
        self._pairs: dict[str, _Pair] = {}
        self._pending: dict[int, tuple[str, asyncio.Future[msgspec.Raw]]] = {}
        self._ask_ids = itertools.count(1)
        #: The writers (including those of pairs already forgotten).
        self._writers: set[asyncio.Task[None]] = set()
        self._closed = False
        #: close() is delivering what tell() accepted: no new tells.
        self._draining = False

    # -- sending ------------------------------------------------------------------

    async def tell(self, peer: str, msg: Any) -> None:
        """Send `msg` (bytes or any msgspec-encodable value) to `peer`.

        Returns once the message is queued; waits while the queue toward
        `peer` is full, and for the first tell to a peer until its mailbox
        stream has opened. Raises `NoResponders` (a `NoSuchPeer`) if `peer` is
        not connected (or its route was found dead), `MessageTooLarge` if the encoded message
        exceeds the pair's size limit (the smallest of both clients' and, when
        proxied, the Coordinator's), `ClientClosed` once the client closes.
        """
        item = encoder.encode(TellOut(msg))
        pair = self._pair_for(peer, item)
        if not self._put_nowait(pair, item):
            await self._put(pair, item)

    def backlog(self, peer: str) -> int:
        """Tells and asks to `peer` queued here, not yet written (sent ones
        are acknowledged only every `ACK_EVERY`: they say nothing of load)."""
        pair = self._pairs.get(peer)
        return 0 if pair is None else len(pair.queue)

    async def ask(self, peer: str, msg: Any, timeout: float | None = 5.0, *,
                  reply_type: Any = None) -> Any:
        """Send `msg` to `peer` and wait for its answer (`Envelope.reply`).

        Raises the builtin `TimeoutError` after `timeout` seconds (None: no
        limit), `RemoteError` if the receiver failed to answer (an `Actor`
        whose `receive` raised), `NoResponders` (a `NoSuchPeer`) if `peer` is
        not connected when sent, `PeerGone` as soon as it goes away (closes
        or loses its connection) before answering, `MessageTooLarge`,
        `ClientClosed`. The deadline travels with the ask: the receiver drops
        it unread once the deadline has passed. The answer is decoded as
        builtins, or as `reply_type` (`DecodeError` if it does not decode).
        Cancelled, the ask forgets its reply slot; an answer that comes later
        is dropped.
        """
        deadline = None if timeout is None else self._loop.time() + timeout
        ask_id = next(self._ask_ids)
        item = encoder.encode(AskOut(ask_id, float(timeout or 0.0), msg, ttl_ms(timeout)))
        pair = self._pair_for(peer, item)
        fut: asyncio.Future[msgspec.Raw] = self._loop.create_future()
        self._pending[ask_id] = (peer, fut)
        pair.ask_waiting(ask_id)
        timer: asyncio.TimerHandle | None = None
        try:
            if not self._put_nowait(pair, item):
                # The first message to a peer, or a full queue: wait for it
                # within the timeout too.
                async with asyncio.timeout_at(deadline):
                    await self._put(pair, item, queue=False)
                if deadline is not None:
                    # It waited: it carries the time left now (never longer,
                    # so it still fits).
                    item = encoder.encode(AskOut(ask_id, float(timeout or 0.0), msg,
                                                 ttl_ms(deadline - self._loop.time())))
                pair.push(item)
                pair.wake.set()
            if deadline is not None:
                # Not a timeout scope (cheaper): one timer fails the reply
                # future with TimeoutError at the deadline.
                timer = self._loop.call_at(deadline, _time_out, fut)
            raw = await fut
        finally:
            self._pending.pop(ask_id, None)
            pair.ask_done(ask_id)
            if timer is not None:
                timer.cancel()
        try:
            return decoder_for(reply_type).decode(raw)
        except DECODE_ERRORS as exc:
            raise DecodeError(f"the answer from {peer!r} does not decode as "
                              f"{reply_type!r}: {exc}") from None

    def _pair_for(self, peer: str, item: bytes) -> _Pair:
        """Check a message to `peer`; the pair toward it, created (with its
        writer) on first use."""
        self._check_open()
        pair = self._pairs.get(peer)
        check_size(peer, item, self._host.max_message_size if pair is None else pair.limit)
        if pair is not None and pair.dead is not None:
            # The route is known dead: say so once, then start afresh.
            del self._pairs[peer]
            raise copy_error(pair.dead)
        if pair is None:
            if not is_valid_id(peer):
                raise NoResponders(f"no client {peer!r} is connected (not a valid id)")
            pair = _Pair(peer, self._loop, self._host.max_message_size)
            self._pairs[peer] = pair
            pair.writer = writer = self._loop.create_task(self._write(pair))
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return pair

    def _put_nowait(self, pair: _Pair, item: bytes) -> bool:
        """Send `item` if that needs no waiting: the queue has room and the
        route is open. False, doing nothing: the caller awaits `_put`."""
        if pair.full() or not pair.routed.done():
            return False
        # The fast path: on an idle line, write the frame now instead of
        # waking the writer to do the same one loop turn later.
        if not self._write_now(pair, item):
            pair.push(item)
            pair.wake.set()
        return True

    async def _put(self, pair: _Pair, item: bytes, queue: bool = True) -> None:
        """Queue `item`: for the first messages to a peer, once the route has
        opened (which tells the pair's size limit); while the queue is full,
        once there is room. With `queue` False only wait: the caller queues
        (its own version of) `item` before it next awaits."""
        if not pair.routed.done():
            try:
                await asyncio.shield(pair.routed)
            except ConecError as exc:
                raise copy_error(exc) from None
            check_size(pair.peer, item, pair.limit)
        while pair.full():
            await pair.putters.wait()
            if pair.dead is not None:
                raise copy_error(pair.dead)
        self._check_open()
        if pair.dead is not None:
            raise copy_error(pair.dead)
        if queue:
            pair.push(item)
            pair.wake.set()

    def _write_now(self, pair: _Pair, item: bytes) -> bool:
        """The fast path of an idle line: write `item` in a frame of its own at
        once, without waking the writer (one task hop and one loop turn less
        per message). Only when that is what the writer would do: nothing is
        queued or in flight, the route is open on the current path (no fence,
        reopen or resend due) and the stream has nothing unsent (so a busy
        line still queues and coalesces). False: queue `item` instead."""
        route = pair.stream
        if (pair.queue or not pair.idle or route is None or route.state is not _OPEN
                or (route.kind == "direct") != self._host.has_channel(pair.peer)):
            return False
        if not write_idle(route.send, encode_batch(self._session, pair.next_seq, [item])):
            return False
        pair.sent_alone(item)
        return True

    def _check_open(self) -> None:
        if self._closed or self._draining:
            raise self._host.closed_error()

    # -- the writer ---------------------------------------------------------------

    async def _write(self, pair: _Pair) -> None:
        """The pair's writer: drain the queue into batches on the current route.

        It ends by itself once the pair is dead (not by cancellation, which
        could drop a stream the client has just opened for it); the mailbox's
        close cancels and awaits what is left."""
        try:
            while pair.dead is None:
                # (A new pair opens its route at once: the first tells wait
                # for it, and learn the pair's size limit from it.)
                while (pair.dead is None and pair.routed.done() and not pair.queue
                       and pair.state is not PairState.DRAINING
                       and not (pair.stream is not None and pair.stream.state is _BROKEN)):
                    pair.wake.clear()
                    pair.idle = True
                    try:
                        await pair.wake.wait()
                    finally:
                        pair.idle = False
                if pair.dead is not None:
                    return
                draining = pair.state is PairState.DRAINING
                if draining and not pair.queue and not pair.unacked and (
                        pair.stream is None or pair.stream.state is _BROKEN):
                    return  # closing, and nothing is left to deliver
                route = await self._ensure_route(pair)
                if pair.queue and route.state is not _BROKEN:
                    await self._send_batch(pair, route)
                elif draining and not pair.queue and route.state is not _BROKEN:
                    # Closing: everything is sent; finish the stream and wait
                    # until the receiver consumed it (a break reopens and
                    # resends, then fences again).
                    await self._fence(route)
                    if route.state is not _BROKEN:
                        return
        except ConecError as exc:
            if pair.dead is None:
                self._kill(pair, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: do not leave tellers hanging
            log.exception("mailbox writer toward %r failed", pair.peer)
            if pair.dead is None:
                self._kill(pair, NoSuchPeer(f"the mailbox route to {pair.peer!r} failed: "
                                            f"{exc}"))

    async def _send_batch(self, pair: _Pair, route: _OutRoute,
                          resend: deque[tuple[int, bytes]] | None = None) -> None:
        """Send one batch of the queue (or of `resend`) within the size limits."""
        hard = min(self._host.max_message_size, route.send._core.max_message_size)
        if resend is None:
            seq0, items = pair.cut_batch(hard)
            if not pair.full():
                pair.putters.wake()
        else:
            seq0, items = pair.cut_resend(resend, hard)
        try:
            await route.send.send(encode_batch(self._session, seq0, items))
        except (StreamReset, StreamClosed):
            route.handle(SendEvent.BREAK)  # the items stay unacknowledged: resent on reopen
            return
        except MessageTooLarge as exc:
            # Only a message accepted before the pair learnt a smaller limit
            # gets here (`_put` checks the first ones once the route is open).
            log.warning("mailbox: dropped a message to %r: %s", pair.peer, exc)
            pair.drop(seq0, items[0])
            self._fail_ask_item(items[0], exc)
            return
        pair.sent(len(items))

    def _fail_ask_item(self, item: bytes, exc: ConecError) -> None:
        ask_id = ask_id_of(item)
        entry = self._pending.get(ask_id) if ask_id is not None else None
        if entry is not None and not entry[1].done():
            entry[1].set_exception(MessageTooLarge(str(exc)))

    async def _ensure_route(self, pair: _Pair) -> _OutRoute:
        """The current route, fenced, reopened or resent as the path requires."""
        while True:
            if pair.dead is not None:
                raise pair.dead
            route = pair.stream
            want_direct = self._host.has_channel(pair.peer)
            if route is not None and route.state is not _BROKEN:
                if (route.kind == "direct") == want_direct:
                    return route
                await self._fence(route)
                pair.stream = None
                if route.state is not _BROKEN:
                    continue
            if route is not None:  # broken: count it unless it had settled
                pair.stream = None
                delay = pair.route_broke(route.progress, self._loop.time() - route.opened_at)
                if delay:
                    await asyncio.sleep(delay)
            route = await self._open(pair, want_direct)
            if pair.dead is not None:  # closed meanwhile
                raise pair.dead
            pair.learn_limit(route.send._core.max_message_size)
            pair.stream = route
            if not pair.routed.done():
                pair.handle(PairEvent.ROUTED)
                pair.routed.set_result(None)
            # Resend what the receiver may not have consumed; it drops what
            # it already has.
            resend = pair.to_resend()
            while resend and route.state is not _BROKEN:
                await self._send_batch(pair, route, resend)

    async def _open(self, pair: _Pair, direct: bool) -> _OutRoute:
        while True:
            if pair.dead is not None:
                raise pair.dead
            try:
                send, recv = await self._host.open_route(pair.peer, PURPOSE, direct=direct,
                                                         reopen=pair.opened)
            except (NoSuchPeer, ClientClosed):
                raise
            except ConecError as exc:
                if direct and isinstance(exc, NoChannel):
                    direct = False  # the channel closed meanwhile
                    continue
                await asyncio.sleep(pair.open_failed(exc))
                continue
            route = _OutRoute("direct" if direct else "proxied", send, recv, self._loop.time())
            recv._core.on_wake = functools.partial(self._read_replies, pair, route)
            self._read_replies(pair, route)
            return route

    @staticmethod
    async def _fence(route: _OutRoute) -> None:
        """Finish `route` and wait until the receiver consumed all of it."""
        route.handle(SendEvent.FINISH)
        try:
            await route.send.finish()
        except (StreamReset, StreamClosed):
            route.handle(SendEvent.BREAK)
            return
        await route.drained.wait()

    def _read_replies(self, pair: _Pair, route: _OutRoute) -> None:
        """Read the return half of an outgoing stream: the stream's `on_wake`,
        so answers reach their asks without a reader task in between."""
        core = route.recv._core
        try:
            while (data := core.recv_nowait()) is not None:
                batch = decode_batch(data)
                route.progress = True
                pair.progressed()
                for item in batch.items:
                    if isinstance(item, Reply):
                        entry = self._pending.get(item.id)
                        if entry is not None and not entry[1].done():
                            entry[1].set_result(item.body)
                    elif isinstance(item, Fail):
                        entry = self._pending.get(item.id)
                        if entry is not None and not entry[1].done():
                            entry[1].set_exception(RemoteError(item.type_name, item.message))
                    elif isinstance(item, Ack):
                        pair.acked(item.seq)
                    elif isinstance(item, Drained):
                        route.receive(SendEvent.DRAINED)
                        route.drained.set()
                    else:
                        raise ProtocolError("a tell or ask on the return half")
            if core.recv_error is not None:
                route.handle(SendEvent.BREAK)
            elif core.recv_fin:
                route.handle(SendEvent.RETURN_END)
            else:
                return  # more to come
        except Exception as exc:  # not into the connection's callbacks
            log_failure(exc, f"mailbox stream to {pair.peer!r}")
            core.on_wake = None
            core.fail_local(Code.PROTOCOL, str(exc))
            route.handle(SendEvent.BREAK)
        core.on_wake = None
        route.drained.set()
        if pair.stream is route:
            pair.wake.set()

    def _kill(self, pair: _Pair, exc: ConecError) -> None:
        """The route to `pair.peer` is dead: fail whoever waits on it (tells
        and asks not yet accepted with `pair.dead`, pending asks with what
        `kill` says: `PeerGone` once the peer had been reached)."""
        dead, exc = pair.kill(exc)
        if not pair.routed.done():
            pair.routed.set_exception(dead)
            pair.routed.exception()
            # Never routed: the next tell tries again from scratch.
            if self._pairs.get(pair.peer) is pair:
                del self._pairs[pair.peer]
        pair.putters.wake()
        pair.wake.set()
        route = pair.stream
        if route is not None:
            route.recv._core.on_wake = None
            route.drained.set()  # a writer fencing it goes on, and ends
        for peer, fut in list(self._pending.values()):
            if peer == pair.peer and not fut.done():
                fut.set_exception(copy_error(exc))
                fut.exception()  # the ask may already be raising another error

    def _close_sending(self) -> None:
        """Fail every pair and pending ask; cancel the writers (`_wait_writers`
        awaits them)."""
        err = self._host.closed_error()
        for pair in list(self._pairs.values()):
            if pair.dead is None:
                self._kill(pair, err)
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._host.closed_error())
                fut.exception()
        for writer in self._writers:
            writer.cancel()

    async def _wait_writers(self) -> None:
        while self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)
