"""Tests for conec_actors._util: Waiters and the bounded queue that can end."""

from __future__ import annotations

import asyncio

import pytest

from conec_actors._util import EndableQueue, Waiters


async def _blocked(waiters: Waiters, n: int) -> None:
    while len(waiters) < n:
        await asyncio.sleep(0)


async def test_offer_refuses_past_the_item_bound() -> None:
    q: EndableQueue[str] = EndableQueue(2)
    assert q.offer("a") and q.offer("b")
    assert q.full() and not q.offer("c")
    assert await q.get() == "a"
    assert q.offer("c")
    assert [q.get_nowait(), q.get_nowait(), q.get_nowait()] == ["b", "c", None]


async def test_weight_bounds_and_put_always_takes() -> None:
    q: EndableQueue[bytes] = EndableQueue(100, max_weight=5, weigh=len)
    q.put(b"abcd")
    assert not q.full() and q.weight == 4
    q.put(b"efgh")  # above the weight bound: put takes it anyway
    assert q.full() and q.weight == 8 and not q.offer(b"i")
    assert await q.get() == b"abcd" and q.weight == 4 and not q.full()


async def test_end_delivers_what_is_left_then_none() -> None:
    q: EndableQueue[int] = EndableQueue(10)
    q.put(1)
    q.end()
    assert not q.offer(2)
    assert await q.get() == 1
    assert await q.get() is None
    assert len(q) == 0


@pytest.mark.timeout(10)
async def test_every_waiting_reader_wakes_and_each_item_goes_to_one() -> None:
    q: EndableQueue[int] = EndableQueue(10)
    readers = [asyncio.ensure_future(q.get()) for _ in range(3)]
    await _blocked(q._getters, 3)
    q.put(7)
    q.end()
    assert sorted(await asyncio.gather(*readers), key=str) == [7, None, None]


@pytest.mark.timeout(10)
async def test_a_cancelled_reader_takes_nothing() -> None:
    q: EndableQueue[int] = EndableQueue(10)
    reader = asyncio.ensure_future(q.get())
    await _blocked(q._getters, 1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert len(q._getters) == 0
    q.put(1)
    assert q.get_nowait() == 1
