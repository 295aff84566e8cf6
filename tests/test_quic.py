"""`ConecQuicConnection` without sockets: two connections wired back to back
on a virtual clock, with datagram loss chosen by the test.

These check what the subclass changes in aioquic: the one-pass packet writer
(every byte still arrives, in order, under loss, across many streams and
message sizes; resets and ends still go out), and the window that grows only
as the application consumes (the sender stops at the window; a lost window
update is sent again), and the connection-level bounds (no unidirectional
streams; bytes held, gaps included, never above the connection window;
streams that stop being read never use up the connection's credit)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, pull_quic_header
from aioquic.tls import Epoch

from conec_actors._quic import (
    ACK_ONLY_LIMIT,
    CONNECTION_ID_LENGTH,
    MAX_STREAMS_BIDI,
    ConecQuicConnection,
)
from conec_actors.streams import STREAM_WINDOW
from conec_actors.tlsconf import CONNECTION_WINDOW, quic_configuration

from .conftest import coord_cert

WINDOW = 64 * 1024
CLIENT_ADDR = ("10.0.0.1", 1000)
SERVER_ADDR = ("10.0.0.2", 2000)

Drop = Callable[[bytes], bool]


class Pair:
    """A client and a server connection and the datagrams between them."""

    def __init__(self, drop: Drop | None = None,
                 cls: type[ConecQuicConnection] = ConecQuicConnection,
                 window: int = WINDOW, max_data: int | None = None,
                 real_initial: bool = False) -> None:
        cert = coord_cert()
        common = dict(cert_pem=cert.cert_pem, key_pem=cert.key_pem, idle_timeout=60.0,
                      max_datagram_size=1200, stream_window=window)
        self.now = 1000.0
        self.drop = drop or (lambda data: False)
        self.sent = {"client": 0, "server": 0}
        configs = [quic_configuration(is_client=True, server_name="localhost",
                                      cadata=cert.cert_pem, **common),
                   quic_configuration(is_client=False, **common)]
        for cfg in configs:
            if max_data is not None:
                cfg.max_data = max_data
            if not real_initial:  # else the small initial window of real connections
                cfg.max_stream_data = window
        self.client = cls(configuration=configs[0], stream_window=window)
        self.client.connect(SERVER_ADDR, now=self.now)
        first = self.client.datagrams_to_send(now=self.now)
        hdr = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=CONNECTION_ID_LENGTH)
        self.server = cls(
            configuration=configs[1],
            stream_window=window, original_destination_connection_id=hdr.destination_cid)
        for data, _ in first:
            self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
        self.last_sizes: list[int] = []
        self.received: dict[str, dict[int, bytearray]] = {"client": {}, "server": {}}
        self.ended: dict[str, set[int]] = {"client": set(), "server": set()}
        self.resets: dict[str, dict[int, int]] = {"client": {}, "server": {}}
        self.settle()
        assert self.client._handshake_complete and self.server._handshake_complete

    def _deliver(self, src: ConecQuicConnection, dst: ConecQuicConnection, name: str) -> int:
        n = 0
        addr = CLIENT_ADDR if src is self.client else SERVER_ADDR
        self.last_sizes = []
        for data, _ in src.datagrams_to_send(now=self.now):
            self.last_sizes.append(len(data))
            self.sent[name] += 1
            n += 1
            if not self.drop(data):
                dst.receive_datagram(data, addr, now=self.now)
        return n

    def _events(self, conn: ConecQuicConnection, name: str) -> None:
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, events.StreamDataReceived):
                self.received[name].setdefault(ev.stream_id, bytearray()).extend(ev.data)
                if ev.end_stream:
                    self.ended[name].add(ev.stream_id)
            elif isinstance(ev, events.StreamReset):
                self.resets[name][ev.stream_id] = ev.error_code

    def step(self) -> int:
        """Exchange what both sides have to send now; the datagrams sent."""
        n = self._deliver(self.client, self.server, "client")
        n += self._deliver(self.server, self.client, "server")
        self._events(self.client, "client")
        self._events(self.server, "server")
        return n

    def settle(self, max_steps: int = 10_000) -> None:
        """Run (firing timers on the virtual clock) until nothing is in flight."""
        for _ in range(max_steps):
            if self.step():
                continue
            timers = [t for t in (self.client.get_timer(), self.server.get_timer())
                      if t is not None and t < self.now + 30]
            if not timers:
                return
            self.now = max(self.now, min(timers))
            for conn in (self.client, self.server):
                t = conn.get_timer()
                if t is not None and t <= self.now:
                    conn.handle_timer(now=self.now)
        raise AssertionError("the connections never settled")

    def consume_all(self, name: str) -> None:
        conn = self.client if name == "client" else self.server
        for sid, data in self.received[name].items():
            conn.consume_to(sid, len(data))


def test_one_small_message_is_one_datagram() -> None:
    pair = Pair()
    sid = pair.client.get_next_available_stream_id()
    for i in range(50):
        before = pair.sent["client"]
        pair.client.send_stream_data(sid, bytes([i]) * 100)
        pair.now += 0.001
        pair._deliver(pair.client, pair.server, "client")
        assert pair.sent["client"] - before == 1
        pair._events(pair.server, "server")
        pair._deliver(pair.server, pair.client, "server")
    assert bytes(pair.received["server"][sid]) == b"".join(bytes([i]) * 100 for i in range(50))


class StockWriter(ConecQuicConnection):
    """The same connection with aioquic's own packet writer, for comparison."""

    _write_application = QuicConnection._write_application


def test_the_one_pass_writer_sends_what_aioquic_would() -> None:
    pairs = [Pair(), Pair(cls=StockWriter)]
    rng = random.Random(3)
    script = [(rng.randrange(3), rng.choice([0, 10, 900, 1200, 4000, 20000]))
              for _ in range(300)]
    sizes: list[list[list[int]]] = [[], []]
    for k, pair in enumerate(pairs):
        sids = []
        for _ in range(3):
            sids.append(pair.client.get_next_available_stream_id())
            pair.client.send_stream_data(sids[-1], b"")
        pair.settle()
        for i, (stream, size) in enumerate(script):
            pair.client.send_stream_data(sids[stream], bytes(size))
            pair.now += 0.0002
            pair._deliver(pair.client, pair.server, "client")
            sizes[k].append(pair.last_sizes)
            pair._events(pair.server, "server")
            if i % 3 == 0:  # the peer's ACKs and window updates now and then
                pair.consume_all("server")
                pair._deliver(pair.server, pair.client, "server")
    assert sizes[0] == sizes[1]
    assert sum(map(len, sizes[0])) > len(script)  # some writes took several datagrams


def test_every_byte_arrives_in_order_under_loss() -> None:
    rng = random.Random(7)
    pair = Pair(drop=lambda data: rng.random() < 0.1)
    streams = []
    for _ in range(5):
        streams.append(pair.client.get_next_available_stream_id())
        pair.client.send_stream_data(streams[-1], b"")  # opens it
    sent = {sid: bytearray() for sid in streams}
    for _ in range(600):
        sid = rng.choice(streams)
        data = rng.randbytes(rng.choice([1, 60, 700, 1500, 5000]))
        pair.client.send_stream_data(sid, data)
        sent[sid].extend(data)
        pair.now += 0.0005
        pair.step()
        pair.consume_all("server")
    for sid in streams:
        pair.client.send_stream_data(sid, b"", end_stream=True)
    for _ in range(20):
        pair.settle()
        pair.consume_all("server")
    for sid in streams:
        assert pair.received["server"].get(sid, bytearray()) == sent[sid]
        assert sid in pair.ended["server"]


def test_the_sender_stops_at_the_window_until_the_reader_consumes() -> None:
    pair = Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, bytes(3 * WINDOW))
    pair.settle()
    assert len(pair.received["server"][sid]) == WINDOW  # nothing consumed yet
    assert pair.client.unsent(sid) == 2 * WINDOW
    assert pair.server.consume_to(sid, WINDOW // 8) is False  # under the update step
    assert pair.server.consume_to(sid, WINDOW // 2) is True
    pair.settle()
    assert len(pair.received["server"][sid]) == WINDOW // 2 + WINDOW


def test_a_lost_window_update_is_sent_again() -> None:
    dropping = {"on": False}
    pair = Pair(drop=lambda data: dropping["on"])
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, bytes(2 * WINDOW))
    pair.settle()
    assert len(pair.received["server"][sid]) == WINDOW
    # The packet carrying MAX_STREAM_DATA (and the ACKs) is lost.
    assert pair.server.consume_to(sid, WINDOW)
    dropping["on"] = True
    assert pair._deliver(pair.server, pair.client, "server") == 1
    dropping["on"] = False
    pair.settle()
    assert len(pair.received["server"][sid]) == 2 * WINDOW
    assert pair.client.unsent(sid) == 0


def test_a_reset_still_reaches_the_peer() -> None:
    pair = Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, b"x" * 100)
    pair.settle()
    pair.client.reset_stream(sid, 0x42)
    pair.settle()
    assert pair.resets["server"] == {sid: 0x42}
    assert pair.received["server"][sid] == b"x" * 100


def _gap(conn: ConecQuicConnection, sid: int, window: int) -> None:
    """What an attacker does: write a window's worth and send only its last
    byte, leaving the receiver a gap to hold."""
    conn.send_stream_data(sid, bytes(window))
    conn._streams[sid].sender._pending.subtract(0, window - 1)


def _held(conn: ConecQuicConnection) -> int:
    """Bytes the receiving connection allocated for its streams' buffers."""
    return sum(len(st.receiver._buffer) for st in conn._streams.values())


def test_gaps_on_every_stream_cost_at_most_the_connection_window() -> None:
    pair = Pair(window=STREAM_WINDOW)
    client, server = pair.client, pair.server
    assert client._remote_max_streams_uni == 0
    assert client._remote_max_streams_bidi == MAX_STREAMS_BIDI
    for sid in range(0, 4 * MAX_STREAMS_BIDI, 4):
        _gap(client, sid, STREAM_WINDOW)
    pair.settle()
    # Legal QUIC: the attacker stopped at the connection's credit, unrefused.
    assert not server.is_closed and not client.is_closed
    assert server._local_max_data.value == CONNECTION_WINDOW
    assert _held(server) <= CONNECTION_WINDOW
    assert len(server._streams) >= CONNECTION_WINDOW // STREAM_WINDOW


def test_consumed_bytes_are_credited_and_a_stalled_stream_does_not_stall_others() -> None:
    conn_window = 4 * WINDOW
    pair = Pair(max_data=conn_window)
    stalled = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stalled, bytes(2 * WINDOW))
    flowing = stalled + 4
    total = 6 * conn_window  # many times the connection window
    pair.client.send_stream_data(flowing, bytes(total))
    for _ in range(200):
        pair.settle()
        got = len(pair.received["server"].get(flowing, b""))
        if got == total:
            break
        pair.server.consume_to(flowing, got)  # the application reads this one
    assert len(pair.received["server"][flowing]) == total
    # The stalled stream holds its window, never more, and nothing of it was consumed.
    assert len(pair.received["server"][stalled]) == WINDOW
    assert pair.server._local_max_data.value <= total + WINDOW + conn_window


def test_a_stream_the_application_forgot_gives_its_credit_back() -> None:
    pair = Pair(max_data=2 * WINDOW)
    a = pair.client.get_next_available_stream_id()
    b, c = a + 4, a + 8
    for sid in (a, b, c):
        pair.client.send_stream_data(sid, bytes(WINDOW))
        pair.settle()
    # Nothing consumed: the first two fill the connection's window.
    assert len(pair.received["server"].get(c, b"")) == 0
    # The application drops `a` unread (say it reset it): its bytes are freed.
    assert pair.server.forget_stream(a)
    pair.settle()
    assert len(pair.received["server"][c]) == WINDOW


def test_a_unidirectional_stream_closes_the_connection_with_stream_limit_error() -> None:
    pair = Pair()
    pair.client._remote_max_streams_uni = 1  # a peer that ignores the limit
    pair.client.send_stream_data(2, b"uni")
    pair.settle()
    assert pair.server._close_event is not None
    assert pair.server._close_event.error_code == QuicErrorCode.STREAM_LIMIT_ERROR
    assert pair.received["server"] == {}


def _credit_covers_streams(conn: ConecQuicConnection) -> None:
    """The connection's credit outlasts its streams': however much the peer
    writes on streams that are not read, the others are not starved."""
    max_data = conn._local_max_data
    streams = sum(max(0, st.max_stream_data_local - st.receiver.highest_offset)
                  for st in conn._streams.values())
    assert max_data.value - max_data.used >= streams


def _stall_and_flow(pair: Pair, stalled: list[int], writer: ConecQuicConnection,
                    reader_name: str, read_once: bool) -> None:
    """Fill `stalled` (the reader reads them once, or never), then check that
    a stream to that same reader, and stream 0, still carry many windows."""
    reader = pair.server if reader_name == "server" else pair.client
    for sid in stalled:
        writer.send_stream_data(sid, bytes(3 * STREAM_WINDOW))
    pair.settle(max_steps=100_000)
    if read_once:  # read what came, so the windows grow, then stop reading
        for sid in stalled:
            reader.consume_to(sid, len(pair.received[reader_name][sid]))
        pair.settle(max_steps=100_000)
    _credit_covers_streams(reader)
    flowing = writer.get_next_available_stream_id()
    total = CONNECTION_WINDOW + STREAM_WINDOW  # more than the connection's first credit
    writer.send_stream_data(flowing, bytes(total))
    control: list[int] = []
    got = 0
    for i in range(1000):  # a window per round trip at the least
        writer.send_stream_data(0, b"ping%d" % i)
        control.append(i)
        pair.settle()
        got = len(pair.received[reader_name].get(flowing, b""))
        reader.consume_to(flowing, got)
        reader.consume_to(0, len(pair.received[reader_name].get(0, b"")))
        if got == total:
            break
    assert got == total, f"the flowing stream stalled at {got} of {total} bytes"
    _credit_covers_streams(reader)
    assert bytes(pair.received[reader_name][0]) == b"".join(b"ping%d" % i for i in control)
    # The stalled streams were stopped by their own windows, not the connection's.
    for sid in stalled:
        assert writer.unsent(sid) > 0
    assert _held(reader) <= CONNECTION_WINDOW
    assert not pair.client.is_closed and not pair.server.is_closed


@pytest.mark.parametrize("read_once", [False, True])
def test_forty_stalled_streams_do_not_stall_the_connection(read_once: bool) -> None:
    pair = Pair(window=STREAM_WINDOW, max_data=CONNECTION_WINDOW, real_initial=True)
    pair.client.send_stream_data(0, b"")
    stalled = list(range(4, 4 * 41, 4))
    _stall_and_flow(pair, stalled, pair.client, "server", read_once)


@pytest.mark.parametrize("read_once", [False, True])
def test_forty_stalled_streams_the_reader_opened_do_not_stall_the_connection(
        read_once: bool) -> None:
    # The streams' opener is the side that stops reading (a Coordinator's
    # legs towards a client; a client's own streams).
    pair = Pair(window=STREAM_WINDOW, max_data=CONNECTION_WINDOW, real_initial=True)
    pair.client.send_stream_data(0, b"")
    stalled = list(range(1, 4 * 40, 4))  # server-initiated bidirectional ids
    for sid in stalled:
        pair.server.send_stream_data(sid, b"open")
    pair.settle()
    _stall_and_flow(pair, stalled, pair.client, "server", read_once)


def test_stalled_streams_resume_and_give_their_credit_back() -> None:
    pair = Pair(window=STREAM_WINDOW, max_data=CONNECTION_WINDOW, real_initial=True)
    server = pair.server
    stalled = list(range(0, 4 * 40, 4))
    size = 2 * STREAM_WINDOW
    for sid in stalled:
        pair.client.send_stream_data(sid, bytes(size), end_stream=True)
    pair.settle()
    for sid in stalled:  # read once: every window asks for a full window
        server.consume_to(sid, len(pair.received["server"][sid]))
    pair.settle()
    assert server._extra_total <= server._budget
    # The reader comes back: everything arrives, and the budget is whole again.
    for _ in range(100):
        pair.consume_all("server")
        pair.settle()
        if all(sid in pair.ended["server"] for sid in stalled):
            break
    assert all(len(pair.received["server"][sid]) == size for sid in stalled)
    pair.consume_all("server")
    for sid in stalled:
        server.forget_stream(sid)
    assert server._extra_total == 0 and not server._extra
    # A new stream gets its full window again.
    sid = stalled[-1] + 4
    pair.client.send_stream_data(sid, bytes(4 * STREAM_WINDOW))
    pair.settle()
    server.consume_to(sid, len(pair.received["server"][sid]))
    pair.settle()
    assert len(pair.received["server"][sid]) >= STREAM_WINDOW


def test_gaps_on_every_stream_at_the_initial_windows_leave_credit_to_spare() -> None:
    pair = Pair(window=STREAM_WINDOW, max_data=CONNECTION_WINDOW, real_initial=True)
    client, server = pair.client, pair.server
    initial = server._initial_window
    for sid in range(0, 4 * MAX_STREAMS_BIDI, 4):
        _gap(client, sid, initial)
    pair.settle()
    assert not server.is_closed and not client.is_closed
    assert _held(server) <= MAX_STREAMS_BIDI * initial <= CONNECTION_WINDOW // 4
    _credit_covers_streams(server)


class KeepsAckOnly(ConecQuicConnection):
    """The connection without the PING that gets its ACK-only packets acknowledged."""

    datagrams_to_send = QuicConnection.datagrams_to_send


@pytest.mark.parametrize("cls", [ConecQuicConnection, KeepsAckOnly])
def test_acks_that_only_answer_pings_are_acknowledged_in_the_end(
        cls: type[ConecQuicConnection]) -> None:
    # An idle client's keepalive: the server answers each PING with an
    # ACK-only packet, which the client never acknowledges on its own.
    pair = Pair(cls=cls)
    kept = []
    for _ in range(10 * ACK_ONLY_LIMIT):
        pair.now += 1.0
        pair.client.send_ping(0)
        pair.settle()
        kept.append(len(pair.server._spaces[Epoch.ONE_RTT].sent_packets))
    if cls is KeepsAckOnly:  # what aioquic alone does: one more packet per PING
        assert kept[-1] >= 10 * ACK_ONLY_LIMIT
    else:
        assert max(kept) <= ACK_ONLY_LIMIT
