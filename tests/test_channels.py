"""Direct channels on loopback: introduction, pinning, lifecycle, streams."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conec_actors import (
    CertificateError,
    ChannelExists,
    ChannelToSelf,
    ClientClosed,
    ConnectFailed,
    NoChannel,
    NoSuchPeer,
    PeerNotListening,
    StreamId,
    StreamIdInUse,
    StreamReset,
)
from conec_actors.certs import issue, new_ca, self_signed
from conec_actors.wire import Code

from .conftest import coordinator, wait_for
from .test_certs import BAD_LEAVES, make_cert


async def next_incoming(client: Any) -> Any:
    return await asyncio.wait_for(anext(client.incoming), 5)


async def forwarded(h: Any) -> int:
    return int((await h.coord.stats())["bytes_forwarded"])


async def test_channel_carries_direct_streams_both_ways_without_the_coordinator() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        await a.new_channel("bob")
        # both ends registered the channel when new_channel returns
        assert a.channels() == ["bob"] and b.channels() == ["alice"]
        before = await forwarded(h)
        send, recv = await a.new_direct_stream("bob")
        assert send.stream_id == StreamId("direct", send.stream_id.n)
        for i in range(100):
            await send.send(b"%d" % i + b"." * 1000)
        inc = await next_incoming(b)
        assert inc.peer == "alice" and inc.stream_id.is_direct
        assert [int((await inc.recv.recv()).split(b".")[0]) for _ in range(100)] == \
            list(range(100))
        await inc.send.send(b"reply")
        assert await recv.recv() == b"reply"
        # the other side may open streams too
        s2, _ = await b.new_direct_stream("alice")
        await s2.send(b"from bob")
        inc2 = await next_incoming(a)
        assert inc2.peer == "bob" and inc2.stream_id.kind == "direct"
        assert await inc2.recv.recv() == b"from bob"
        assert await forwarded(h) == before


async def test_refusals() -> None:
    async with coordinator() as h:
        a = await h.client("alice")
        await h.client("deaf", listen=False)
        with pytest.raises(ChannelToSelf):
            await a.new_channel("alice")
        with pytest.raises(NoSuchPeer):
            await a.new_channel("nobody")
        with pytest.raises(PeerNotListening):
            await a.new_channel("deaf")
        with pytest.raises(NoChannel):
            await a.new_direct_stream("deaf")
        with pytest.raises(NoChannel):
            await a.close_channel("deaf")
        assert a.channels() == []


async def test_duplicate_channels_refused_in_either_direction() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        await a.new_channel("bob")
        with pytest.raises(ChannelExists):
            await a.new_channel("bob")
        with pytest.raises(ChannelExists):
            await b.new_channel("alice")


async def test_listen_false_can_open_and_then_streams_go_both_ways() -> None:
    async with coordinator() as h:
        shy = await h.client("shy", listen=False)
        b = await h.client("bob")
        await shy.new_channel("bob")
        s, _ = await b.new_direct_stream("shy")
        await s.send(b"to the shy one")
        inc = await next_incoming(shy)
        assert inc.stream_id.is_direct and await inc.recv.recv() == b"to the shy one"


async def test_close_channel_resets_streams_at_both_ends_and_reopen_works() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        for round_ in range(3):
            await a.new_channel("bob")
            send, recv = await a.new_direct_stream("bob")
            await send.send(b"round %d" % round_)
            inc = await next_incoming(b)
            assert await inc.recv.recv() == b"round %d" % round_
            closer, other = (a, "bob") if round_ % 2 == 0 else (b, "alice")
            await closer.close_channel(other)
            with pytest.raises(StreamReset) as err:
                await asyncio.wait_for(inc.recv.recv(), 5)
            assert err.value.code in (Code.CHANNEL_CLOSED,)
            with pytest.raises(StreamReset):
                await recv.recv()
            with pytest.raises(StreamReset):
                await send.send(b"after close")
            await wait_for(lambda: not a.channels() and not b.channels())
            with pytest.raises(NoChannel):
                await a.new_direct_stream("bob")


async def test_direct_stream_numbers() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        await a.new_channel("bob")
        s, _ = await a.new_direct_stream("bob", stream_id=9)
        assert s.stream_id == StreamId("direct", 9)
        with pytest.raises(StreamIdInUse):
            await a.new_direct_stream("bob", stream_id=9)
        s2, _ = await b.new_direct_stream("alice", stream_id=9)  # per opener
        assert s2.stream_id.n == 9
        with pytest.raises(ValueError):
            await a.new_direct_stream("bob", stream_id=-1)


async def test_new_direct_stream_waits_for_an_opening_channel() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        opening = asyncio.create_task(a.new_channel("bob"))
        await asyncio.sleep(0)
        send, _ = await a.new_direct_stream("bob")  # waits, no NoChannel
        await opening
        await send.send(b"x")
        assert await (await next_incoming(b)).recv.recv() == b"x"


async def test_new_stream_prefers_a_channel_and_falls_back_to_proxied() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        await h.client("deaf", listen=False)
        send, _ = await a.new_stream("bob")  # opens a channel on the way
        assert send.stream_id.is_direct
        assert a.channels() == ["bob"]
        t0 = time.monotonic()
        send2, _ = await a.new_stream("deaf")
        assert send2.stream_id.is_proxied
        assert time.monotonic() - t0 < 2.5
        await send2.send(b"via the coordinator")
        loop_send, _ = await a.new_stream("alice")  # to itself: proxied loopback
        assert loop_send.stream_id.is_proxied
        await send.send(b"direct")
        assert await (await next_incoming(b)).recv.recv() == b"direct"


async def test_unreachable_peer_is_connect_failed_and_new_stream_falls_back() -> None:
    """A peer whose address the Coordinator reports is unreachable from the
    opener (simulated: the target drops every datagram of the dial)."""
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        ep = b._endpoint
        real = ep.datagram_received
        ep.datagram_received = lambda data, addr: (  # type: ignore[method-assign]
            None if addr[1] == a._endpoint.local_address[1] else real(data, addr))
        t0 = time.monotonic()
        with pytest.raises(ConnectFailed):
            await a.new_channel("bob")
        assert 4.5 < time.monotonic() - t0 < 7
        assert a.channels() == []
        t0 = time.monotonic()
        send, _ = await a.new_stream("bob")
        assert send.stream_id.is_proxied
        assert time.monotonic() - t0 < 2.5


async def test_peer_certificate_must_be_what_the_coordinator_vouched_for() -> None:
    """The target checks the dialler presents the introduced certificate."""
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        impostor = self_signed(["alice"])  # right name, other key
        from conec_actors.tlsconf import load_cert_key
        cert, chain, key = load_cert_key(impostor.cert_pem, impostor.key_pem)
        orig = a._chans._quic_config

        def forged(**kw: Any) -> Any:
            cfg = orig(**kw)
            if kw.get("is_client"):
                cfg.certificate, cfg.certificate_chain, cfg.private_key = cert, chain, key
            return cfg

        a._chans._quic_config = forged  # type: ignore[method-assign]
        with pytest.raises(CertificateError):
            await a.new_channel("bob")
        assert b.channels() == [] or await _eventually_empty(b)


async def _eventually_empty(c: Any) -> bool:
    await wait_for(lambda: c.channels() == [])
    return True


async def test_opener_refuses_a_target_with_another_certificate() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        impostor = self_signed(["bob"])
        from conec_actors.tlsconf import quic_configuration
        from conec_actors.transport import ServerSettings

        assert b._endpoint.server is not None
        settings = b._endpoint.server
        b._endpoint.server = ServerSettings(
            configuration=quic_configuration(
                is_client=False, cert_pem=impostor.cert_pem, key_pem=impostor.key_pem,
                idle_timeout=10, max_datagram_size=1200, stream_window=65536),
            stream_window=settings.stream_window, accept=settings.accept, retry=False)
        with pytest.raises(CertificateError):
            await a.new_channel("bob")


async def test_client_ca_rules_for_peers(tmp_path: Any) -> None:
    ca = new_ca("peers CA")
    async with coordinator(client_ca=ca.cert_pem) as h:
        ak, bk = issue(ca, ["alice"]), issue(ca, ["bob"])
        a = await h.client("alice", cert=ak.cert_pem, key=ak.key_pem, client_ca=ca.cert_pem)
        b = await h.client("bob", cert=bk.cert_pem, key=bk.key_pem, client_ca=ca.cert_pem)
        await a.new_channel("bob")
        s, _ = await a.new_direct_stream("bob")
        await s.send(b"ca ok")
        assert await (await next_incoming(b)).recv.recv() == b"ca ok"
    # a client that requires a CA refuses a self-signed peer
    async with coordinator() as h:
        other_ca = new_ca("other")
        a = await h.client("alice", client_ca=other_ca.cert_pem)
        await h.client("bob")
        with pytest.raises(CertificateError):
            await a.new_channel("bob")


async def test_channels_survive_losing_the_coordinator() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        await a.new_channel("bob")
        send, _ = await a.new_direct_stream("bob")
        inc_task = asyncio.create_task(next_incoming(b))
        await send.send(b"before")
        inc = await inc_task
        assert await inc.recv.recv() == b"before"
        await h.coord.close()
        await wait_for(lambda: a.is_closed and b.is_closed)
        with pytest.raises(ClientClosed):
            await a.new_proxied_stream("bob")
        with pytest.raises(ClientClosed):
            await a.new_channel("carol")
        await send.send(b"after")  # the channel does not notice
        assert await inc.recv.recv() == b"after"
        s2, _ = await b.new_direct_stream("alice")
        await s2.send(b"new stream, no coordinator")
        assert await (await next_incoming(a)).recv.recv() == b"new stream, no coordinator"


async def test_closing_a_client_resets_its_channels() -> None:
    async with coordinator() as h:
        a, b = await h.client("alice"), await h.client("bob")
        await a.new_channel("bob")
        send, _ = await b.new_direct_stream("alice")
        await send.send(b"x")
        inc = await next_incoming(a)
        await a.close()
        with pytest.raises(StreamReset):
            for _ in range(1000):  # up to 10 s on a loaded machine
                await send.send(b"y")
                await asyncio.sleep(0.01)
        await wait_for(lambda: b.channels() == [])
        assert inc is not None


async def test_too_many_pending_introductions_is_a_named_refusal() -> None:
    import os
    import signal

    from conec_actors import ProtocolError
    from conec_actors.coord.session import MAX_PENDING_CHANNELS

    async with coordinator() as h:
        a = await h.client("alice")
        peers = [f"p{i}" for i in range(MAX_PENDING_CHANNELS + 3)]
        for p in peers:
            await h.client(p)
        (pid,) = h.coord.worker_pids("routing")
        os.kill(pid, signal.SIGSTOP)
        try:
            tasks = [asyncio.create_task(a.new_channel(p)) for p in peers]
            # nothing is introduced while the worker is stopped: what ends is refused
            await wait_for(lambda: sum(t.done() for t in tasks) >= 3, timeout=20)
        finally:
            os.kill(pid, signal.SIGCONT)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 3
        assert all(isinstance(r, ProtocolError) and "pending" in str(r) for r in refused)
        assert len(a.channels()) == MAX_PENDING_CHANNELS


@pytest.mark.parametrize("kind", sorted(BAD_LEAVES))
async def test_a_client_ca_refuses_a_peer_that_is_not_a_client_leaf(kind: str) -> None:
    # The Coordinator (self-signed mode) admits bob's self-signed certificate;
    # alice, whose own client_ca is that very certificate, must still refuse
    # it as a peer: it breaks the leaf rule, whichever side opens.
    kw, reason = BAD_LEAVES[kind]
    bk = make_cert("bob", **kw)  # type: ignore[arg-type]
    async with coordinator() as h:
        a = await h.client("alice", client_ca=bk.cert_pem)
        c = await h.client("carol", client_ca=bk.cert_pem)
        b = await h.client("bob", cert=bk.cert_pem, key=bk.key_pem)
        with pytest.raises(CertificateError, match=reason):
            await a.new_channel("bob")
        with pytest.raises(CertificateError):
            await b.new_channel("carol")
        assert a.channels() == [] and c.channels() == []


async def test_a_client_ca_refuses_a_peer_issued_by_an_intermediate() -> None:
    root = new_ca("root")
    inter = make_cert("intermediate", issuer=root, ca=True, digital_signature=None)
    ak, bk = issue(inter, ["alice"]), issue(inter, ["bob"])
    async with coordinator(client_ca=inter.cert_pem) as h:
        a = await h.client("alice", cert=ak.cert_pem, key=ak.key_pem, client_ca=root.cert_pem)
        await h.client("bob", cert=bk.cert_pem + inter.cert_pem, key=bk.key_pem,
                     client_ca=inter.cert_pem)
        with pytest.raises(CertificateError, match="not issued directly"):
            await a.new_channel("bob")
        assert a.channels() == []
