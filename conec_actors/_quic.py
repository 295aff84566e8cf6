"""The one module that touches aioquic internals (aioquic is pinned to 1.7.2).

- `ConecQuicConnection` grows a stream's receive window, and the
  connection's, as the application *consumes* data (aioquic doubles them on
  arrival), grants no unidirectional streams, requests client
  certificates on the server side, exposes a stream's unsent bytes for
  writers' watermarks, can drop handshake-only buffers, and writes the
  steady state's packets (ACK + flow control + stream data) in one pass, and
  has its ACK-only packets acknowledged now and then (`ACK_ONLY_LIMIT`).
  With a reset key, a server connection's ids carry stateless reset tokens
  (`reset_token`); `receive_stateless_reset` spots a peer's (aioquic: neither).
- Packet-level helpers for the datagram endpoint: header parsing, Retry and
  version negotiation.

An aioquic upgrade should only ever need this file changed.
"""

from __future__ import annotations

import hmac
import os
from typing import Any, NamedTuple

from aioquic.asyncio.server import _encode_invalid_token_close
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    END_STATES,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
)
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.quic.stream import QuicStream
from aioquic.tls import Epoch
from cryptography import x509
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import shard_ids
from .packet_window import PacketWindow

__all__ = [
    "SMALLEST_MAX_DATAGRAM_SIZE",
    "ConecQuicConnection",
    "PacketInfo",
    "RetryGate",
    "parse_packet",
    "reset_token",
    "version_negotiation",
]

CONNECTION_ID_LENGTH = 8
#: Bidirectional streams a peer may have open at once (aioquic lets it open
#: one more as each closes). What bounds memory is the connection window
#: (`QuicConfiguration.max_data`, see `tlsconf.CONNECTION_WINDOW`): bytes a
#: peer sends, in order or with gaps, on any number of streams, count against
#: it until the application consumes them. The stream count only bounds the
#: per-stream bookkeeping (a few KiB each).
MAX_STREAMS_BIDI = 128
_ONE_RTT = Epoch.ONE_RTT
#: aioquic keeps every packet it sent until the peer acknowledges it, and a peer
#: acknowledges only when it receives something ack-eliciting. A side that only
#: answers with ACKs (the Coordinator to an idle client's keepalive PINGs) would
#: keep one more packet (~500 B) per PING for ever (RFC 9000 13.2.4), so once
#: this many ACK-only packets wait with nothing ack-eliciting in flight, the next
#: packet carries a PING: the peer's ACK of it frees them all (4: bench.soak).
ACK_ONLY_LIMIT = 4
#: RFC 9000 10.3: a stateless reset is at least 5 bytes that look like a
#: short header, then a 16-byte token.
RESET_MIN_SIZE = 21


def reset_token(key: bytes, cid: bytes) -> bytes:
    """Connection id `cid`'s stateless reset token: whoever holds `key` can
    end a connection it lost (RFC 9000 10.3.2)."""
    return hmac.digest(key, cid, "sha256")[:16]


def initial_stream_window(connection_window: int, stream_window: int) -> int:
    """The window every new stream starts with (`max_stream_data`): small
    enough that fresh streams, MAX_STREAMS_BIDI opened by each side, can
    fill only half of the connection window between them."""
    return max(1, min(stream_window, connection_window // (4 * MAX_STREAMS_BIDI)))


class ConecQuicConnection(QuicConnection):
    """`QuicConnection` with consumption-driven flow control.

    A stream's window is `consumed + stream_window`, never lowered, updated
    once a quarter of the window has been consumed (batching credit keeps
    MAX_STREAM_DATA frames rare). The connection's MAX_DATA likewise follows
    consumption: what arrived, minus what the streams still hold (received or
    announced by a gap, not consumed), plus the connection window
    (`configuration.max_data`). So whatever a peer sends, the bytes this side
    holds for it stay below that window. Unidirectional streams are not
    granted (the protocol uses none): a peer opening one gets a
    STREAM_LIMIT_ERROR close.

    Streams that stop being read must not use up the connection's credit and
    stall their neighbours (the control stream among them). So a stream
    starts with a small window (`configuration.max_stream_data`, see
    `initial_stream_window`), and grows towards its full window only out of
    a budget its connection's streams share: the credit they hold beyond
    their initial windows ("extra", granted and not yet consumed) adds up to
    at most `max_data` - 2 x MAX_STREAMS_BIDI initial windows - one MAX_DATA
    step. A stream asking for more than is left gets what is left; it
    always keeps its initial window. So the connection's credit covers every
    stream's at all times, whatever number of them stall, and a stalled
    stream's share comes back as it is read, forgotten or ends.
    """

    def __init__(self, *, configuration: QuicConfiguration, stream_window: int,
                 request_client_certificate: bool = False,
                 shard: tuple[int, int] | None = None, reset_key: bytes | None = None,
                 **kwargs: Any) -> None:
        #: (k, n): this connection is held by shard k of n, and every
        #: connection id it issues maps to k (`shard_ids`).
        self._shard = shard
        self._reset_key = None if configuration.is_client else reset_key  # servers' ids only
        super().__init__(configuration=configuration, **kwargs)
        first = self._host_cids[0]
        if shard is not None:
            # aioquic drew the first id with os.urandom in __init__, before any
            # packet went out: swap it for one that names this shard.
            first.cid = self._shard_cid()
            self.host_cid = self._local_initial_source_connection_id = first.cid
        if self._reset_key is not None:  # goes out in the transport parameters
            first.stateless_reset_token = reset_token(self._reset_key, first.cid)
        self._stream_window = stream_window
        self._consumed: dict[int, int] = {}
        self._windows: dict[int, int] = {}  # streams with a window of their own
        self._request_client_certificate = request_client_certificate
        # Streams the application is done with while aioquic still has them
        # (what they hold is only what aioquic buffers).
        self._released: set[int] = set()
        self._connection_window = window = configuration.max_data
        # An eighth, not a quarter: what the peer has not been told yet comes
        # off the budget below (one MAX_DATA frame per 768 KiB read is rare).
        self._connection_step = max(window // 8, 1)
        # MAX_DATA's target minus its value when last written, plus what was
        # credited since: an update is due once this reaches a step.
        self._credit_gap = 0
        self._limits_calls = 0  # packets that asked for connection limits
        self._initial_window = initial = configuration.max_stream_data
        self._budget = max(0, window - 2 * MAX_STREAMS_BIDI * initial
                           - self._connection_step)
        self._extra: dict[int, int] = {}  # per stream, beyond `initial`
        self._extra_total = 0
        # Announced in the transport parameters (built later, in `_initialize`
        # or `connect`). aioquic 1.7.2 hard-codes 128 of each.
        for limit, value in ((self._local_max_streams_uni, 0),
                             (self._local_max_streams_bidi, MAX_STREAMS_BIDI)):
            limit.value = limit.sent = value

    # -- aioquic overrides ---------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        space = self._spaces.get(_ONE_RTT)
        if (space is not None and not space.ack_eliciting_in_flight
                and len(space.sent_packets) >= ACK_ONLY_LIMIT and not self._ping_pending):
            self.send_ping(0)  # its PingAcknowledged is ignored, as the keepalive's
        return super().datagrams_to_send(now)

    def _shard_cid(self) -> bytes:
        assert self._shard is not None
        k, n = self._shard
        return shard_ids.issue(k, n, self._configuration.connection_id_length)

    def _replenish_connection_ids(self) -> None:
        before = len(self._host_cids)
        super()._replenish_connection_ids()
        key = self._reset_key
        for cid in self._host_cids[before:]:
            if self._shard is not None:
                cid.cid = self._shard_cid()
            if key is not None:
                cid.stateless_reset_token = reset_token(key, cid.cid)

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        for space in self._spaces.values():
            space.received_packets = PacketWindow()  # type: ignore[assignment]
        if self._request_client_certificate:
            # aioquic's server only asks for a client certificate through this
            # switch; the chain is validated by our own code afterwards.
            self.tls._request_client_certificate = True

    def _write_stream_limits(self, builder: QuicPacketBuilder, space: Any,
                             stream: QuicStream) -> None:
        # `consume_to` raises the limit; this only announces it (again, after
        # aioquic's loss handling zeroes `max_stream_data_local_sent`).
        local = stream.max_stream_data_local
        sid = stream.stream_id
        if local and sid is not None and stream.max_stream_data_local_sent != local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(sid)
            buf.push_uint_var(local)
            stream.max_stream_data_local_sent = local

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: Any) -> None:
        # aioquic doubles MAX_DATA once half of it has *arrived*, so a peer
        # leaving one byte at the end of every stream window made this side
        # allocate every gap. Here it is raised as data is consumed (or as
        # streams end), in steps of a quarter window.
        max_data = self._local_max_data
        # This runs for every packet: look at the streams (`_held`) only once
        # consumption has made an update due (`consume_to`/`forget_stream`
        # count it in `_credit_gap`), or every 16th packet for what the
        # count does not see (streams aioquic finished and dropped).
        self._limits_calls += 1
        if self._credit_gap >= self._connection_step or not self._limits_calls & 15:
            target = max_data.used - self._held() + self._connection_window
            gap = target - max_data.value
            if gap >= self._connection_step:
                max_data.value = target
                gap = 0
            self._credit_gap = gap
        for limit in (max_data, self._local_max_streams_bidi):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue  # aioquic's batching of MAX_STREAMS
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(limit,),
                )
                buf.push_uint_var(limit.value)
                limit.sent = limit.value

    def _held(self) -> int:
        """Bytes counted against MAX_DATA that the connection still holds:
        received (or skipped over by a gap) and not yet consumed."""
        held = 0
        consumed = self._consumed
        released = self._released
        for sid, stream in self._streams.items():
            if stream.is_finished:
                continue  # about to be discarded, with its buffers
            receiver = stream.receiver
            if sid in released:
                held += receiver.highest_offset - receiver._buffer_start
            else:
                held += receiver.highest_offset - consumed.get(sid, 0)
        return held

    def _write_application(self, builder: QuicPacketBuilder, network_path: Any,
                           now: float) -> None:
        """One packet of ACK, flow-control updates and stream data, when that
        is all there is to send (the steady state).

        aioquic's loop always starts a second packet to find out that nothing
        is left (about a third of the cost of sending a small message); this
        path writes the same frames, in the same order, in one pass and hands
        over to aioquic only for anything else: handshake leftovers, path
        validation, connection ids, PINGs, probes, datagrams, stream resets
        or ends, or more data than one packet holds.

        (Sending a pending ACK along with every data packet, before its 1 ms
        delay, was measured and rejected: it puts the peer's ACK processing
        on every request/response round trip, +20 us at p50.)
        """
        crypto = self._cryptos[_ONE_RTT]
        queue = self._streams_queue
        if not self._steady_state(crypto, network_path, queue):
            super()._write_application(builder, network_path, now)
            return
        space = self._spaces[_ONE_RTT]
        ack_at = space.ack_at
        if ack_at is None or ack_at >= now:  # aioquic's rule: ACKs are not paced
            self._pacing_at = self._loss._pacer.next_send_time(now=now)
            if self._pacing_at is not None:
                return
        builder.start_packet(QuicPacketType.ONE_RTT, crypto)
        if ack_at is not None and ack_at <= now:
            self._write_ack_frame(builder=builder, space=space, now=now)
        self._write_connection_limits(builder=builder, space=space)
        for stream in self._streams.values():
            if stream.max_stream_data_local_sent != stream.max_stream_data_local:
                self._write_stream_limits(builder=builder, space=space, stream=stream)
        sent: list[QuicStream] = []
        more = False
        try:
            for stream in queue:
                sender = stream.sender
                if stream.is_blocked or sender.buffer_is_empty:
                    continue
                used = self._write_stream_frame(
                    builder=builder, space=space, stream=stream,
                    max_offset=min(sender.highest_offset + self._remote_max_data
                                   - self._remote_max_data_used,
                                   stream.max_stream_data_remote))
                self._remote_max_data_used += used
                if used > 0:
                    sent.append(stream)
                if len(sender._pending) or sender._pending_eof:
                    more = True  # did not fit, or held back by flow control
                else:
                    sender.buffer_is_empty = True  # what aioquic's next pass would find
        finally:
            if sent:
                # Served streams go to the back of the queue, as in aioquic.
                self._streams_queue = [st for st in queue if st not in sent] + sent
        if builder.packet_is_empty:
            return
        self._loss._pacer.update_after_send(now=now)
        if more:
            super()._write_application(builder, network_path, now)

    def _steady_state(self, crypto: Any, network_path: Any, queue: list[QuicStream]) -> bool:
        """True if nothing but ACKs, flow control and stream data is due."""
        if not (self._handshake_complete and crypto.send.is_valid()
                and network_path.is_validated) \
                or self._handshake_done_pending or network_path.remote_challenges \
                or self._retire_connection_ids or self._streams_blocked_pending \
                or self._ping_pending or self._probe_pending or self._datagrams_pending \
                or not self._crypto_streams[_ONE_RTT].sender.buffer_is_empty:
            return False
        # Loops, not all()/any() over generators: this runs for every packet.
        for cid in self._host_cids:
            if not cid.was_sent:
                return False
        for stream in queue:
            if stream.is_finished or stream.receiver.stop_pending \
                    or stream.sender.reset_pending:
                return False
        return True

    # -- our API ---------------------------------------------------------------

    def consume(self, stream_id: int, nbytes: int) -> bool:
        """The application consumed `nbytes` more of a stream's data. True if
        a window update is now due (the caller should transmit)."""
        return self.consume_to(stream_id, self._consumed.get(stream_id, 0) + nbytes)

    def consume_to(self, stream_id: int, offset: int) -> bool:
        """The application consumed a stream's data up to `offset` in total.
        True if a window update is now due (the caller should transmit)."""
        before = self._consumed.get(stream_id, 0)
        if offset <= before:
            return False
        stream = self._streams.get(stream_id)
        if stream is None or stream_id in self._released:
            self._drop_extra(stream_id)
            return False  # over: aioquic or `forget_stream` credited it all
        self._consumed[stream_id] = offset
        gap = self._credit_gap + offset - before
        self._credit_gap = gap
        connection_due = gap >= self._connection_step
        local = stream.max_stream_data_local
        if not local:
            return connection_due
        initial = self._initial_window
        window = self._windows.get(stream_id, self._stream_window)
        extra = self._extra.get(stream_id, 0)
        # What the budget leaves this stream (its own share included).
        share = self._budget - self._extra_total + extra
        if window > initial + share:
            window = initial + share
        target = offset + window
        if target - local >= (window >> 2 or 1):
            # Raised now, announced by the next packet (`_write_stream_limits`).
            stream.max_stream_data_local = local = target
            due = True
        else:
            due = connection_due
        now = local - offset - initial  # the stream's extra credit now
        if now < 0:
            now = 0
        if now != extra:
            self._extra_total += now - extra
            self._extra[stream_id] = now
        return due

    def _drop_extra(self, stream_id: int) -> None:
        extra = self._extra.pop(stream_id, 0)
        self._extra_total -= extra

    def set_stream_window(self, stream_id: int, window: int) -> None:
        """Give one stream its own receive window (beyond what was consumed).
        A window smaller than the initial one (the transport parameters')
        applies once that is used up."""
        self._windows[stream_id] = window

    def forget_stream(self, stream_id: int) -> bool:
        """Drop our bookkeeping for a stream the application is done with:
        what it delivered counts as consumed, its share of the budget comes
        back. True if a connection window update is now due (the caller
        should transmit)."""
        consumed = self._consumed.pop(stream_id, 0)
        self._windows.pop(stream_id, None)
        self._drop_extra(stream_id)
        released = self._released
        if released and len(released) > len(self._streams):
            released.intersection_update(self._streams)  # aioquic discarded them
        stream = self._streams.get(stream_id)
        if stream is None or stream.is_finished:
            return False
        released.add(stream_id)
        gap = self._credit_gap + stream.receiver._buffer_start - consumed
        self._credit_gap = gap
        return gap >= self._connection_step

    def unsent(self, stream_id: int) -> int:
        """Bytes written to a stream that have not been sent yet."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender.highest_offset)

    def can_send(self, stream_id: int) -> bool:
        """True while data may still be written to the stream."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return not self._stream_is_discarded(stream_id) and \
                self._stream_can_send(stream_id)
        return not stream.sender.is_finished and not stream.sender.reset_pending \
            and stream.sender._reset_error_code is None

    def can_open_stream(self) -> bool:
        """True if a new bidirectional stream opened now would not be held
        back by the peer's stream limit (MAX_STREAMS)."""
        return bool(self._local_next_stream_id_bidi // 4 < self._remote_max_streams_bidi)

    def next_stream_id(self) -> int:
        """The id of the next bidirectional stream this side would open."""
        return int(self.get_next_available_stream_id())

    def peer_certificate(self) -> x509.Certificate | None:
        """The certificate the peer presented in the handshake, if any."""
        tls = getattr(self, "tls", None)
        return None if tls is None else tls._peer_certificate

    def peer_chain(self) -> list[x509.Certificate]:
        tls = getattr(self, "tls", None)
        return [] if tls is None else list(tls._peer_certificate_chain)

    def set_max_datagram_size(self, size: int) -> None:
        """Apply a smaller datagram size than configured (aioquic does not
        negotiate it)."""
        self._max_datagram_size = max(SMALLEST_MAX_DATAGRAM_SIZE,
                                      min(size, self._max_datagram_size))

    def release_handshake_memory(self) -> None:
        """Shrink the crypto buffers kept from the handshake (48 KiB)."""
        for epoch in (Epoch.INITIAL, Epoch.HANDSHAKE):
            if epoch in self._crypto_buffers:
                self._crypto_buffers[epoch] = Buffer(capacity=4096)

    def received_valid_packet(self) -> bool:
        """True once at least one packet decrypted (so the peer is real)."""
        spaces = getattr(self, "_spaces", None)
        if not spaces:
            return False
        return any(space.largest_received_packet >= 0 for space in spaces.values())

    def receive_stateless_reset(self, data: bytes, now: float) -> bool:
        """True if datagram `data`, naming none of our ids, is the peer's
        stateless reset: it ends in the token of a peer id we may use (not a
        retired one, RFC 9000 10.3.1). The connection then drains, sends
        nothing more, and `peer_closed` says "stateless reset"."""
        if len(data) < RESET_MIN_SIZE or self._state in END_STATES:
            return False
        tail = data[-16:]
        ids = [self._peer_cid, *self._peer_cid_available,
               *(p.peer_cid for p in self._network_paths if p.peer_cid is not None)]
        # compare_digest: the comparison must not leak the token (10.3.1)
        if not any(c.stateless_reset_token and hmac.compare_digest(c.stateless_reset_token, tail)
                   for c in ids):
            return False
        # The idle timeout's code: the connection was lost, not closed by choice.
        self._close_event = events.ConnectionTerminated(
            error_code=QuicErrorCode.INTERNAL_ERROR, frame_type=None,
            reason_phrase="stateless reset")
        self._close_begin(is_initiator=False, now=now)
        return True

    def peer_closed(self) -> tuple[int, str] | None:
        """(code, reason) once the peer's CONNECTION_CLOSE arrived. aioquic
        reports termination only after the draining period (3 PTO); the
        application may treat the connection as gone at once."""
        ev = self._close_event
        if ev is not None and self._state == QuicConnectionState.DRAINING:
            return int(ev.error_code), str(ev.reason_phrase)
        return None

    @property
    def smoothed_rtt(self) -> float:
        """Seconds: aioquic's smoothed round-trip time (0.0 before a sample)."""
        return float(self._loss._rtt_smoothed)

    @property
    def is_closed(self) -> bool:
        return self._state in (QuicConnectionState.CLOSING, QuicConnectionState.DRAINING,
                               QuicConnectionState.TERMINATED)


class PacketInfo(NamedTuple):
    """What the endpoint needs from a packet header."""

    dcid: bytes
    scid: bytes
    version: int | None
    is_initial: bool
    is_version_negotiation: bool
    token: bytes


def parse_packet(data: bytes) -> PacketInfo | None:
    """Parse a datagram's first header; None if it is not QUIC."""
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
    except ValueError:
        return None
    return PacketInfo(
        header.destination_cid, header.source_cid, header.version,
        header.packet_type == QuicPacketType.INITIAL,
        header.packet_type == QuicPacketType.VERSION_NEGOTIATION,
        header.token,
    )


def version_negotiation(pkt: PacketInfo, supported: list[int]) -> bytes:
    return bytes(encode_quic_version_negotiation(
        source_cid=pkt.dcid, destination_cid=pkt.scid, supported_versions=supported))


class RetryGate:
    """Stateless Retry: builds tokens and validates those that come back.

    Shards of one Coordinator share `key` (16 bytes, AES-128-GCM), so a token
    one shard made validates at every shard. With `shard` (k, n), a Retry's
    source connection id, which the client addresses next, names shard k, or
    the shard `retry_packet` is asked to steer the client to."""

    def __init__(self, key: bytes | None = None, shard: tuple[int, int] | None = None) -> None:
        self._handler = QuicRetryTokenHandler()
        if key is not None:
            # aioquic draws its own key and takes none: put the shared one in.
            self._handler._aead = AESGCM(key)
        self._shard = shard

    @staticmethod
    def new_key() -> bytes:
        """A key for `RetryGate(key=...)`, to share among a Coordinator's shards."""
        return AESGCM.generate_key(bit_length=128)

    def retry_packet(self, pkt: PacketInfo, addr: Any, now: float,
                     to_shard: int | None = None) -> bytes:
        """A Retry for `pkt`; with shards, the client's next Initial goes to
        `to_shard` (default: this gate's own shard)."""
        assert pkt.version is not None
        if self._shard is None:
            source_cid = os.urandom(CONNECTION_ID_LENGTH)
        else:
            k, n = self._shard
            source_cid = shard_ids.issue(k if to_shard is None else to_shard, n,
                                         CONNECTION_ID_LENGTH)
        return bytes(encode_quic_retry(
            version=pkt.version,
            source_cid=source_cid,
            destination_cid=pkt.scid,
            original_destination_cid=pkt.dcid,
            retry_token=self._handler.create_token(
                address=addr, original_destination_connection_id=pkt.dcid,
                retry_source_connection_id=source_cid, now=now),
        ))

    def validate(self, pkt: PacketInfo, addr: Any, now: float) -> bytes | None:
        """The original destination cid, or None if the token is not ours/valid."""
        try:
            odcid = self._handler.validate_token(
                address=addr, destination_cid=pkt.dcid, token=pkt.token, now=now)
        except ValueError:
            return None
        return bytes(odcid)

    @staticmethod
    def invalid_token_close(pkt: PacketInfo) -> bytes:
        assert pkt.version is not None
        return bytes(_encode_invalid_token_close(
            version=pkt.version, source_cid=pkt.dcid, destination_cid=pkt.scid))
