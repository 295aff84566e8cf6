"""`coord.nats_fast`: the two shortcuts through nats-py on the payload path,
against a real nats-server, so that a nats-py that moved the internals they
use fails here rather than silently slowing the federation down."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conec_actors.coord.nats_fast import Inline, write_now

from .conftest import wait_for
from .nats_cluster import nats_cluster

pytestmark = pytest.mark.timeout(60)


async def test_written_now_and_published_arrive_inline_in_order(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path, 1) as cluster:
        pub, sub_nc = await cluster.connect(), await cluster.connect()
        got: list[bytes] = []
        sub = await sub_nc.subscribe("t.fast")
        Inline.install(sub, lambda msg: got.append(msg.data))
        await sub_nc.flush()
        want = []
        direct = 0
        for i in range(2000):
            data = b"%d." % i + b"x" * (i % 7 * 1000)
            want.append(data)
            if write_now(pub, "t.fast", data):
                direct += 1
            else:  # nats-py has something of its own queued: its way, in order
                await pub.publish("t.fast", data)
            if i % 100 == 0:
                await asyncio.sleep(0)
        await pub.flush()
        await wait_for(lambda: len(got) == len(want), timeout=10)
        assert got == want
        # The shortcut is taken (nats-py's internals are where it expects).
        assert direct > 1000
        assert sub.pending_msgs == 0


async def test_inline_refuses_a_callback_subscription(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path, 1) as cluster:
        nc = await cluster.connect()

        async def cb(msg: Any) -> None:
            pass

        sub = await nc.subscribe("t.cb", cb=cb)
        with pytest.raises(RuntimeError, match="cannot take messages inline"):
            Inline.install(sub, lambda msg: None)


async def test_write_now_says_no_when_not_connected(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path, 1) as cluster:
        nc = await cluster.connect()
        assert write_now(nc, "t.x", b"1")
        await nc.close()
        assert not write_now(nc, "t.x", b"2")
