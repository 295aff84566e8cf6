"""Giving freed heap memory back to the operating system, now and then.

A front-end allocates and frees buffers of every size (QUIC packets, stream
data from 16 B to megabytes). glibc's malloc keeps much of what is freed
for reuse, scattered between live blocks, so a long-running front-end's
resident size creeps up although its live data does not: in `bench.soak`
(1,000 idle clients and mixed traffic) its Python objects stayed flat while
its RSS grew ~1 MiB/min, and `malloc_trim(0)` gave back 2-4 MiB each time,
in about a millisecond. So the front-end calls `trim` once a minute.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

#: Seconds between two trims of a long-running process's heap.
TRIM_INTERVAL = 60.0


def _load() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn: Callable[[int], int] = libc.malloc_trim  # glibc only: musl has none
    except (OSError, AttributeError):
        return None
    return fn


_malloc_trim = _load()


def trim() -> bool:
    """Return free heap memory to the system where the C library can
    (glibc); True if it did return some."""
    return bool(_malloc_trim(0)) if _malloc_trim is not None else False
