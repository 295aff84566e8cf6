"""Configuration objects for the Coordinator and for Clients."""

from __future__ import annotations

import os
import sys
from dataclasses import KW_ONLY, dataclass
from typing import Literal

from .ids import check_id

PemSource = bytes | str | os.PathLike[str]

DEFAULT_PORT = 1719
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 10.0
DEFAULT_MAX_DATAGRAM_SIZE = 1200


def parse_host_port(value: str, field: str = "metrics") -> tuple[str, int]:
    """(host, port) from "HOST:PORT" ("[::1]:PORT" for an IPv6 host; port 0
    picks a free one); ValueError naming `field` otherwise."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{field} must be \"HOST:PORT\" with a port in [0, 65535], "
                         f"got {value!r}")
    return host, int(port)


def _check_common(max_message_size: int, idle_timeout: float, max_datagram_size: int) -> None:
    if max_message_size < 0 or max_message_size > 2**32 - 1:
        raise ValueError(f"max_message_size must be in [0, 2**32), got {max_message_size}")
    if idle_timeout <= 0:
        raise ValueError(f"idle_timeout must be positive, got {idle_timeout}")
    if not 1200 <= max_datagram_size <= 65527:
        raise ValueError("max_datagram_size must be in [1200, 65527] (above ~1452 only "
                         f"on loopback or known paths), got {max_datagram_size}")


@dataclass
class CoordConfig:
    """How to run a Coordinator. `cert`, `key` and `client_ca` take PEM bytes or
    a path. Without `client_ca`, clients must present self-signed certificates
    valid for their id; with it, certificates issued by that CA."""

    cert: PemSource
    key: PemSource
    _: KW_ONLY
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    client_ca: PemSource | None = None
    stateless_retry: bool | Literal["auto"] = "auto"
    routing_workers: int = 1
    broadcast_workers: int = 1
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_datagram_size: int = DEFAULT_MAX_DATAGRAM_SIZE
    #: "HOST:PORT" of the HTTP endpoint serving /metrics, /healthz and
    #: /clients (port 0 picks a free one); None: no endpoint.
    metrics: str | None = None
    #: front-end shard processes terminating QUIC on the one UDP port
    #: (DESIGN section 8); more than 1 needs Linux
    frontends: int = 1
    #: NATS server URLs ("nats://h:p,nats://h2:p", or a list) of the cluster
    #: whose Coordinators form one federation (DESIGN section 9); None: alone.
    #: Needs the `cluster` extra (nats-py).
    cluster: str | list[str] | None = None
    #: this Coordinator's unique name in the federation (default: host:port)
    name: str | None = None
    #: CA (PEM) the NATS servers' certificates are checked against: TLS to
    #: NATS, presenting this Coordinator's own certificate and key
    cluster_ca: PemSource | None = None
    #: a NATS credentials file (JWT and nkey seed) to authenticate to NATS with
    cluster_creds: str | None = None

    def __post_init__(self) -> None:
        if self.cluster is not None and not cluster_urls(self.cluster):
            raise ValueError("cluster needs at least one NATS server URL")
        if self.cluster is None and (self.name is not None or self.cluster_ca is not None
                                     or self.cluster_creds is not None):
            raise ValueError("name, cluster_ca and cluster_creds need cluster")
        if self.metrics is not None:
            parse_host_port(self.metrics, "metrics")
        if self.frontends < 1:
            raise ValueError("frontends must be at least 1")
        if self.frontends > 1 and sys.platform != "linux":
            raise ValueError(
                f"frontends={self.frontends} needs Linux: the shards share one UDP port "
                "through SO_REUSEPORT with a classic BPF program steering each "
                f"datagram by connection id, which {sys.platform} does not have")
        if self.routing_workers < 1:
            raise ValueError("routing_workers must be at least 1")
        if self.broadcast_workers < 1:
            raise ValueError("broadcast_workers must be at least 1")
        if self.stateless_retry not in (True, False, "auto"):
            raise ValueError("stateless_retry must be True, False or 'auto'")
        _check_common(self.max_message_size, self.idle_timeout, self.max_datagram_size)


def cluster_urls(cluster: str | list[str]) -> list[str]:
    """The NATS server URLs of `CoordConfig.cluster`."""
    items = cluster.split(",") if isinstance(cluster, str) else cluster
    return [u.strip() for u in items if u.strip()]


@dataclass
class ClientConfig:
    """How a Client reaches its Coordinator and who it is.

    `id` must be a lowercase DNS name (`InvalidId` otherwise, raised here).
    `coord` is the Coordinator's host name, checked against its certificate;
    `addr=(host, port)` overrides where to connect. `ca` is the trust root for
    the Coordinator (None: the system store). Without `cert`/`key` an
    ephemeral self-signed certificate for `id` is made.

    With `reconnect`, a client that loses its Coordinator dials it again with
    the same id and certificate (backoff 0.1 s doubling to 5 s, with jitter)
    until `close()`, instead of closing with `ClientClosed`.
    """

    id: str
    coord: str
    _: KW_ONLY
    port: int = DEFAULT_PORT
    addr: tuple[str, int] | None = None
    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None
    client_ca: PemSource | None = None
    listen: bool = True
    holepunch: bool = True
    keepalive: bool = True
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_datagram_size: int = DEFAULT_MAX_DATAGRAM_SIZE
    reconnect: bool = False

    def __post_init__(self) -> None:
        check_id(self.id)
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key, or neither")
        _check_common(self.max_message_size, self.idle_timeout, self.max_datagram_size)
