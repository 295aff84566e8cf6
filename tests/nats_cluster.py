"""A real NATS cluster for tests: `nats_cluster(tmp)` starts `nodes` real
`nats-server` processes (Debian's package; `.ci/run` installs it) on
127.0.0.1 with JetStream on, clustered with each other, and yields a
`NatsCluster` once a KV bucket replicated on every node can be made.

    async with nats_cluster(tmp_path) as cluster:
        nc = await cluster.connect()          # nats-py client, all URLs
        await cluster.kill(0)                 # SIGKILL node 0
        await cluster.start(0)                # same config, same store

Every server is killed and reaped on exit, whatever the body did. Each
server's config (`n<i>.conf`), store (`n<i>/`) and log (`n<i>.log`, its
stdout and stderr, appended across restarts) stay under `tmp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conec_actors.certs import CertKey, issue, new_ca

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

#: The `name` of every cluster started here (servers only route within one name).
CLUSTER_NAME = "conec-test"
#: How long the whole cluster may take to accept a replicated KV bucket.
READY_TIMEOUT = 20.0
#: How long one server may take to accept TCP on its client port.
LISTEN_TIMEOUT = 10.0
#: Fresh port sets tried when another process takes a port between our probe
#: and the server's bind (xdist workers all pick ports from the OS at once).
PORT_ATTEMPTS = 5
_LOG_TAIL = 2000
_IN_USE = "address already in use"


def nats_server_path() -> str | None:
    """The `nats-server` binary, or None when it is not installed."""
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)


def need_nats_server() -> str:
    """The `nats-server` binary; skips the calling test when it is absent."""
    path = nats_server_path()
    if path is None:
        pytest.skip("nats-server is not installed (Debian package `nats-server`; "
                    ".ci/run installs it as root)")
    return path


@dataclass(frozen=True, slots=True)
class NatsTLS:
    """TLS for the servers' client port: their certificate and key, and the
    CA whose certificates clients must present (`verify: true`)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_nats_tls(client_names: Sequence[str] = ("client",), *,
                  ca: CertKey | None = None) -> tuple[NatsTLS, CertKey]:
    """A `NatsTLS` whose server certificate (valid for 127.0.0.1 and
    localhost) and a client certificate (for `client_names`) are both signed
    by `ca` (a fresh CA when None; pass your own to issue more from it)."""
    ca = ca or new_ca("conec-test NATS CA")
    server = issue(ca, ["127.0.0.1", "localhost"])
    return NatsTLS(ca.cert_pem, server.cert_pem, server.key_pem), issue(ca, list(client_names))


def client_ssl_context(tmp: Path, ca_pem: bytes, client: CertKey | None = None) -> ssl.SSLContext:
    """An `ssl.SSLContext` for nats-py's `tls=` that trusts `ca_pem` and, when
    given, presents `client` (written under `tmp`: `ssl` loads keys from files)."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    if client is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        where = Path(tempfile.mkdtemp(prefix="client-", dir=tmp))
        cert, key = where / "cert.pem", where / "key.pem"
        client.write(cert, key)
        ctx.load_cert_chain(cert, key)
    return ctx


class NatsStartError(RuntimeError):
    """A server or the cluster did not come up (the message has the logs' tails)."""


@dataclass(slots=True)
class _Node:
    name: str
    port: int
    cluster_port: int
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None


class NatsCluster:
    """Running `nats-server` nodes. Node `i`'s client URL is `urls[i]`."""

    def __init__(self, binary: str, tmp: Path, nodes: int, tls: NatsTLS | None) -> None:
        self._binary = binary
        self._tmp = tmp
        self._tls = tls
        self._nodes: list[_Node] = []
        self._clients: list[NatsClient] = []
        self._count = nodes

    @property
    def urls(self) -> list[str]:
        """Client URLs, `nats://127.0.0.1:P` (`tls://` with TLS), node order."""
        scheme = "tls" if self._tls else "nats"
        return [f"{scheme}://127.0.0.1:{n.port}" for n in self._nodes]

    @property
    def url(self) -> str:
        """All client URLs joined with "," (as `--cluster` takes them)."""
        return ",".join(self.urls)

    @property
    def pids(self) -> list[int | None]:
        """Each node's process id (None while it is down)."""
        return [n.proc.pid if n.proc and n.proc.poll() is None else None for n in self._nodes]

    @property
    def tls(self) -> NatsTLS | None:
        """The TLS the servers serve clients with, if any."""
        return self._tls

    def log_path(self, i: int) -> Path:
        """Node `i`'s stdout and stderr, across its restarts."""
        return self._nodes[i].log

    def alive(self, i: int) -> bool:
        """Whether node `i`'s process runs."""
        proc = self._nodes[i].proc
        return proc is not None and proc.poll() is None

    async def kill(self, i: int) -> None:
        """SIGKILL node `i` and wait until it is reaped."""
        proc = self._nodes[i].proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        while proc.poll() is None:
            await asyncio.sleep(0.01)
        self._nodes[i].proc = None

    async def start(self, i: int) -> None:
        """(Re)start node `i` with its config and store, and wait until it
        accepts TCP on its client port. Rejoining the cluster (routes,
        JetStream catch-up) continues in the background."""
        if self.alive(i):
            raise RuntimeError(f"node {i} is already running")
        self._spawn(i)
        await self._listening(i, time.monotonic() + LISTEN_TIMEOUT)

    def ssl_context(self, client: CertKey | None = None) -> ssl.SSLContext | None:
        """An SSL context for a client of these servers (None without TLS). It
        presents `client`, by default the servers' own certificate (issued for
        both server and client use)."""
        if self._tls is None:
            return None
        if client is None:
            client = CertKey(self._tls.cert_pem, self._tls.key_pem)
        return client_ssl_context(self._tmp / "tls", self._tls.ca_pem, client)

    async def connect(self, *nodes: int, **options: Any) -> NatsClient:
        """A nats-py client of `nodes` (default: all of them, in order), with
        the servers' TLS when they have it; closed on the cluster's exit.
        `options` go to `nats.connect` (they override the defaults here)."""
        import nats

        servers = [self.urls[i] for i in nodes] if nodes else self.urls
        options.setdefault("servers", servers)
        options.setdefault("connect_timeout", 2)
        options.setdefault("reconnect_time_wait", 0.2)
        options.setdefault("max_reconnect_attempts", -1)
        options.setdefault("dont_randomize", True)
        if self._tls is not None:
            options.setdefault("tls", self.ssl_context())
        nc = await nats.connect(**options)
        self._clients.append(nc)
        return nc

    async def stream_leader(self, stream: str) -> int:
        """Index of the node leading JetStream stream `stream` (a KV bucket B
        is stream `KV_B`): killing it is the worst case, since writes wait
        for a new leader (a raft election: 4-9 s in nats-server 2.9)."""
        nc = await self.connect(error_cb=_quiet)
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream)
        finally:
            self._clients.remove(nc)
            await nc.close()
        if info.cluster is None or info.cluster.leader is None:
            raise RuntimeError(f"stream {stream} has no leader now")
        return [n.name for n in self._nodes].index(info.cluster.leader)

    # -- starting and stopping ---------------------------------------------

    def _configure(self) -> None:
        """Fresh ports for every node, and their config files."""
        ports = _free_ports(2 * self._count)
        self._nodes = [
            _Node(f"n{i}", ports[2 * i], ports[2 * i + 1], self._tmp / f"n{i}.conf",
                  self._tmp / f"n{i}.log") for i in range(self._count)]
        routes = [f"nats-route://127.0.0.1:{n.cluster_port}" for n in self._nodes]
        for node in self._nodes:
            store = self._tmp / node.name
            shutil.rmtree(store, ignore_errors=True)  # nothing from an attempt that lost a race
            store.mkdir(parents=True)
            lines = [
                f"server_name: {node.name}",
                f"listen: 127.0.0.1:{node.port}",
                f"jetstream {{ store_dir: {_q(store)} }}",
            ]
            if self._count > 1:  # a lone server with a cluster block waits for routes forever
                lines += [
                    "cluster {",
                    f"  name: {CLUSTER_NAME}",
                    f"  listen: 127.0.0.1:{node.cluster_port}",
                    f"  routes: [{', '.join(routes)}]",
                    "}",
                ]
            if self._tls is not None:
                lines += self._tls_block(node)
            node.conf.write_text("\n".join(lines) + "\n")

    def _tls_block(self, node: _Node) -> list[str]:
        assert self._tls is not None
        certs = self._tmp / "tls"
        certs.mkdir(exist_ok=True)
        ca = certs / "ca.pem"
        ca.write_bytes(self._tls.ca_pem)
        cert, key = certs / f"{node.name}.pem", certs / f"{node.name}.key"
        CertKey(self._tls.cert_pem, self._tls.key_pem).write(cert, key)
        return ["tls {", f"  cert_file: {_q(cert)}", f"  key_file: {_q(key)}",
                f"  ca_file: {_q(ca)}", "  verify: true", "  timeout: 2", "}"]

    def _spawn(self, i: int) -> None:
        node = self._nodes[i]
        with node.log.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            node.proc = subprocess.Popen(
                [self._binary, "-c", str(node.conf)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log)

    async def _listening(self, i: int, deadline: float) -> None:
        """Wait until node `i` accepts TCP on its client port."""
        node = self._nodes[i]
        while True:
            if not self.alive(i):
                raise NatsStartError(f"nats-server {node.name} exited\n{self._tails()}")
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", node.port)
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
                return
            if time.monotonic() > deadline:
                raise NatsStartError(
                    f"nats-server {node.name} did not listen on {node.port}\n{self._tails()}")
            await asyncio.sleep(0.05)

    async def _boot(self) -> None:
        """Start every node and wait until a bucket replicated on all of them
        can be made; on a port race, start over on fresh ports."""
        for attempt in range(PORT_ATTEMPTS):
            self._configure()
            try:
                for i in range(self._count):
                    self._spawn(i)
                deadline = time.monotonic() + READY_TIMEOUT
                for i in range(self._count):
                    await self._listening(i, deadline)
                await self._probe(deadline)
                return
            except NatsStartError:
                lost_race = any(_IN_USE in self._tail(n.log) for n in self._nodes)
                self._kill_all()
                if not lost_race or attempt == PORT_ATTEMPTS - 1:
                    raise
                for n in self._nodes:
                    n.log.rename(n.log.with_suffix(f".log.{attempt}"))

    async def _probe(self, deadline: float) -> None:
        """Retry making (then deleting) a KV bucket with one replica per node."""
        import nats

        last: BaseException | None = None
        try:
            nc = await self.connect(error_cb=_quiet)
        except Exception as e:  # nats-py raises a variety; say why with the logs
            raise NatsStartError(f"cannot connect to the cluster: {e!r}\n{self._tails()}") from e
        try:
            js = nc.jetstream(timeout=2)
            while time.monotonic() < deadline:
                dead = [n.name for i, n in enumerate(self._nodes) if not self.alive(i)]
                if dead:
                    raise NatsStartError(f"nats-server {dead} exited\n{self._tails()}")
                try:
                    await js.create_key_value(bucket="probe", replicas=self._count)
                    await js.delete_key_value("probe")
                    return
                except (nats.errors.Error, TimeoutError, OSError) as e:
                    last = e
                await asyncio.sleep(0.2)
        finally:
            self._clients.remove(nc)
            await nc.close()
        raise NatsStartError(f"no {self._count}-replica KV bucket within {READY_TIMEOUT} s "
                             f"(last error: {last!r})\n{self._tails()}")

    async def _close_clients(self) -> None:
        for nc in self._clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2)
        self._clients.clear()

    def _kill_all(self) -> None:
        """SIGKILL every node, then reap them all (synchronous: it runs in
        `finally` even when the task is being cancelled)."""
        procs = [n.proc for n in self._nodes if n.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        for n in self._nodes:
            n.proc = None

    def _tail(self, log: Path) -> str:
        try:
            return log.read_text(errors="replace")[-_LOG_TAIL:]
        except FileNotFoundError:
            return ""

    def _tails(self) -> str:
        return "\n".join(f"--- {n.name} ({n.log}) ---\n{self._tail(n.log)}" for n in self._nodes)


@contextlib.asynccontextmanager
async def nats_cluster(tmp: Path, nodes: int = 3, *,
                       tls: NatsTLS | None = None) -> AsyncIterator[NatsCluster]:
    """Start `nodes` clustered `nats-server`s with JetStream under `tmp` and
    yield them once a KV bucket with `replicas=nodes` can be made (within
    `READY_TIMEOUT` s, else `NatsStartError` with the servers' log tails).
    With `nodes=1`, one server without a cluster block (JetStream alone).
    Skips the test when nats-server is not installed. On exit, clients made
    with `connect` are closed and every server is killed and reaped."""
    cluster = NatsCluster(need_nats_server(), tmp, nodes, tls)
    try:
        await cluster._boot()
        yield cluster
    finally:
        try:
            await cluster._close_clients()
        finally:
            cluster._kill_all()


def _free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports the OS had free on 127.0.0.1 a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _q(path: Path) -> str:
    """`path` as a quoted string of nats-server's config syntax."""
    return json.dumps(str(path))


async def _quiet(e: Exception) -> None:
    """nats-py's error callback while probing: retries are expected."""
