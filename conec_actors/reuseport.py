"""N UDP sockets on one port, with datagrams steered by QUIC connection id.

Linux only. The sockets form one `SO_REUSEPORT` group, bound in order, and a
classic BPF program attached to the group (`SO_ATTACH_REUSEPORT_CBPF`, which
needs no privilege) returns the index of the socket to deliver to: the first
32-bit word of the destination connection id modulo N (`shard_ids.shard_of`).
Plain `SO_REUSEPORT` would hash the 4-tuple instead, so a client whose NAT
rebinds would land on a shard that holds no keys for it.

The group's membership must stay fixed: whoever creates the sockets keeps
every one open for the group's life, so a shard that dies leaves its socket
in place (its datagrams queue until its successor reads them) and no other
shard's flows move.
"""

from __future__ import annotations

import ctypes
import socket
import sys

from .shard_ids import WORD

#: `SO_ATTACH_REUSEPORT_CBPF` (linux/asm-generic/socket.h); Python has no name for it.
SO_ATTACH_REUSEPORT_CBPF = 51

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
_LD_B_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
_RET_A = 0x16  # BPF_RET | BPF_A

#: Where the destination connection id starts: after the first byte in a short
#: header; after flags, version and the id's length in a long one.
SHORT_DCID_OFFSET = 1
LONG_DCID_OFFSET = 6


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def steering_program(n: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF program, as (code, jt, jf, k) instructions, that picks
    socket `u32(dcid[0:4]) % n` of the group. A datagram too short to hold
    the word makes the load fail, and the program return 0: socket 0, whose
    QUIC stack drops it as junk."""
    if n < 1:
        raise ValueError(f"a reuseport group needs at least one socket, not {n}")
    assert WORD == 4  # the program loads one 32-bit word
    return [
        (_LD_B_ABS, 0, 0, 0),  # A = first byte
        (_JSET_K, 2, 0, 0x80),  # long header bit set? to 4, else on to 2
        (_LD_W_ABS, 0, 0, SHORT_DCID_OFFSET),
        (_JA, 0, 0, 1),  # over the long header's load
        (_LD_W_ABS, 0, 0, LONG_DCID_OFFSET),
        (_MOD_K, 0, 0, n),
        (_RET_A, 0, 0, 0),
    ]


def attach_steering(sock: socket.socket, n: int) -> None:
    """Attach `steering_program(n)` to the reuseport group `sock` is in (one
    socket of the group is enough: the program is the group's). `OSError`
    from the kernel if it refuses."""
    prog = steering_program(n)
    filters = (_SockFilter * len(prog))(*(_SockFilter(*ins) for ins in prog))
    fprog = _SockFprog(len(prog), ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                    bytes(ctypes.string_at(ctypes.addressof(fprog), ctypes.sizeof(fprog))))


def supported() -> str | None:
    """None where steered groups work; otherwise why not (for a `ValueError`)."""
    if not sys.platform.startswith("linux"):
        return f"front-end shards need Linux (SO_REUSEPORT with BPF steering), not {sys.platform}"
    if not hasattr(socket, "SO_REUSEPORT"):
        return "this Python has no socket.SO_REUSEPORT"
    return None


def steered_group(host: str, port: int, n: int, *,
                  family: socket.AddressFamily = socket.AF_INET,
                  buffer_size: int = 0) -> list[socket.socket]:
    """`n` non-blocking UDP sockets bound in order to one (host, port), socket
    k receiving the datagrams whose destination connection id maps to shard k.
    Port 0 picks a free port for all of them. `buffer_size` > 0 sets each
    socket's SO_RCVBUF/SO_SNDBUF. Raises `OSError` (closing what it made)."""
    why = supported()
    if why is not None:
        raise OSError(why)
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if buffer_size > 0:
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    s.setsockopt(socket.SOL_SOCKET, opt, buffer_size)
            s.setblocking(False)
            s.bind((host, port))
            port = s.getsockname()[1]  # the rest join the first one's port
        attach_steering(socks[0], n)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks
