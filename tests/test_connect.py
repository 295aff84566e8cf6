"""Admission: certificates, ids, hello, refusals, junk and Retry."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import time
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from conec_actors import (
    CertificateError,
    Client,
    ClientClosed,
    ClientConfig,
    ConnectFailed,
    DuplicateId,
    InvalidId,
)
from conec_actors.certs import CertKey, issue, new_ca, self_signed
from conec_actors.streams import BroadcastMessage
from conec_actors.transport import Conn, Endpoint
from conec_actors.wire import ALPN, Code

from .conftest import coordinator, wait_for
from .test_certs import BAD_LEAVES, make_cert


async def test_connect_counts_and_uncounts() -> None:
    async with coordinator() as h:
        assert await h.coord.num_clients() == 0
        a = await h.client("alice")
        assert a.id == "alice"
        assert await h.coord.num_clients() == 1
        await a.close()
        await wait_for(lambda: _eq(h, 0))


async def _eq(h: Any, n: int) -> bool:
    return bool(await h.coord.num_clients() == n)


async def test_async_with_client_closes() -> None:
    async with coordinator() as h:
        async with Client.connect(h.config("alice")) as a:
            assert await h.coord.num_clients() == 1
        assert a.is_closed
        await wait_for(lambda: _eq(h, 0))
        with pytest.raises(ClientClosed):
            await a.new_proxied_stream("bob")


async def test_every_reader_of_incoming_ends_when_the_client_closes() -> None:
    async with coordinator() as h:
        a = await h.client("alice")

        async def drain() -> int:
            return len([inc async for inc in a.incoming])

        readers = [asyncio.create_task(drain()) for _ in range(3)]
        await asyncio.sleep(0)  # all three wait for a stream
        await a.close()
        assert await asyncio.wait_for(asyncio.gather(*readers), 5) == [0, 0, 0]


async def test_duplicate_id_then_reusable_after_leave() -> None:
    async with coordinator() as h:
        first = await h.client("alice")
        with pytest.raises(DuplicateId, match="alice"):
            await h.client("alice")
        assert await h.coord.num_clients() == 1
        await first.close()
        await wait_for(lambda: _eq(h, 0))
        again = await h.client("alice")
        assert again.id == "alice"


async def test_invalid_id_refused_before_any_traffic() -> None:
    with pytest.raises(InvalidId):
        ClientConfig("Alice", "localhost")
    with pytest.raises(InvalidId):
        ClientConfig("10.0.0.1", "localhost")
    with pytest.raises(ValueError):  # InvalidId is a ValueError too
        ClientConfig("bad_id", "localhost")


async def test_hello_negotiates_and_reports_observed_address() -> None:
    async with coordinator(max_message_size=5000, idle_timeout=8.0) as h:
        a = await h.client("alice", max_message_size=10_000, idle_timeout=20.0)
        assert a.max_message_size == 5000
        host, port = a.observed_address
        assert host == "127.0.0.1"
        assert port == a._endpoint.local_address[1]
        assert a._welcome.idle_timeout == 8.0


async def test_client_certificate_for_another_name_is_refused() -> None:
    async with coordinator() as h:
        mallory = self_signed(["mallory"])
        with pytest.raises(CertificateError, match="alice"):
            await h.client("alice", cert=mallory.cert_pem, key=mallory.key_pem)
        assert await h.coord.num_clients() == 0
        await h.client("mallory", cert=mallory.cert_pem, key=mallory.key_pem)


async def test_client_ca_mode_accepts_issued_and_refuses_others(tmp_path: Any) -> None:
    ca = new_ca("test client CA")
    foreign = new_ca("someone else's CA")
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    async with coordinator(client_ca=tmp_path / "ca.pem") as h:
        good = issue(ca, ["alice"])
        await h.client("alice", cert=good.cert_pem, key=good.key_pem)
        ss = self_signed(["bob"])
        with pytest.raises(CertificateError):
            await h.client("bob", cert=ss.cert_pem, key=ss.key_pem)
        bad = issue(foreign, ["carol"])
        with pytest.raises(CertificateError):
            await h.client("carol", cert=bad.cert_pem, key=bad.key_pem)
        wrong_name = issue(ca, ["dave"])
        with pytest.raises(CertificateError):
            await h.client("erin", cert=wrong_name.cert_pem, key=wrong_name.key_pem)
        # default ephemeral self-signed certificate: refused in CA mode
        with pytest.raises(CertificateError):
            await h.client("frank")
        assert await h.coord.num_clients() == 1


async def test_untrusted_or_misnamed_coordinator_is_refused() -> None:
    async with coordinator() as h:
        other = self_signed(["localhost"])
        with pytest.raises(CertificateError):
            await h.client("alice", ca=other.cert_pem)
        with pytest.raises(CertificateError):
            await Client.connect(ClientConfig("bob", "not-localhost", addr=h.coord.address,
                                              ca=h.cert.cert_pem))
        await h.client("carol")  # the Coordinator is unharmed


async def test_nothing_listening_is_connect_failed() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(ConnectFailed) as err:
        await Client.connect(ClientConfig("alice", "localhost", addr=("127.0.0.1", port),
                                          ca=self_signed(["localhost"]).cert_pem))
    assert isinstance(err.value, ConnectionError)
    assert time.monotonic() - t0 < 8


class _Recorder:
    """Minimal ConnHandler for raw QUIC clients in tests."""

    def __init__(self) -> None:
        self.closed: asyncio.Future[tuple[int, str]] = \
            asyncio.get_running_loop().create_future()

    def handshake_completed(self, conn: Conn) -> None: ...
    def stream_data(self, conn: Conn, quic_id: int, data: bytes, fin: bool) -> None: ...
    def stream_reset(self, conn: Conn, quic_id: int, code: int) -> None: ...
    def stop_sending(self, conn: Conn, quic_id: int, code: int) -> None: ...

    def terminated(self, conn: Conn, code: int, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result((code, reason))


def _raw_config(h: Any, with_cert: bool, name: str = "alice") -> QuicConfiguration:
    cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="localhost",
                            cadata=h.cert.cert_pem, connection_id_length=8)
    if with_cert:
        ck = self_signed([name])
        cfg.load_cert_chain  # noqa: B018 - attribute exists; we set objects directly
        from conec_actors.tlsconf import load_cert_key
        cert, chain, key = load_cert_key(ck.cert_pem, ck.key_pem)
        cfg.certificate, cfg.certificate_chain, cfg.private_key = cert, chain, key
    return cfg


async def test_empty_client_certificate_is_refused() -> None:
    async with coordinator() as h:
        ep = await Endpoint.bind("127.0.0.1", 0)
        try:
            rec = _Recorder()
            ep.connect(h.coord.address, _raw_config(h, with_cert=False), rec, 65536)
            code, reason = await asyncio.wait_for(rec.closed, 5)
            assert code == Code.CERTIFICATE
            assert "certificate" in reason
        finally:
            ep.close()
        await h.client("bob")


async def test_no_hello_is_closed_after_deadline() -> None:
    async with coordinator() as h:
        ep = await Endpoint.bind("127.0.0.1", 0)
        try:
            rec = _Recorder()
            conn = ep.connect(h.coord.address, _raw_config(h, with_cert=True), rec, 65536)
            await conn.wait_handshake()
            code, _ = await asyncio.wait_for(rec.closed, 8)
            assert code == Code.HELLO_TIMEOUT
        finally:
            ep.close()


async def test_junk_datagrams_do_not_disturb_the_coordinator() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for n in (0, 1, 20, 46, 1199, 1200, 1500):
                s.sendto(os.urandom(n), h.coord.address)
            # well-formed long headers around junk (Initial, version 1)
            for _ in range(50):
                rest = 1200 - 26  # 26 header bytes, then the announced length
                hdr = bytes([0xC0, 0, 0, 0, 1, 8]) + os.urandom(8) + bytes([8]) + \
                    os.urandom(8) + bytes([0]) + (0x4000 | rest).to_bytes(2, "big")
                s.sendto(hdr + os.urandom(1200 - len(hdr)), h.coord.address)
            # an unknown version gets version negotiation, nothing else
            s.sendto(bytes([0xC0, 0xAA, 0xAA, 0xAA, 0xAA, 8]) + os.urandom(1300),
                     h.coord.address)
        finally:
            s.close()
        await wait_for(lambda: _junk_dropped_at_least(h, 50))
        assert (await h.coord.stats())["half_open"] == 0
        # ...and nothing of them is kept: no dropped connection lingers (with
        # a timer) until an idle timeout.
        gc.collect()
        assert [c for c in gc.get_objects() if isinstance(c, Conn) and c.closed] == []
        b = await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"fine")
        inc = await b.incoming.__aiter__().__anext__()
        assert await inc.recv.recv() == b"fine"


async def _junk_dropped_at_least(h: Any, n: int) -> bool:
    return bool((await h.coord.stats())["junk_dropped"] >= n)


async def test_stateless_retry_always_on() -> None:
    async with coordinator(stateless_retry=True) as h:
        await h.client("alice")
        st = await h.coord.stats()
        assert st["retries_sent"] >= 1


async def test_stateless_retry_auto_kicks_in_under_half_open_flood() -> None:
    async with coordinator() as h:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN],
                                server_name="localhost", connection_id_length=8)
        try:
            now = time.monotonic()
            for _ in range(300):  # real Initials that never finish their handshake
                q = QuicConnection(configuration=cfg)
                q.connect(h.coord.address, now=now)
                for data, addr in q.datagrams_to_send(now=now):
                    sock.sendto(data, addr)
            await wait_for(lambda: _half_open_at_least(h, 257), timeout=5)
            before = (await h.coord.stats())["retries_sent"]
            await h.client("alice")  # served, through a Retry
            assert (await h.coord.stats())["retries_sent"] > before
        finally:
            sock.close()


async def _half_open_at_least(h: Any, n: int) -> bool:
    return bool((await h.coord.stats())["half_open"] >= n)


async def _raw_session(h: Any, first: bytes, *, quic_id: int | None = None) -> tuple[int, str]:
    """Connect with a valid certificate for 'alice', write `first` on a stream
    (the control stream by default) and return how the Coordinator closed us."""
    ep = await Endpoint.bind("127.0.0.1", 0)
    try:
        rec = _Recorder()
        conn = ep.connect(h.coord.address, _raw_config(h, with_cert=True), rec, 65536)
        await conn.wait_handshake()
        conn.send(conn.new_stream_id() if quic_id is None else quic_id, first)
        return await asyncio.wait_for(rec.closed, 8)
    finally:
        ep.close()


async def test_broken_hellos_are_refused_with_a_reason() -> None:
    from conec_actors import wire
    from conec_actors.framing import frame

    async with coordinator() as h:
        good = dict(id="alice", version=wire.PROTOCOL_VERSION, max_message_size=1000,
                    idle_timeout=10.0, max_datagram_size=1200)
        cases = [
            (frame(wire.encode(wire.Hello(**{**good, "version": 99}))), Code.VERSION),
            (frame(b"\x93garbage"), Code.PROTOCOL),
            (b"\xff\xff\xff\xff", Code.PROTOCOL),  # a 4 GiB control message
            (frame(wire.encode(wire.StreamAccepted())), Code.PROTOCOL),
            (frame(wire.encode(wire.Hello(**{**good, "id": "Alice"}))), Code.INVALID_ID),
            (frame(wire.encode(wire.Hello(**{**good, "id": "bob"}))), Code.CERTIFICATE),
        ]
        for data, expected in cases:
            code, reason = await _raw_session(h, data)
            assert code == expected, (data, code, reason)
            assert reason
        # a data stream before the control stream
        code, _ = await _raw_session(h, b"junk", quic_id=4)
        assert code == Code.PROTOCOL
        # a valid hello right behind a refused one is not acted on
        code, _ = await _raw_session(h, cases[0][0] + frame(wire.encode(wire.Hello(**good))))
        assert code == Code.VERSION
        for _ in range(10):  # while the refused connection drains
            assert await h.coord.num_clients() == 0
            await asyncio.sleep(0.03)
        # nobody else noticed
        a, b = await h.client("alice"), await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"ok")
        inc = await b.incoming.__aiter__().__anext__()
        assert await inc.recv.recv() == b"ok"


async def test_id_is_free_as_soon_as_close_returns() -> None:
    async with coordinator() as h:
        for _ in range(5):
            c = await h.client("same")
            await c.close()
        assert (await h.client("same")).id == "same"


async def test_no_session_tickets_are_issued() -> None:
    """A resumed session would carry no client certificate: the Coordinator
    must never hand out tickets."""
    from conec_actors import wire
    from conec_actors.framing import frame

    async with coordinator() as h:
        tickets: list[object] = []
        ep = await Endpoint.bind("127.0.0.1", 0)
        try:
            rec = _Recorder()
            conn = ep.connect(h.coord.address, _raw_config(h, with_cert=True), rec, 65536,
                              session_ticket_handler=tickets.append)
            await conn.wait_handshake()
            conn.send(conn.new_stream_id(), frame(wire.encode(wire.Hello(
                "alice", wire.PROTOCOL_VERSION, 1000, 10.0, 1200))))
            await wait_for(lambda: _eq(h, 1))
            await asyncio.sleep(0.3)
            assert tickets == []
        finally:
            ep.close()


async def test_a_stream_stopped_before_its_reply_does_not_break_the_coordinator() -> None:
    # A raw client joins a broadcast and stops the stream's return half before
    # the join is answered: the Coordinator's answer then has nowhere to go
    # (aioquic refuses writes to a stopped stream) and must be dropped.
    from conec_actors import wire
    from conec_actors.framing import frame

    async with coordinator() as h:
        ep = await Endpoint.bind("127.0.0.1", 0)
        try:
            conn = ep.connect(h.coord.address, _raw_config(h, with_cert=True), _Recorder(),
                              65536)
            await conn.wait_handshake()
            conn.send(conn.new_stream_id(), frame(wire.encode(wire.Hello(
                id="alice", version=wire.PROTOCOL_VERSION, max_message_size=1000,
                idle_timeout=10.0, max_datagram_size=1200))))
            await wait_for(lambda: _num_clients_is(h, 1))
            for n in range(5):
                quic_id = conn.new_stream_id()
                conn.send(quic_id, frame(wire.encode(wire.StreamHeader("broadcast", "room", n))))
                conn.stop(quic_id, 0)
            # Everything still works for everyone.
            b, c = await h.client("bob"), await h.client("carol")
            sb, _rb = await b.new_broadcast("room")
            _sc, rc = await c.new_broadcast("room")
            await sb.send(b"hello")
            assert await rc.recv() == BroadcastMessage("bob", b"hello")
            assert (await h.coord.stats())["clients"] == 3
        finally:
            ep.close()


async def _num_clients_is(h: Any, n: int) -> bool:
    return bool(await h.coord.num_clients() == n)


async def test_a_cancelled_open_leaves_the_client_working() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        await h.client("bob")
        for opening in (lambda: a.new_proxied_stream("bob"), lambda: a.new_channel("bob"),
                        lambda: a.close_channel("bob")):
            task = asyncio.create_task(opening())
            await asyncio.sleep(0)  # queued for the client's task, not yet handled
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"still working")
        await a.new_channel("bob")
        await a.close_channel("bob")


class _Listener(_Recorder):
    """A raw client that keeps what arrives on its streams (and never answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.received = b""

    def stream_data(self, conn: Conn, quic_id: int, data: bytes, fin: bool) -> None:
        self.received += data


async def test_offers_to_silent_targets_count_as_pending_introductions() -> None:
    # Targets that never answer an introduction: the opener's offers stay
    # pending until they expire, and count against its limit all that time.
    from conec_actors import ProtocolError, wire
    from conec_actors.coord.session import MAX_PENDING_CHANNELS
    from conec_actors.framing import frame

    async with coordinator() as h:
        a = await h.client("alice")
        ep = await Endpoint.bind("127.0.0.1", 0)
        try:
            names = [f"silent{i}" for i in range(MAX_PENDING_CHANNELS + 3)]
            targets = []
            for name in names:  # admitted, then deaf to every control message
                rec = _Listener()
                conn = ep.connect(h.coord.address, _raw_config(h, with_cert=True, name=name),
                                  rec, 65536)
                await conn.wait_handshake()
                conn.send(conn.new_stream_id(), frame(wire.encode(wire.Hello(
                    id=name, version=wire.PROTOCOL_VERSION, max_message_size=1000,
                    idle_timeout=10.0, max_datagram_size=1200))))
                targets.append(rec)
            await wait_for(lambda: _num_clients_is(h, len(names) + 1))
            first = names[:MAX_PENDING_CHANNELS]
            tasks = [asyncio.create_task(a.new_channel(n)) for n in first]
            # every offer delivered: the introductions are past the directory
            await wait_for(lambda: all(b"choffer" in t.received
                                       for t in targets[:MAX_PENDING_CHANNELS]))
            late = [asyncio.create_task(a.new_channel(n)) for n in names[len(first):]]
            # refused long before the unanswered offers expire
            done, _ = await asyncio.wait(late, timeout=3)
            assert len(done) == 3
            assert all(isinstance(t.exception(), ProtocolError)
                       and "pending" in str(t.exception()) for t in late)
            assert not any(t.done() for t in tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            ep.close()


@pytest.mark.parametrize("kind", sorted(BAD_LEAVES))
async def test_client_ca_mode_refuses_a_certificate_that_is_not_a_client_leaf(
        kind: str) -> None:
    ca = new_ca("test client CA")
    kw, reason = BAD_LEAVES[kind]
    bad = make_cert("mallory", issuer=ca, **kw)  # type: ignore[arg-type]
    async with coordinator(client_ca=ca.cert_pem) as h:
        with pytest.raises(CertificateError, match=reason):
            await h.client("mallory", cert=bad.cert_pem, key=bad.key_pem)
        good = issue(ca, ["alice"])
        await h.client("alice", cert=good.cert_pem, key=good.key_pem)
        assert await h.coord.num_clients() == 1


async def test_client_ca_mode_refuses_a_leaf_of_an_intermediate_it_brings() -> None:
    root = new_ca("test client CA")
    inter = make_cert("intermediate", issuer=root, ca=True, digital_signature=None)
    leaf = issue(inter, ["mallory"])
    with_chain = CertKey(cert_pem=leaf.cert_pem + inter.cert_pem, key_pem=leaf.key_pem)
    async with coordinator(client_ca=root.cert_pem) as h:
        with pytest.raises(CertificateError, match="not issued directly"):
            await h.client("mallory", cert=with_chain.cert_pem, key=with_chain.key_pem)
        assert await h.coord.num_clients() == 0
    # configured as the client CA, the intermediate admits its leaves
    async with coordinator(client_ca=inter.cert_pem) as h:
        await h.client("mallory", cert=leaf.cert_pem, key=leaf.key_pem)


async def test_self_signed_mode_refuses_a_certificate_whose_self_signature_is_forged(
        ) -> None:
    # The key matches the certificate (the handshake's proof of possession
    # passes); only the certificate's signature over itself is wrong.
    forged = make_cert("mallory", forge_signature=True)
    async with coordinator() as h:
        with pytest.raises(CertificateError, match="signature does not verify"):
            await h.client("mallory", cert=forged.cert_pem, key=forged.key_pem)
        await h.client("alice")
        assert await h.coord.num_clients() == 1


#: The longest valid id: 253 characters, four labels.
LONG_ID = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])


async def test_a_253_character_id_connects_with_the_default_certificate() -> None:
    assert len(LONG_ID) == 253
    async with coordinator() as h:
        long = await h.client(LONG_ID)  # its ephemeral self-signed certificate
        a = await h.client("alice")
        send, recv = await a.new_proxied_stream(LONG_ID)
        await send.send(b"hello")
        inc = await asyncio.wait_for(long.incoming.__aiter__().__anext__(), 5)
        assert inc.peer == "alice"
        assert await inc.recv.recv() == b"hello"
        await inc.send.send(b"back")
        assert await recv.recv() == b"back"
        await a.tell(LONG_ID, "told")
        env = await asyncio.wait_for(long.mailbox.__aiter__().__anext__(), 5)
        assert (env.sender, env.body) == ("alice", "told")
        await long.tell("alice", "told back")
        env = await asyncio.wait_for(a.mailbox.__aiter__().__anext__(), 5)
        assert (env.sender, env.body) == (LONG_ID, "told back")
        await a.new_channel(LONG_ID)
        direct, _ = await a.new_direct_stream(LONG_ID)
        await direct.send(b"direct")
        inc = await asyncio.wait_for(long.incoming.__aiter__().__anext__(), 5)
        assert (inc.peer, await inc.recv.recv()) == ("alice", b"direct")


async def test_a_control_message_nested_too_deep_is_a_protocol_error() -> None:
    from conec_actors.framing import frame

    from .test_wire import DEEP_HELLO

    async with coordinator() as h:
        a = await h.client("carol")
        code, reason = await _raw_session(h, frame(DEEP_HELLO))
        assert code == Code.PROTOCOL
        assert "malformed control message" in reason
        # nobody else noticed
        b = await h.client("bob")
        send, _ = await a.new_proxied_stream("bob")
        await send.send(b"still here")
        inc = await asyncio.wait_for(b.incoming.__aiter__().__anext__(), 5)
        assert await inc.recv.recv() == b"still here"
