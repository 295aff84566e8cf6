"""Test harness: async tests run under asyncio.run (each has a timeout from
pytest-timeout), and `coordinator()` starts a real Coordinator with real
worker processes on 127.0.0.1 and closes it and its clients afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conec_actors import Client, ClientConfig, Coord, CoordConfig
from conec_actors.certs import CertKey, self_signed

_COORD_CERT: CertKey | None = None


def coord_cert() -> CertKey:
    """One certificate for 'localhost' per test process (making keys is slow-ish)."""
    global _COORD_CERT
    if _COORD_CERT is None:
        _COORD_CERT = self_signed(["localhost"])
    return _COORD_CERT


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: pyfuncitem.funcargs[name] for name in names}
        asyncio.run(pyfuncitem.obj(**kwargs))
        return True
    return None


class Harness:
    """A running Coordinator plus the clients a test connected to it."""

    def __init__(self, coord: Coord, cert: CertKey) -> None:
        self.coord = coord
        self.cert = cert
        self.clients: list[Client] = []

    def config(self, client_id: str, **kw: Any) -> ClientConfig:
        kw.setdefault("addr", self.coord.address)
        kw.setdefault("ca", self.cert.cert_pem)
        return ClientConfig(client_id, "localhost", **kw)

    async def client(self, client_id: str, **kw: Any) -> Client:
        c = await Client.connect(self.config(client_id, **kw))
        self.clients.append(c)
        return c

    async def close_clients(self) -> None:
        for c in self.clients:
            await c.close()


@contextlib.asynccontextmanager
async def coordinator(**kw: Any) -> AsyncIterator[Harness]:
    cert = coord_cert()
    kw.setdefault("port", 0)
    cfg = CoordConfig(cert.cert_pem, cert.key_pem, **kw)
    async with Coord.start(cfg) as coord:
        h = Harness(coord, cert)
        try:
            yield h
        finally:
            await h.close_clients()


async def wait_for(pred: Any, timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll an (async or plain) predicate until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = pred()
        if inspect.isawaitable(r):
            r = await r
        if r:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


_CLIENT_PROCESS = """
import asyncio, sys
from conec_actors import Client, ClientConfig

async def main() -> None:
    host, port, ca, cid, idle = sys.argv[1:6]
    client = await Client.connect(ClientConfig(
        cid, "localhost", addr=(host, int(port)), ca=ca.encode(), idle_timeout=float(idle)))
{body}

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def client_process(h: Harness, client_id: str, body: str,
                         idle_timeout: float = 1.5) -> AsyncIterator[asyncio.subprocess.Process]:
    """Client `client_id` of `h`'s Coordinator in a process of its own (to be
    killed with SIGKILL): it connects with `idle_timeout`, then runs `body`
    (statements of an async function, `client` bound) with stdout piped.
    Killed and reaped on exit, whatever happened."""
    host, port = h.coord.address
    script = _CLIENT_PROCESS.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, host, str(port), h.cert.cert_pem.decode(), client_id,
        str(idle_timeout), stdout=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False
