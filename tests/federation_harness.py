"""Federations for tests: a real 3-node NATS cluster (`nats_cluster`) and
Coordinators each in its own process (`conec-actors coord --cluster URL
--name N`), so a test can SIGKILL one; clients of any of them in the test
process. Everything is killed and reaped on exit, whatever the body did."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conec_actors import Client, ClientConfig

from .conftest import coord_cert
from .nats_cluster import NatsCluster, nats_cluster

_LISTENING = re.compile(rb"listening on (\S+):(\d+)")
_CLI = "import sys; from conec_actors.cli import main; sys.exit(main())"


class CoordProcess:
    """One Coordinator of the federation, in a process of its own."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.address: tuple[str, int] = ("", 0)

    def kill(self) -> None:
        """SIGKILL the Coordinator (its workers die with it)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)


class Federation:
    """The NATS cluster, the Coordinators by name, and their clients."""

    def __init__(self, tmp: Path, cluster: NatsCluster) -> None:
        self.tmp = tmp
        self.cluster = cluster
        self.coords: dict[str, CoordProcess] = {}
        self.clients: list[Client] = []
        cert = coord_cert()
        self.cert_path, self.key_path = tmp / "coord.pem", tmp / "coord.key"
        self.cert_path.write_bytes(cert.cert_pem)
        self.key_path.write_bytes(cert.key_pem)
        self.ca = cert.cert_pem

    async def start(self, name: str, *extra: str, url: str | None = None) -> CoordProcess:
        log = self.tmp / f"coord-{name}.log"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLI, "coord", "--cert", str(self.cert_path),
            "--key", str(self.key_path), "--port", "0", "--idle-timeout", "3",
            "--cluster", url or self.cluster.url, "--name", name, *extra,
            stdout=asyncio.subprocess.PIPE, stderr=open(log, "ab"),  # noqa: SIM115
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        cp = self.coords[name] = CoordProcess(name, proc, log)
        assert proc.stdout is not None
        try:
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                if not line:
                    raise AssertionError(f"Coordinator {name} exited: "
                                         f"{log.read_text()[-2000:]}")
                m = _LISTENING.search(line)
                if m:
                    cp.address = (m.group(1).decode(), int(m.group(2)))
                    break
        except BaseException:
            cp.kill()
            await proc.wait()
            raise
        # Keep draining its stdout so it never blocks on a full pipe.
        asyncio.get_running_loop().create_task(_drain(proc.stdout))
        return cp

    def config(self, client_id: str, coord: str, **kw: Any) -> ClientConfig:
        kw.setdefault("addr", self.coords[coord].address)
        kw.setdefault("ca", self.ca)
        return ClientConfig(client_id, "localhost", **kw)

    async def client(self, client_id: str, coord: str, **kw: Any) -> Client:
        c = await Client.connect(self.config(client_id, coord, **kw))
        self.clients.append(c)
        return c

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5)
        for cp in self.coords.values():
            if cp.proc.returncode is None:
                cp.proc.send_signal(signal.SIGTERM)
        for cp in self.coords.values():
            try:
                await asyncio.wait_for(cp.proc.wait(), 10)
            except TimeoutError:
                cp.kill()
                await cp.proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(65536):
            pass


@contextlib.asynccontextmanager
async def federation(tmp: Path, *names: str, nodes: int = 3) -> AsyncIterator[Federation]:
    """A NATS cluster of `nodes` and one Coordinator per name in `names`."""
    async with nats_cluster(tmp, nodes) as cluster:
        fed = Federation(tmp, cluster)
        try:
            for name in names:
                await fed.start(name)
            yield fed
        finally:
            await fed.close()
