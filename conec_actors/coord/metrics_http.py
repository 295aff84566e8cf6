"""The Coordinator's HTTP endpoint: /metrics, /healthz, /clients.

A `wsgiref` server (prometheus-client's `ThreadingWSGIServer`, as its own
`start_wsgi_server` runs it) in a daemon thread. /metrics is
prometheus-client's WSGI app over a registry of its own holding one
`metrics.SnapshotCollector`. The HTTP threads never read the front-end's
state: every request asks the Coordinator's event loop for a snapshot
(`run_coroutine_threadsafe`) and waits at most SNAPSHOT_TIMEOUT for it; a
loop too busy to answer in time gives 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .metrics import (
    ClientFigures,
    Snapshot,
    SnapshotCollector,
    WorkerFigures,
    clients_page,
    health,
    page_bounds,
)

log = logging.getLogger(__name__)

#: Seconds an HTTP request waits for the event loop's snapshot.
SNAPSHOT_TIMEOUT = 2.0

T = TypeVar("T")


class LoopBusy(Exception):
    """The event loop did not answer within SNAPSHOT_TIMEOUT."""


@dataclass(frozen=True)
class Sources:
    """What the endpoint asks the event loop for (coroutine functions run
    there, never in an HTTP thread)."""

    snapshot: Callable[[], Coroutine[Any, Any, Snapshot]]
    workers: Callable[[], Coroutine[Any, Any, list[WorkerFigures]]]
    clients: Callable[[], Coroutine[Any, Any, list[ClientFigures]]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


class MetricsServer:
    """The HTTP endpoint of one Coordinator; `close()` frees its port."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int,
                 sources: Sources) -> None:
        """Bind `host:port` (port 0: a free one) and serve in a daemon thread."""
        self._loop = loop
        self._sources = sources
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(lambda: self._ask(sources.snapshot)))
        self._prometheus = make_wsgi_app(registry)

        class Server(ThreadingWSGIServer):
            address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

        self._httpd = make_server(host, port, self._app, Server, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="conec-actors-metrics", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    async def close(self) -> None:
        """Stop serving and free the port (waits for the serving thread)."""
        if self._closed:
            return
        self._closed = True
        # shutdown() waits for serve_forever to notice: not on the loop,
        # which a request in progress may be waiting for.
        await asyncio.to_thread(self._httpd.shutdown)
        self._httpd.server_close()
        await asyncio.to_thread(self._thread.join)

    # -- in the HTTP threads ---------------------------------------------------------

    def _ask(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        fut = asyncio.run_coroutine_threadsafe(make(), self._loop)
        try:
            return fut.result(SNAPSHOT_TIMEOUT)
        except FutureTimeout:
            fut.cancel()
            raise LoopBusy from None

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse
             ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        try:
            if path == "/metrics":
                return self._prometheus(environ, start_response)  # type: ignore[no-any-return]
            if environ.get("REQUEST_METHOD") != "GET":
                return _reply(start_response, 405, {"error": "use GET"})
            if path == "/healthz":
                return _reply(start_response, *health(self._ask(self._sources.workers)))
            if path == "/clients":
                try:
                    limit, offset = page_bounds(environ.get("QUERY_STRING", ""))
                except ValueError as exc:
                    return _reply(start_response, 400, {"error": str(exc)})
                return _reply(start_response, 200, clients_page(
                    self._ask(self._sources.clients), limit, offset))
            return _reply(start_response, 404, {"error": "not found; try /metrics, "
                                                "/healthz or /clients"})
        except LoopBusy:
            return _reply(start_response, 503, {
                "status": "busy", "error": "the Coordinator's event loop did not "
                f"answer within {SNAPSHOT_TIMEOUT:.0f} s"})
        except RuntimeError:  # the loop stopped (closing)
            return _reply(start_response, 503, {"status": "closing",
                                                "error": "the Coordinator is stopping"})


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


def _reply(start_response: StartResponse, status: int, body: dict[str, Any]
           ) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} {_REASONS[status]}", [
        ("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
