"""Making the UDP socket an endpoint reads and writes: bound dual stack or to
one address, non-blocking, with large buffers."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

#: UDP socket buffers asked for (the *FORCE options pass the sysctl limits
#: where the process may).
SOCKET_BUFFER = 4 * 1024 * 1024


def _system_ttl() -> int:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            ttl: int = probe.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
            return ttl
    except OSError:
        return 64


#: The system's IP TTL for new sockets (what `IP_TTL` is restored to).
DEFAULT_TTL = _system_ttl()


def make_socket(host: str | None, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to (`host`, `port`); `host=None` binds
    dual-stack (or IPv4 only where IPv6 is unavailable)."""
    if host is None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
            except OSError:
                sock.close()
                raise
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            _bind_or_close(sock, ("0.0.0.0", port))
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                0 if host in ("::", "") else 1)
        _bind_or_close(sock, sockaddr)
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        try:
            if force is None:
                raise OSError
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    sock.setblocking(False)
    return sock


def _bind_or_close(sock: socket.socket, addr: Any) -> None:
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
