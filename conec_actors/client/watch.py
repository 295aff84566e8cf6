"""Death watch at the client: `Client.watch(peer)` gives a `Watch`, whose
`wait()` returns `Terminated(peer, reason)` once the Coordinator has decided
that the peer is gone.

The Coordinator decides (DESIGN 11), so every watcher gets the same verdict;
this end only keeps the promise about order: a watcher's `Terminated` comes
after every tell the peer sent it before it left. Tells travel on mailbox
streams, the verdict on the control stream, and QUIC does not order streams;
so a verdict for `peer` is held while a mailbox stream from `peer` is still
being read (`Mailbox.reading_from`). When the peer is gone those streams end
(the Coordinator ends its proxied legs, a direct channel to it closes), and
by then every tell they brought is in the inbox.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Literal, NamedTuple

from .. import wire
from ..errors import ClientClosed, ConecError
from .link import CoordLink
from .mailbox import Mailbox

Reason = Literal["left", "vanished", "not-connected"]
#: How often a re-armed watch asks again for a peer not (yet) back.
REARM_RETRY = 0.5
_REASONS: dict[str, Reason] = {"left": "left", "vanished": "vanished",
                               "not-connected": "not-connected"}


class Terminated(NamedTuple):
    """The verdict on a watched peer: `reason` is "left" (its client closed),
    "vanished" (its connection timed out or was lost) or "not-connected" (it
    was not connected when watched)."""

    peer: str
    reason: Reason


class Watch:
    """One watch of one peer (from `Client.watch`). `await wait()` returns
    its `Terminated`; `cancel()` stops watching."""

    __slots__ = ("_fut", "_on_cancel", "peer")

    def __init__(self, peer: str, on_cancel: Callable[[], None] | None = None) -> None:
        self.peer = peer
        self._fut: asyncio.Future[Terminated] = asyncio.get_running_loop().create_future()
        self._on_cancel = on_cancel

    async def wait(self) -> Terminated:
        """The verdict, once the peer is gone (the same one every time this
        is awaited). Raises `ClientClosed` if this client closed or lost its
        Coordinator first, and `asyncio.CancelledError` if the watch was
        cancelled. Cancelling a `wait()` leaves the watch running."""
        return await asyncio.shield(self._fut)

    def done(self) -> bool:
        """True once `wait()` would return (or raise) at once."""
        return self._fut.done()

    def cancel(self) -> bool:
        """Stop watching: a pending `wait()` and every later one raise
        `asyncio.CancelledError` (like a cancelled future's). False, and no
        effect, if the verdict (or `ClientClosed`) came first."""
        if self._fut.done():
            return False
        self._fut.cancel()
        if self._on_cancel is not None:
            self._on_cancel()
        return True

    def _resolve(self, result: Terminated | ConecError) -> None:
        if self._fut.done():
            return
        if isinstance(result, ConecError):
            self._fut.set_exception(result)
            self._fut.exception()  # nobody may wait: no "never retrieved" warning
        else:
            self._fut.set_result(result)

    def __repr__(self) -> str:
        state = "done" if self.done() else "watching"
        return f"<Watch {self.peer!r} {state}>"


class Watches:
    """A client's watches: requests them, receives verdicts, and holds each
    verdict until its peer's mailbox streams have been read."""

    def __init__(self, link: CoordLink, mailbox: Mailbox) -> None:
        self._link = link
        self._mailbox = mailbox
        #: Accepted (or requested) watches by number.
        self._active: dict[int, Watch] = {}
        #: Verdicts waiting for their peer's mailbox streams to end.
        self._held: list[tuple[Watch, Terminated]] = []
        self._closed: ClientClosed | None = None
        #: Watches to re-arm at the next reconnect (their Coordinator went).
        self._parked: list[Watch] = []
        link.on_terminated = self._terminated
        mailbox.when_read_ends(self._read_ended)

    async def watch(self, peer: str) -> Watch:
        """Watch `peer` (see `Client.watch`)."""
        if self._closed is not None:
            raise ClientClosed(str(self._closed))
        req, fut = self._link.request_watch(peer)
        w = Watch(peer)
        w._on_cancel = functools.partial(self._cancel, req, w)
        self._active[req] = w
        try:
            reply = await fut
        except asyncio.CancelledError:
            self._cancel(req, w)
            raise
        except ConecError:
            self._active.pop(req, None)
            raise
        if reply.code == 0:
            return w
        self._active.pop(req, None)
        if reply.code == wire.Code.NO_SUCH_PEER:
            w._resolve(Terminated(peer, "not-connected"))
            return w
        raise wire.error_for(reply.code)

    def _cancel(self, req: int, w: Watch) -> None:
        if self._active.pop(req, None) is not None:  # the Coordinator still watches
            self._link.cancel_watch(req)
        self._held = [(h, t) for h, t in self._held if h is not w]

    def _terminated(self, msg: wire.PeerTerminated) -> None:
        w = self._active.pop(msg.req, None)
        if w is None:
            return
        t = Terminated(w.peer, _REASONS.get(msg.reason, "vanished"))
        if self._mailbox.reading_from(w.peer):
            self._held.append((w, t))
        else:
            w._resolve(t)

    def _read_ended(self, peer: str) -> None:
        """No mailbox stream from `peer` is read any more: its held verdicts
        go out (in the order they came)."""
        if not self._held:
            return
        keep: list[tuple[Watch, Terminated]] = []
        for w, t in self._held:
            if w.peer == peer:
                w._resolve(t)
            else:
                keep.append((w, t))
        self._held = keep

    # -- across a reconnect (`ClientConfig.reconnect`) -------------------------------

    def rebind(self, link: CoordLink) -> None:
        """Take verdicts from `link` (reconnected): `rearm` follows."""
        self._link = link
        link.on_terminated = self._terminated

    def suspend(self) -> None:
        """The Coordinator is gone and the client reconnects: its watches
        went with it; each waits to be re-armed (verdicts already given
        stay held for their mailbox streams)."""
        active, self._active = self._active, {}
        for w in active.values():
            self._park(w)

    def _park(self, w: Watch) -> None:
        self._parked.append(w)
        w._on_cancel = functools.partial(self._unpark, w)

    def _unpark(self, w: Watch) -> None:
        if w in self._parked:
            self._parked.remove(w)

    async def rearm(self, grace_until: float) -> None:
        """Reconnected: watch every parked peer again at the new Coordinator.
        A peer not connected is asked again until `grace_until` (loop time:
        it may be reconnecting too), then its verdict is "vanished" (it went
        while nobody could see it leave)."""
        parked, self._parked = self._parked, []
        await asyncio.gather(*(self._rearm(w, grace_until) for w in parked))

    async def _rearm(self, w: Watch, grace_until: float) -> None:
        loop = asyncio.get_running_loop()
        while not w.done():
            try:
                req, fut = self._link.request_watch(w.peer)
            except ClientClosed:  # lost again: the next reconnect re-arms it
                self._park(w)
                return
            self._active[req] = w
            w._on_cancel = functools.partial(self._cancel, req, w)
            try:
                reply = await fut
            except ConecError:
                if self._active.pop(req, None) is w:
                    self._park(w)
                return
            if reply.code == 0 or self._active.pop(req, None) is not w:
                return  # watching again (or cancelled meanwhile)
            if reply.code != wire.Code.NO_SUCH_PEER:
                w._resolve(wire.error_for(reply.code))
            elif loop.time() < grace_until:
                await asyncio.sleep(REARM_RETRY)
            else:
                w._resolve(Terminated(w.peer, "vanished"))

    def lost(self, err: ClientClosed) -> None:
        """The client closed or lost its Coordinator: no verdict can come, so
        every watch still waiting for one fails with `err`; verdicts already
        given (held for their mailbox streams) are handed out now."""
        self._closed = err
        for w, t in self._held:
            w._resolve(t)
        self._held = []
        active, self._active = self._active, {}
        for w in [*active.values(), *self._parked]:
            w._resolve(ClientClosed(str(err)))
        self._parked = []
