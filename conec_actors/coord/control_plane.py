"""A front-end's control requests beyond admission: channel introductions,
death watches, groups and broadcast counts.

Driven by the `FrontEnd` (`handle`, and a client's departure in two steps,
`leaving` and `left`). With front-end shards, a request whose other party
is on another shard goes there through `shard_control.CrossShard`, and this
class answers what the other shards ask (it is their `shard_control.Host`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Protocol

from .. import wire
from ..errors import ProtocolError
from ..transport import Conn
from . import groups, ipc, session, watches
from .intros import Introductions, Offer
from .session import SessionCore, State
from .shard_control import CrossShard

RequestRouting = Callable[[str, ipc.MakeRequest, ipc.ReplyCallback | None], None]
Count = Callable[[str, Callable[[ipc.BroadcastReply], None]], None]


class Client(Protocol):
    """A front-end session, as the control plane uses it."""

    core: SessionCore
    conn: Conn

    @property
    def conn_key(self) -> int: ...

    @property
    def client_id(self) -> str | None: ...

    def send_control(self, msg: wire.Control) -> None: ...

    def execute(self, actions: list[session.Action]) -> None: ...

    def request_done(self) -> None: ...


class ControlPlane:
    """Introductions, watches and groups of one front-end (shard k of n)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sessions: Mapping[int, Client],
                 by_id: Mapping[str, Client], request_routing: RequestRouting,
                 count: Count, shard: tuple[int, int] = (0, 1), start: int = 0,
                 base: int = 0) -> None:
        self.loop = loop
        self.sessions = sessions
        self.by_id = by_id
        self.request_routing = request_routing
        self._count = count
        self.intros = Introductions(base + start * shard[1] + shard[1] + shard[0], shard[1])
        self.watches = watches.Watches()
        self.groups = groups.GroupBook()
        #: with shards: the other shards' side of introductions, watches, groups
        self.cross: CrossShard | None = None
        #: in a federation: where a broadcast is homed, if anywhere
        #: (`federation_ids.IdSpace.existing_home`), for its counts
        self.broadcast_home: Callable[[str, Callable[[int | None], None]], None] | None = None
        self._view_timer: asyncio.TimerHandle | None = None  # for groups.take_dirty()
        self._intro_timer: asyncio.TimerHandle | None = None  # for intros.next_deadline()

    def close(self) -> None:
        for timer in (self._intro_timer, self._view_timer):
            if timer is not None:
                timer.cancel()
        self._intro_timer = self._view_timer = None

    def send_to(self, key: int, msg: wire.Control) -> None:
        """Send `msg` to connection `key`, on this shard or another."""
        s = self.sessions.get(key)
        if s is not None:
            s.send_control(msg)
        elif self.cross is not None and not self.cross.is_local(key):
            self.cross.control(key, msg)

    # -- requests ----------------------------------------------------------------------

    def handle(self, s: Client, msg: session.Request) -> None:
        """A request of an admitted client that its core passed on."""
        cross = self.cross
        if isinstance(msg, wire.LoadReport):
            self.load(s.client_id or "", msg.asks, msg.tells)
            if cross is not None:
                cross.load(s.conn_key, s.client_id or "", msg)
        elif isinstance(msg, wire.GroupRequest):
            if cross is None or not cross.group_op(s.conn_key, s.client_id or "", msg):
                self.group_op(s.conn_key, s.client_id or "", msg.op, msg.name, msg.req)
        elif isinstance(msg, wire.WatchRequest):
            self._watch(s, msg)
        elif isinstance(msg, wire.WatchCancel):
            self.watches.cancel(s.conn_key, msg.req)
        elif isinstance(msg, wire.ChannelRequest):
            self._channel_request(s, msg)
        elif isinstance(msg, wire.ChannelAnswer):
            if cross is not None and not cross.is_local(msg.offer):
                cross.answer(msg.offer, s.conn_key, msg.code)
            else:
                self.answered(msg.offer, s.conn_key, msg.code)
        elif isinstance(msg, wire.ChannelDialing):
            found = self.intros.dialed(s.conn_key, msg.req)
            if found is not None:
                self.send_to(found.target, wire.PeerDialing(found.opener_id))
        else:
            req, name, key = msg.req, msg.name, s.conn_key

            def counted(r: ipc.BroadcastReply) -> None:
                self.counted(key, req, r.code, r.senders, r.receivers)

            if self.broadcast_home is None:
                self._count(name, counted)
                return

            def homed(peer: int | None) -> None:
                # In a federation: counted where the broadcast is homed.
                cross = self.cross
                if peer is None or cross is None or not cross.peers.is_remote(peer):
                    self._count(name, counted)
                else:
                    cross.count_ask(peer, key, req, name)

            self.broadcast_home(name, homed)

    def counted(self, conn: int, req: int, code: int, senders: int, receivers: int) -> None:
        """The answer to count request `req` of connection `conn`."""
        s = self.sessions.get(conn)
        if s is not None and s.core.state is not State.CLOSED:
            s.send_control(wire.BroadcastCountReply(req, code, senders, receivers))
            s.request_done()

    def count_here(self, name: str, cb: Callable[[int, int, int], None]) -> None:
        """Count broadcast `name`'s members here (another Coordinator asks)."""
        self._count(name, lambda r: cb(r.code, r.senders, r.receivers))

    # -- a client leaves -----------------------------------------------------------------

    def leaving(self, s: Client) -> None:
        """Before its streams end: what `s` held as a watcher, follower, opener
        or introduction target."""
        self.watches.watcher_gone(s.conn_key)
        self.groups.follower_gone(s.conn_key)
        for offer in self.intros.drop(s.conn_key):
            self.intro_failed(offer, wire.Code.NO_SUCH_PEER,
                              f"{wire.quote(offer.target.client_id)} left")

    def left(self, s: Client, admitted: bool, reason: watches.Reason) -> None:
        """After its streams ended: its groups' followers and its watchers
        hear (the watcher's mailbox streams from it end first; the watcher
        holds the verdict until they have been read), here and elsewhere."""
        # A session replaced by its own client's newer one (on another shard)
        # is no departure.
        admitted = admitted and not s.core.replaced
        if admitted:
            self._push_views(self.groups.member_gone(s.client_id or ""))
            self._tell_watchers(self.watches.target_gone(s.client_id or "", reason))
        if self.cross is not None:
            self.cross.left(s.conn_key, s.client_id if admitted else None, reason)

    def gone_elsewhere(self, conn: int, client_id: str, reason: watches.Reason) -> None:
        """Client `client_id` (connection `conn`) of another shard left."""
        self.groups.follower_gone(conn)
        for offer in self.intros.drop(conn):
            self.intro_failed(offer, wire.Code.NO_SUCH_PEER,
                              f"{wire.quote(offer.target.client_id)} left")
        self._push_views(self.groups.member_gone(client_id))
        self._tell_watchers(self.watches.target_gone(client_id, reason))

    def replace_stale(self, key: int) -> None:
        """A client reconnected with the certificate connection `key` holds
        its id with: close that stale connection (its id stays connected)."""
        s = self.sessions.get(key)
        if s is not None:
            s.execute(s.core.replace())
        elif self.cross is not None and not self.cross.is_local(key):
            self.cross.replace(key)

    # -- watches -----------------------------------------------------------------------

    def _watch(self, s: Client, msg: wire.WatchRequest) -> None:
        target = self.by_id.get(msg.peer)
        if target is not None or self.cross is None:
            connected = target is not None and target.core.state is State.READY
            self._watched(s.conn_key, msg.req, msg.peer, connected, False)
            return
        # Maybe on another shard: that shard says (its answer comes before
        # any departure of the peer it could send).
        cross = self.cross
        s.core.request_started()
        key, req, peer = s.conn_key, msg.req, msg.peer

        def routed(reply: ipc.WorkerReply) -> None:
            entry = reply.entry if isinstance(reply, ipc.Reply) else None
            if entry is not None and not cross.is_local(entry.conn_key):
                cross.watch_ask(cross.shard_of(entry.conn_key), key, req, peer)
            else:
                t = self.by_id.get(peer)
                self._watched(key, req, peer, t is not None and t.core.state is State.READY,
                              True)

        self.request_routing(peer, lambda r: ipc.Lookup(r, "", peer), routed)

    def watch_known(self, watcher: int, req: int, peer: str, connected: bool) -> None:
        """Another shard said whether `peer` is connected, for watch `req`."""
        self._watched(watcher, req, peer, connected, True)

    def _watched(self, watcher: int, req: int, peer: str, connected: bool,
                 counted: bool) -> None:
        s = self.sessions.get(watcher)
        if s is None or s.core.state is State.CLOSED:
            return
        if counted:
            s.request_done()
        try:
            code = self.watches.watch(watcher, req, peer, connected)
        except ProtocolError as exc:
            s.execute(s.core.close(wire.Code.PROTOCOL, str(exc)))
            return
        s.send_control(wire.WatchReply(req, code))

    def _tell_watchers(self, notes: list[watches.Notify]) -> None:
        for note in notes:
            w = self.sessions.get(note.watcher)
            if w is not None:
                w.send_control(wire.PeerTerminated(note.req, note.reason))

    # -- groups ------------------------------------------------------------------------

    def _push_views(self, names: list[str]) -> None:
        """The members of groups `names` changed: tell their followers."""
        for name in names:
            view = self.groups.view(name)
            for key in self.groups.followers(name):
                self.send_to(key, view)

    def load(self, member: str, asks: int, tells: int) -> None:
        if self.groups.report(member, asks, tells) and self._view_timer is None:
            self._view_timer = self.loop.call_later(groups.VIEW_INTERVAL, self._views_due)

    def _views_due(self) -> None:
        self._view_timer = None
        self._push_views(self.groups.take_dirty())

    def group_op(self, conn: int, member: str, op: str, name: str, req: int) -> None:
        """A group request of `member` (connection `conn`), for a group homed here."""
        code = 0
        if op == "join":
            code, changed = self.groups.join(member, name)
            if changed:
                self._push_views([name])
        elif op == "leave":
            # The followers hear first, so that once `leave_group` returns
            # no view sent after it still names this member.
            if self.groups.leave(member, name):
                self._push_views([name])
        elif op == "follow":
            code = self.groups.follow(conn, name)
        self.send_to(conn, wire.GroupReply(req, code, self.groups.members(name)))

    # -- channel introductions ---------------------------------------------------------

    def _channel_request(self, s: Client, msg: wire.ChannelRequest) -> None:
        """Find the peer of a request the core accepted (it counts as a
        pending channel until settled) and offer it the channel."""
        src, dst = s.client_id or "", msg.peer

        def routed(reply: ipc.WorkerReply) -> None:
            if s.core.state is not State.READY:
                s.core.channel_settled()
                return
            entry = reply.entry if isinstance(reply, ipc.Reply) else None
            cross = self.cross
            if entry is not None and cross is not None and not cross.is_local(entry.conn_key):
                offer = self.intros.offer(s.conn_key, msg.req, entry, self.loop.time())
                self._arm_intros()
                cross.offer(entry, offer, wire.ChannelOffer(
                    offer, src, s.core.cert_der, s.conn.peer_address, msg.holepunch))
                return
            target = self.sessions.get(entry.conn_key) if entry is not None else None
            if entry is None or target is None or target.core.state is not State.READY \
                    or target.client_id != dst:
                s.core.channel_settled()
                s.send_control(wire.ChannelIntro(
                    msg.req, wire.Code.NO_SUCH_PEER, msg.peer[:wire.QUOTE_MAX],
                    reason=f"no client {wire.quote(dst)} is connected"))
                return
            offer = self.intros.offer(s.conn_key, msg.req, entry, self.loop.time())
            self._arm_intros()
            target.send_control(wire.ChannelOffer(offer, src, s.core.cert_der,
                                                  s.conn.peer_address, msg.holepunch))

        self.request_routing(dst, lambda req: ipc.Lookup(req, src, dst), routed)

    def answered(self, offer_id: int, target: int, code: int) -> None:
        """Connection `target` answered offer `offer_id` (held here) with `code`."""
        offer = self.intros.answered(offer_id, target)
        opener = self.sessions.get(offer.opener) if offer is not None else None
        if offer is None or opener is None:
            return  # late, or not this client's to answer
        opener.core.channel_settled()
        entry = offer.target
        if code == 0:
            opener.send_control(wire.ChannelIntro(offer.req, 0, entry.client_id, entry.cert,
                                                  entry.addr))
            self.intros.accepted(offer, opener.client_id or "", self.loop.time())
            self._arm_intros()
        else:
            opener.send_control(wire.ChannelIntro(offer.req, code, entry.client_id))

    def _arm_intros(self) -> None:
        # Deadlines only grow: an armed timer is never later than a new one.
        deadline = self.intros.next_deadline()
        if self._intro_timer is None and deadline is not None:
            self._intro_timer = self.loop.call_at(deadline, self._intros_due)

    def _intros_due(self) -> None:
        self._intro_timer = None
        for offer in self.intros.expire(self.loop.time()):
            self.intro_failed(offer, wire.Code.PEER_GONE,
                              f"{wire.quote(offer.target.client_id)} did not answer the "
                              "introduction")
        self._arm_intros()

    def intro_failed(self, offer: Offer, code: int, reason: str) -> None:
        opener = self.sessions.get(offer.opener)
        if opener is not None:
            opener.core.channel_settled()
            opener.send_control(wire.ChannelIntro(offer.req, code, offer.target.client_id,
                                                  reason=reason))
