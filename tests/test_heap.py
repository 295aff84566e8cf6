"""`heap.trim`: freed heap memory goes back to the system (glibc)."""

from __future__ import annotations

import sys

import pytest

from conec_actors import heap


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_gives_back_what_fragmented_frees_keep() -> None:
    # Many mid-sized blocks, every other one freed: the holes stay in the
    # heap (nothing at its top to shrink) until trimmed.
    blocks = [bytearray(20_000) for _ in range(6_000)]
    del blocks[::2]
    before = _rss_kib()
    assert heap.trim()
    assert _rss_kib() < before - 20_000
    del blocks


def test_trim_never_fails() -> None:
    heap.trim()
    heap.trim()
