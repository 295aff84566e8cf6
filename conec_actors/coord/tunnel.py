"""Streams between clients on different front-end shards.

A stream is carried where its logic needs every party at hand: a proxied
stream at its target's shard, a broadcast membership at the broadcast's home
shard (`Tunnels.home_of`). When the client that opened it is on another
shard ("home"), that shard keeps a `TunnelLeg` on the client's connection,
which only moves bytes, and the "far" shard runs the stream's ordinary leg
(`proxy.ProxiedLeg`, `fanout.MemberLeg`) on a `RemoteSession`: a stand-in
for the client whose `RemoteConn` turns each connection call of the leg into
a `shard_wire` message to the home shard.

Flow control is the ordinary one, stretched over the hop: the far leg
credits the client's stream (`Consumed`) only as its destination drains, and
the home shard reports (`Drained`) how much of what the far shard wrote has
left the client's send buffer, which is the far leg's `unsent`. So a stalled
reader stops exactly its writer and no shard holds more than the stream's
window for it; the mesh's own queues never fill for lack of a reader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol, cast

from .. import wire
from ..ids import stable_hash
from . import shard_wire as sw
from .legs import Leg, Peer
from .peers import Peers
from .session import State

log = logging.getLogger(__name__)

Send = Callable[[int, sw.ShardMsg], None]


class Opener(Protocol):
    """What opens a far stream's leg (`proxy.Relay`)."""

    def open_member(self, s: Peer, quic_id: int, base: int, name: str) -> object: ...

    def open_from_remote(self, s: Peer, msg: sw.Open) -> None: ...


_CONTROL = frozenset(sw.ControlMsg.__args__)


class RemoteConn:
    """A client connection held by shard `home`, as the far shard's legs use it."""

    __slots__ = ("_consumed", "_drain", "_drained", "_forgotten", "_send", "_written",
                 "closed", "conn", "home", "peer_address")

    def __init__(self, home: int, conn: int, send: Send) -> None:
        self.home = home
        self.conn = conn
        self._send = send
        self.closed = False
        self.peer_address: tuple[str, int] = ("", 0)
        self._written: dict[int, int] = {}  # per stream: bytes written to it
        self._drained: dict[int, int] = {}  # ... of which left the client's buffer
        self._consumed: dict[int, int] = {}  # last credit offset sent
        self._drain: dict[int, Callable[[], None]] = {}
        self._forgotten = -1

    def send(self, quic_id: int, data: bytes, end: bool = False) -> None:
        if self.closed:
            return
        self._written[quic_id] = self._written.get(quic_id, 0) + len(data)
        self._send(self.home, sw.Data(self.conn, quic_id, data, end))

    def unsent(self, quic_id: int) -> int:
        return self._written.get(quic_id, 0) - self._drained.get(quic_id, 0)

    def drained(self, quic_id: int, sent: int) -> None:
        """The home shard reports `sent` bytes of the stream left the buffer."""
        self._drained[quic_id] = sent
        cb = self._drain.get(quic_id)
        if cb is not None:
            cb()

    def watch_drain(self, quic_id: int, cb: Callable[[], None]) -> None:
        self._drain[quic_id] = cb

    def unwatch_drain(self, quic_id: int) -> None:
        self._drain.pop(quic_id, None)

    def consume_to(self, quic_id: int, offset: int) -> None:
        if self.closed or offset <= self._consumed.get(quic_id, 0):
            return
        self._consumed[quic_id] = offset
        self._send(self.home, sw.Consumed(self.conn, quic_id, offset))

    def set_stream_window(self, quic_id: int, window: int) -> None:
        if not self.closed:
            self._send(self.home, sw.Window(self.conn, quic_id, window))

    def reset(self, quic_id: int, code: int) -> None:
        if not self.closed:
            self._send(self.home, sw.Reset(self.conn, quic_id, code))

    def stop(self, quic_id: int, code: int) -> None:
        if not self.closed:
            self._send(self.home, sw.Stop(self.conn, quic_id, code))

    def forget_stream(self, quic_id: int) -> None:
        for d in (self._written, self._drained, self._consumed, self._drain):
            d.pop(quic_id, None)
        self._forgotten = quic_id  # the Forget goes out with the leg's figures

    def forgot(self, figures: tuple[int, int, int, int]) -> None:
        if not self.closed:
            self._send(self.home, sw.Forget(self.conn, self._forgotten, *figures))


class RemoteCore:
    """What the far shard's legs ask of a remote client's `SessionCore`."""

    __slots__ = ("client_id", "conn", "state")

    def __init__(self, conn: RemoteConn, client_id: str) -> None:
        self.conn = conn
        self.client_id = client_id
        self.state = State.READY

    def open_settled(self) -> None:
        # Which open is not said: the home shard counts them per client.
        if self.state is State.READY:
            self.conn._send(self.conn.home, sw.Settled(self.conn.conn))

    def stream_over(self, bytes_in: int, messages_in: int, bytes_out: int,
                    messages_out: int) -> None:
        self.conn.forgot((bytes_in, messages_in, bytes_out, messages_out))


class RemoteSession:
    """A client of another shard, as the far shard's legs see it (`legs.Peer`)."""

    def __init__(self, home: int, conn_key: int, client_id: str, max_message_size: int,
                 send: Send) -> None:
        self.conn = RemoteConn(home, conn_key, send)
        self.core = RemoteCore(self.conn, client_id)
        self.legs: dict[int, Leg] = {}
        self._key = conn_key
        self._id = client_id
        self._max = max_message_size

    @property
    def conn_key(self) -> int:
        return self._key

    @property
    def client_id(self) -> str | None:
        return self._id

    @property
    def max_message_size(self) -> int:
        return self._max


class TunnelLeg(Leg):
    """At the home shard: a stream of one of its clients, carried by shard `far`."""

    __slots__ = ("far", "reported", "tunnels", "written")

    def __init__(self, session: Peer, quic_id: int, base: int, far: int,
                 tunnels: Tunnels) -> None:
        super().__init__(session, quic_id, base)
        self.far = far
        self.tunnels = tunnels
        self.written = 0  # bytes the far shard wrote to this stream
        self.reported = 0  # ... of which it was told they left the buffer

    def _say(self, msg: sw.ShardMsg) -> None:
        self.tunnels.send(self.far, msg)

    def data(self, data: bytes, fin: bool) -> None:
        if self.in_done:
            return
        if fin:
            self.in_done = True
        self._say(sw.Data(self.session.conn_key, self.quic_id, data, fin))

    def reset(self, code: int) -> None:
        if not self.in_done:
            self.in_done = True
            self._say(sw.Reset(self.session.conn_key, self.quic_id, code))

    def stopped(self, code: int) -> None:
        if not self.out_done:
            self.out_done = True
            self.session.conn.unwatch_drain(self.quic_id)
            self._say(sw.Stop(self.session.conn_key, self.quic_id, code))

    # -- what the far shard says -------------------------------------------------

    def write(self, data: bytes, fin: bool) -> None:
        if self.out_done:
            return
        conn = self.session.conn
        conn.send(self.quic_id, data, end=fin)
        self.written += len(data)
        if fin:
            self.out_done = True
        self.report()

    def report(self) -> None:
        conn = self.session.conn
        unsent = 0 if conn.closed else conn.unsent(self.quic_id)
        sent = self.written - unsent
        if sent != self.reported:
            self.reported = sent
            self._say(sw.Drained(self.session.conn_key, self.quic_id, sent))
        if unsent > 0 and not conn.closed:
            conn.watch_drain(self.quic_id, self.report)
        else:
            conn.unwatch_drain(self.quic_id)

    def forget(self, figures: tuple[int, int, int, int]) -> None:
        """The far shard is done with the stream both ways."""
        self.in_done = self.out_done = True
        s = self.session
        if s.legs.pop(self.quic_id, None) is not None:
            s.conn.unwatch_drain(self.quic_id)
            s.conn.forget_stream(self.quic_id)
            s.core.stream_over(*figures)

    def forget_if_done(self) -> None:
        # Over both ways by the far shard's Reset/Stop is not forgotten yet:
        # its Forget follows with the stream's figures (`forget`).
        pass

    def cut(self) -> None:
        """The far shard died: end the stream both ways, as a peer gone."""
        self.end_both(wire.Code.PEER_GONE)
        Leg.forget_if_done(self)


class Tunnels:
    """One shard's tunnelled streams, both ends: its clients' streams carried
    elsewhere (`TunnelLeg`s) and other shards' clients' streams carried here
    (`RemoteSession`s)."""

    def __init__(self, sessions: Mapping[int, Peer], opener: Opener, index: int,
                 count: int, send: Send, peers: Peers | None = None) -> None:
        self.sessions = sessions
        self.opener = opener
        self.index = index
        self.count = count
        self.send = send
        #: where keys live; `send` addresses its peer numbers (other shards, other hosts)
        self.peers = peers if peers is not None else Peers(index, count)
        self.remote: dict[int, RemoteSession] = {}
        #: per local connection key: the far shards its streams are carried at
        self._far: dict[int, set[int]] = {}
        #: where the control plane's messages between shards go (`shard_control`)
        self.control: Callable[[int, sw.ControlMsg], None] | None = None

    def shard_of_key(self, conn_key: int) -> int:
        """The peer (shard, or shard of another Coordinator) holding `conn_key`."""
        return self.peers.peer_of(conn_key)

    def home_of(self, broadcast: str) -> int:
        """The shard a broadcast's members' streams are fanned out at."""
        return stable_hash(broadcast) % self.count

    # -- the home side --------------------------------------------------------------

    def carry(self, s: Peer, quic_id: int, base: int, far: int, open_: sw.Open,
              pending: list[bytes], pending_fin: bool) -> TunnelLeg:
        """Hand stream `quic_id` of local client `s` to shard `far`."""
        leg = TunnelLeg(s, quic_id, base, far, self)
        s.legs[quic_id] = leg
        self._far.setdefault(s.conn_key, set()).add(far)
        self.send(far, open_)
        data = b"".join(pending)
        if data or pending_fin:
            leg.data(data, pending_fin)
        return leg

    def session_gone(self, s: Peer) -> None:
        for far in self._far.pop(s.conn_key, ()):
            self.send(far, sw.Gone(s.conn_key))

    def _home_side(self, msg: sw.StreamMsg) -> None:
        s = self.sessions.get(msg.conn)
        if s is None:
            return
        if isinstance(msg, sw.Settled):
            s.core.open_settled()
            return
        if not isinstance(msg, sw.Data | sw.Consumed | sw.Window | sw.Reset | sw.Stop
                          | sw.Forget):
            return  # Open, Gone, Drained: only ever sent to the far side
        leg = s.legs.get(msg.stream)
        if not isinstance(leg, TunnelLeg):
            return
        if isinstance(msg, sw.Data):
            leg.write(msg.data, msg.fin)
        elif isinstance(msg, sw.Consumed):
            s.conn.consume_to(msg.stream, msg.offset)
        elif isinstance(msg, sw.Window):
            s.conn.set_stream_window(msg.stream, msg.window)
        elif isinstance(msg, sw.Reset):
            leg.end_out(msg.code)
        elif isinstance(msg, sw.Stop):
            leg.end_in(msg.code)
        elif isinstance(msg, sw.Forget):
            leg.forget((msg.bytes_in, msg.messages_in, msg.bytes_out, msg.messages_out))

    # -- the far side ---------------------------------------------------------------

    def _far_side(self, home: int, msg: sw.StreamMsg) -> None:
        if isinstance(msg, sw.Open):
            self._open(home, msg)
            return
        rs = self.remote.get(msg.conn)
        if rs is None:
            return
        if isinstance(msg, sw.Gone):
            self._remote_gone(rs)
            return
        if not isinstance(msg, sw.Data | sw.Drained | sw.Reset | sw.Stop):
            return  # only ever sent to the home side
        leg = rs.legs.get(msg.stream)
        if leg is None:
            return
        if isinstance(msg, sw.Data):
            leg.data(msg.data, msg.fin)
        elif isinstance(msg, sw.Drained):
            rs.conn.drained(msg.stream, msg.sent)
        elif isinstance(msg, sw.Reset):
            leg.reset(msg.code)
        elif isinstance(msg, sw.Stop):
            leg.stopped(msg.code)

    def _open(self, home: int, msg: sw.Open) -> None:
        rs = self.remote.get(msg.conn)
        if rs is None:
            rs = self.remote[msg.conn] = RemoteSession(home, msg.conn, msg.client_id,
                                                       msg.max_message_size, self.send)
        # The legs only use what RemoteConn and RemoteCore provide of a session.
        peer = cast(Peer, rs)
        if msg.kind == "broadcast":
            self.opener.open_member(peer, msg.stream, msg.base, msg.broadcast)
        else:
            self.opener.open_from_remote(peer, msg)

    def _remote_gone(self, rs: RemoteSession) -> None:
        del self.remote[rs.conn_key]
        rs.core.state = State.CLOSED
        rs.conn.closed = True
        for leg in list(rs.legs.values()):
            leg.session_gone()
        rs.legs.clear()

    # -- the mesh ----------------------------------------------------------------------

    def deliver(self, shard: int, msgs: list[sw.ShardMsg]) -> None:
        """A batch from shard `shard`, in its order."""
        control = self.control
        is_local = self.peers.is_local
        for msg in msgs:
            if type(msg) in _CONTROL:
                if control is not None:
                    control(shard, cast(sw.ControlMsg, msg))
                continue
            msg = cast(sw.StreamMsg, msg)
            # Which end a message is for: its connection's home is here or not.
            if is_local(msg.conn):
                self._home_side(msg)
            else:
                self._far_side(shard, msg)

    def shard_down(self, shard: int) -> None:
        """Shard `shard` died: its clients' streams here end as their clients
        left, and this shard's streams carried there end as a peer gone."""
        for rs in [r for r in self.remote.values() if r.conn.home == shard]:
            self._remote_gone(rs)
        for key, fars in list(self._far.items()):
            if shard not in fars:
                continue
            fars.discard(shard)
            s = self.sessions.get(key)
            if s is None:
                continue
            for leg in list(s.legs.values()):
                if isinstance(leg, TunnelLeg) and leg.far == shard:
                    leg.cut()
