"""The NATS cluster helper (tests/nats_cluster.py) against real nats-server
processes, and the premises the federation (DESIGN section 9) takes from
NATS and nats-py: a KV bucket replicated on 3 nodes is create-if-absent and
survives one node's SIGKILL, clients fail over to another node, client TLS
is enforced, and core pub/sub keeps order across nodes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from . import nats_cluster as nc_mod
from .conftest import process_alive, wait_for
from .nats_cluster import NatsTLS, client_ssl_context, make_nats_tls, nats_cluster

nats = pytest.importorskip("nats", reason="nats-py is not installed (extra `cluster`)")
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError  # noqa: E402

pytestmark = pytest.mark.timeout(90)

#: Bound on waiting for a JetStream stream's new leader after its leader's
#: SIGKILL: nats-server 2.9's raft followers wait 4-9 s before electing.
LEADER_ELECTION = 15.0


def _node_of(cluster: nc_mod.NatsCluster, client: Any) -> int:
    """Index of the node `client` is connected to."""
    port = client.connected_url.port
    return [int(u.rsplit(":", 1)[1]) for u in cluster.urls].index(port)


async def _until(what: Any, timeout: float = 10.0) -> Any:
    """Await `what()` until it stops failing for want of a server (a client
    reconnecting, a JetStream leader being elected), at most `timeout` s;
    then the last error propagates. A KV answer (no such key, key exists) is
    an answer: it propagates at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await what()
        except nats.js.errors.KeyValueError:
            raise
        except (nats.errors.Error, TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def _quiet(e: Exception) -> None:
    """Error callback for clients that are expected to see errors."""


async def test_cluster_forms_and_kv_create_is_create_if_absent(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path) as cluster:
        assert len(cluster.urls) == 3 and all(u.startswith("nats://127.0.0.1:")
                                              for u in cluster.urls)
        assert cluster.url == ",".join(cluster.urls)
        assert len(set(cluster.pids)) == 3 and all(cluster.alive(i) for i in range(3))
        nc0 = await cluster.connect(0)
        js = nc0.jetstream()
        kv = await js.create_key_value(bucket="ids", replicas=3, history=1)
        info = await js.stream_info("KV_ids")
        assert info.cluster is not None and info.cluster.name == nc_mod.CLUSTER_NAME
        peers = {info.cluster.leader, *(r.name for r in info.cluster.replicas or [])}
        assert peers == {"n0", "n1", "n2"}

        rev = await kv.create("alice", b"coord-east")
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.create("alice", b"coord-west")
        # a client of another node sees the entry at once, and the same refusal
        nc2 = await cluster.connect(2)
        kv2 = await nc2.jetstream().key_value("ids")
        entry = await kv2.get("alice")
        assert (entry.value, entry.revision) == (b"coord-east", rev)
        with pytest.raises(KeyWrongLastSequenceError):
            await kv2.create("alice", b"coord-west")
        # a deleted key may be created again
        await kv.delete("alice")
        await kv2.create("alice", b"coord-west")
        assert (await kv.get("alice")).value == b"coord-west"


async def test_sigkill_of_the_clients_node_fails_over_and_start_rejoins(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path) as cluster:
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        setup = await cluster.connect()
        await (await setup.jetstream().create_key_value(bucket="ids", replicas=3)).create(
            "before", b"1")
        # the worst case: the client's node also leads the bucket's stream
        victim = await cluster.stream_leader("KV_ids")
        order = [victim, *(i for i in range(3) if i != victim)]
        nc = await cluster.connect(*order, reconnected_cb=on_reconnect, error_cb=_quiet)
        assert _node_of(cluster, nc) == victim
        js = nc.jetstream(timeout=2)
        kv = await js.key_value("ids")

        pid = cluster.pids[victim]
        assert pid is not None
        await cluster.kill(victim)
        assert not cluster.alive(victim) and cluster.pids[victim] is None
        assert not process_alive(pid)

        # the replicated bucket admits and answers again from the other two,
        # once they have elected a leader (4-9 s of raft election timeout)
        await _until(lambda: kv.create("during", b"2"), timeout=LEADER_ELECTION)
        assert (await _until(lambda: kv.get("before"))).value == b"1"
        with pytest.raises(KeyWrongLastSequenceError):
            await _until(lambda: kv.create("during", b"again"))
        await asyncio.wait_for(reconnected.wait(), 10)
        assert nc.is_connected and _node_of(cluster, nc) != victim

        await cluster.start(victim)
        assert cluster.alive(victim) and cluster.pids[victim] not in (None, pid)
        # it rejoins: its replica catches up and a client of it alone sees
        # what was written while it was down
        alone = await cluster.connect(victim, error_cb=_quiet)
        kv_alone = await alone.jetstream(timeout=2).key_value("ids")
        assert (await _until(lambda: kv_alone.get("during"))).value == b"2"

        async def all_current() -> bool:
            info = await js.stream_info("KV_ids")
            assert info.cluster is not None
            replicas = info.cluster.replicas or []
            return (len(replicas) == 2 and all(r.current for r in replicas)
                    and {info.cluster.leader, *(r.name for r in replicas)}
                    == {"n0", "n1", "n2"})

        await wait_for(all_current, timeout=15, interval=0.2)


async def test_kv_entries_lapse_by_the_buckets_ttl_unless_written_again(
        tmp_path: Path) -> None:
    # nats-server 2.9 has no per-key TTL (nats-py's `msg_ttl=` is silently
    # ignored): entries lapse by the bucket's max age since their last write.
    async with nats_cluster(tmp_path) as cluster:
        js = (await cluster.connect()).jetstream()
        kv = await js.create_key_value(bucket="ids", replicas=3, ttl=1.0)
        await kv.create("left", b"east")
        await kv.create("alive", b"east")

        async def lapsed() -> bool:
            await kv.put("alive", b"east")  # a Coordinator refreshing its entry
            try:
                await kv.get("left")
            except KeyNotFoundError:
                return True
            return False

        await wait_for(lapsed, timeout=10, interval=0.2)
        assert (await kv.get("alive")).value == b"east"
        await kv.create("left", b"west")  # a lapsed id may be taken again
        assert (await kv.get("left")).value == b"west"


async def test_tls_needs_a_client_certificate_of_the_ca(tmp_path: Path) -> None:
    tls, client = make_nats_tls(["coord-east"])
    async with nats_cluster(tmp_path, tls=tls) as cluster:
        assert all(u.startswith("tls://127.0.0.1:") for u in cluster.urls)
        options: dict[str, Any] = {"servers": cluster.urls, "allow_reconnect": False,
                                   "connect_timeout": 2, "error_cb": _quiet}

        good = await nats.connect(tls=client_ssl_context(tmp_path, tls.ca_pem, client),
                                  **options)
        try:
            sub = await good.subscribe("hello")
            await good.publish("hello", b"over tls")
            assert (await sub.next_msg(timeout=5)).data == b"over tls"
        finally:
            await good.close()

        # trusting the CA but presenting no certificate: the server hangs up
        with pytest.raises((OSError, nats.errors.Error)):
            await nats.connect(tls=client_ssl_context(tmp_path, tls.ca_pem), **options)
        # a certificate from another CA: refused as well
        _, stranger = make_nats_tls(["coord-east"])
        with pytest.raises((OSError, nats.errors.Error)):
            await nats.connect(tls=client_ssl_context(tmp_path, tls.ca_pem, stranger),
                               **options)
        # and a client that does not trust the servers' CA refuses them
        with pytest.raises(ssl.SSLCertVerificationError):
            await nats.connect(tls=client_ssl_context(tmp_path, stranger.cert_pem, client),
                               **options)
        assert all(cluster.alive(i) for i in range(3))


async def test_pub_sub_across_nodes_keeps_order(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path) as cluster:
        sub_nc, pub_nc = await cluster.connect(0), await cluster.connect(2)
        assert (_node_of(cluster, sub_nc), _node_of(cluster, pub_nc)) == (0, 2)
        sub = await sub_nc.subscribe("coord.east")
        await sub_nc.flush()

        # node 2 learns of the subscription over the route some time later
        async def heard() -> bool:
            await pub_nc.publish("coord.east", b"sync")
            try:
                return bool((await sub.next_msg(timeout=0.1)).data == b"sync")
            except nats.errors.TimeoutError:
                return False

        await wait_for(heard, timeout=10)
        n = 2000
        for i in range(n):
            await pub_nc.publish("coord.east", b"%d" % i)
        await pub_nc.flush()
        got: list[bytes] = []
        while len(got) < n:
            data = (await sub.next_msg(timeout=5)).data
            if data != b"sync":  # stragglers of the loop above come first
                got.append(data)
        assert got == [b"%d" % i for i in range(n)]


async def test_a_port_taken_before_the_server_binds_it_is_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        real = nc_mod._free_ports
        calls: list[list[int]] = []

        def racy(n: int) -> list[int]:
            ports = real(n)
            if not calls:  # another process wins node 1's cluster port
                ports[3] = taken
            calls.append(ports)
            return ports

        monkeypatch.setattr(nc_mod, "_free_ports", racy)
        async with nats_cluster(tmp_path) as cluster:
            assert len(calls) == 2
            assert taken not in calls[1]
            assert "address already in use" in (tmp_path / "n1.log.0").read_text()
            kv = await (await cluster.connect()).jetstream().create_key_value(
                bucket="ids", replicas=3)
            await kv.create("x", b"1")


async def test_every_server_is_killed_on_exit_even_when_the_body_raises(
        tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="body failed"):
        async with nats_cluster(tmp_path) as cluster:
            pids = [p for p in cluster.pids if p is not None]
            await cluster.kill(1)
            raise RuntimeError("body failed")
    assert len(pids) == 3
    assert not any(process_alive(p) for p in pids)
    # their logs stay for diagnostics
    assert all((tmp_path / f"n{i}.log").stat().st_size > 0 for i in range(3))


async def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    tls, _ = make_nats_tls()
    broken = NatsTLS(tls.ca_pem, b"not a certificate", tls.key_pem)
    with pytest.raises(nc_mod.NatsStartError, match=r"(?s)exited.*--- n0 .*certificate"):
        async with nats_cluster(tmp_path, tls=broken):
            pytest.fail("a cluster came up without a valid certificate")
    assert len(list(tmp_path.glob("n?.log"))) == 3


async def test_one_node_is_jetstream_without_a_cluster(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path, nodes=1) as single:
        assert len(single.urls) == 1 and single.url == single.urls[0]
        kv = await (await single.connect()).jetstream().create_key_value(bucket="ids")
        await kv.create("alice", b"1")
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.create("alice", b"2")


def test_make_nats_tls_signs_both_certificates_with_one_ca() -> None:
    from conec_actors.certs import cert_names, new_ca

    ca = new_ca("mine")
    tls, client = make_nats_tls(["coord-east", "coord-west"], ca=ca)
    assert isinstance(tls, NatsTLS) and tls.ca_pem == ca.cert_pem
    assert set(cert_names(tls.cert_pem)) >= {"127.0.0.1"}
    assert cert_names(client.cert_pem) == ["coord-east", "coord-west"]


# -- examples/federation.sh ----------------------------------------------------

FEDERATION_SH = Path(__file__).resolve().parent.parent / "examples" / "federation.sh"

_FAKE_CONEC = """#!/bin/sh
# Stands in for `conec-actors`: says what it was asked, as `coord` would, then runs.
echo "args: $*"
echo "pid: $$"
echo "CA certificate: /somewhere/ca.pem"
echo "press Ctrl-C to stop"
exec sleep 300
"""


async def _run_federation_sh(tmp: Path, *args: str, _then: Any = None,
                             **env: str) -> tuple[int, str, list[str]]:
    """Run the script on free ports until it says "press Ctrl-C to stop",
    check its NATS cluster takes a 3-replica KV bucket, run `_then()` (an
    async function) if given, stop it with SIGINT. Returns its status, its
    output and the NATS URLs it served."""
    for _attempt in range(nc_mod.PORT_ATTEMPTS):
        ports = nc_mod._free_ports(9)
        run_env = {**os.environ, "TMPDIR": str(tmp), **env,
                   "NATS_PORTS": ",".join(map(str, ports[0:3])),
                   "NATS_CLUSTER_PORTS": ",".join(map(str, ports[3:6])),
                   "NATS_HTTP_PORTS": ",".join(map(str, ports[6:9]))}
        proc = await asyncio.create_subprocess_exec(
            str(FEDERATION_SH), *args, env=run_env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        assert proc.stdout is not None
        out = b""
        try:
            while b"press Ctrl-C to stop" not in out:
                line = await asyncio.wait_for(proc.stdout.readline(), 45)
                if not line:
                    break
                out += line
            if b"press Ctrl-C to stop" not in out:
                await proc.wait()
                if b"address already in use" in out:
                    continue  # lost a port race: again on fresh ports
                raise AssertionError(out.decode())
            urls = [f"nats://127.0.0.1:{p}" for p in ports[0:3]]
            nc = await nats.connect(servers=urls, connect_timeout=2)
            try:
                kv = await nc.jetstream().create_key_value(bucket="ids", replicas=3)
                await kv.create("alice", b"east")
            finally:
                await nc.close()
            if _then is not None:
                await _then()
            proc.send_signal(signal.SIGINT)
            out += await asyncio.wait_for(proc.stdout.read(), 30)
            return await proc.wait(), out.decode(), urls
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    raise AssertionError("no free ports for federation.sh")


def _listening(url: str) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) == 0


async def test_federation_sh_nats_only_starts_a_cluster_and_stops_it(tmp_path: Path) -> None:
    nc_mod.need_nats_server()
    status, out, urls = await _run_federation_sh(tmp_path, "--nats-only")
    assert status == 0, out
    assert f"NATS cluster ready: {','.join(urls)}" in out
    assert "federation.sh: stopped" in out
    assert not any(_listening(u) for u in urls)
    assert list(tmp_path.iterdir()) == []  # its temporary directory is gone


async def test_federation_sh_starts_both_coordinators_on_the_cluster(tmp_path: Path) -> None:
    nc_mod.need_nats_server()
    fake = tmp_path / "bin" / "conec-actors"
    fake.parent.mkdir()
    fake.write_text(_FAKE_CONEC)
    fake.chmod(0o755)
    work = tmp_path / "work"
    status, out, urls = await _run_federation_sh(
        tmp_path, "--", "--metrics", "127.0.0.1:0", CONEC_ACTORS=str(fake),
        EAST_PORT="7001", WEST_PORT="7002", WORKDIR=str(work))
    assert status == 0, out
    cluster = ",".join(urls)
    for name, port in (("east", 7001), ("west", 7002)):
        assert (f"[{name}] args: coord --cluster {cluster} --name {name} --port {port} "
                f"--state-dir {work / 'state'} --metrics 127.0.0.1:0") in out
    assert 'ca = Path("/somewhere/ca.pem").read_bytes()' in out
    assert 'addr=("127.0.0.1", 7002)' in out
    pids = [int(p) for p in re.findall(r"\] pid: (\d+)", out)]
    assert len(pids) == 2 and not any(process_alive(p) for p in pids)
    assert f"configs, stores and logs kept in {work}" in out
    assert (work / "n0.conf").exists()  # a WORKDIR given is kept
    assert not any(_listening(u) for u in urls)


def _free_udp_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                 for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


@pytest.mark.timeout(120)
async def test_federation_sh_for_real_carries_a_stream_between_its_coordinators(
        tmp_path: Path) -> None:
    """The example as a user runs it: the real `conec-actors coord`s, a
    client on each, a stream from east's to west's."""
    nc_mod.need_nats_server()
    from conec_actors import Client, ClientConfig

    conec = Path(sys.executable).parent / "conec-actors"
    if not conec.exists():
        pytest.skip("conec-actors is not installed next to this Python")
    east, west = _free_udp_ports(2)
    work = tmp_path / "work"
    status, out, _urls = await _run_federation_sh(
        tmp_path, CONEC_ACTORS=str(conec), EAST_PORT=str(east), WEST_PORT=str(west),
        WORKDIR=str(work), _then=_stream_east_to_west(work, east, west, Client, ClientConfig))
    assert status == 0, out
    assert "[east] federation: 'east'" in out and "[west] federation: 'west'" in out


def _stream_east_to_west(work: Path, east: int, west: int, client: Any,
                         config: Any) -> Any:
    async def run() -> None:
        ca = (work / "state" / "ca.pem").read_bytes()
        alice = await client.connect(config("alice", "localhost", addr=("127.0.0.1", east),
                                            ca=ca))
        bob = await client.connect(config("bob", "localhost", addr=("127.0.0.1", west),
                                          ca=ca))
        try:
            send, _ = await alice.new_proxied_stream("bob")
            await send.send(b"east to west")
            inc = await asyncio.wait_for(bob.incoming.__aiter__().__anext__(), 10)
            assert await inc.recv.recv() == b"east to west"
        finally:
            await alice.close()
            await bob.close()
    return run
