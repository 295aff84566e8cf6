"""What every stream a client opens through the front-end has in common.

A `Leg` is one stream on one client's connection: a proxied stream's end
(`proxy.ProxiedLeg`) or a broadcast member (`fanout.MemberLeg`). Both end
the same way: each direction is over once (`end_in`, `end_out`, `finish`),
and the leg is forgotten when both are. `Peer` is what a leg needs of the
front-end's session for its client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..transport import Conn
    from .session import SessionCore


class Peer(Protocol):
    """The front-end's session for one client, as its legs see it."""

    conn: Conn
    core: SessionCore
    legs: dict[int, Leg]

    @property
    def conn_key(self) -> int: ...

    @property
    def client_id(self) -> str | None: ...

    @property
    def max_message_size(self) -> int: ...


class Leg:
    """One stream of one client's connection, carried by the front-end."""

    __slots__ = ("base", "in_done", "out_done", "quic_id", "session")

    def __init__(self, session: Peer, quic_id: int, base: int = 0) -> None:
        self.session = session
        self.quic_id = quic_id
        self.base = base  # bytes of the stream before its payload (the header)
        self.in_done = False  # nothing more will come from this leg
        self.out_done = False  # nothing more will be written to this leg

    def data(self, data: bytes, fin: bool) -> None:
        """The client sent on this stream."""

    def reset(self, code: int) -> None:
        """The client aborted its sending side."""
        self.in_done = True
        self.forget_if_done()

    def stopped(self, code: int) -> None:
        """The client stopped reading (aioquic reset our sending side)."""
        self.out_done = True
        self.session.conn.unwatch_drain(self.quic_id)
        self.forget_if_done()

    def session_gone(self) -> None:
        """This leg's client left."""

    def end_out(self, code: int) -> None:
        """Reset what this leg's client reads."""
        if not self.out_done:
            self.out_done = True
            conn = self.session.conn
            conn.reset(self.quic_id, code)
            conn.unwatch_drain(self.quic_id)
        self.forget_if_done()

    def end_in(self, code: int) -> None:
        """Ask this leg's client to stop sending."""
        if not self.in_done:
            self.in_done = True
            self.session.conn.stop(self.quic_id, code)
        self.forget_if_done()

    def end_both(self, code: int) -> None:
        """End both directions of this leg with `code`."""
        self.end_in(code)
        self.end_out(code)

    def finish(self) -> None:
        """Cleanly end what this leg's client reads."""
        if not self.out_done:
            self.out_done = True
            self.session.conn.send(self.quic_id, b"", end=True)
        self.forget_if_done()

    def figures(self) -> tuple[int, int, int, int]:
        """Bytes and messages carried from this leg's client, and to it."""
        return (0, 0, 0, 0)

    def forget_if_done(self) -> None:
        if self.in_done and self.out_done:
            s = self.session
            if s.legs.pop(self.quic_id, None) is not None:
                s.conn.forget_stream(self.quic_id)
                s.core.stream_over(*self.figures())
            self.forgotten()

    def forgotten(self) -> None:
        """Both directions are over and the stream is forgotten."""
