"""A stalled reader must stall its writer, not grow the Coordinator.

Processes: the Coordinator (spawned, plus its routing workers), client B and client A.
A opens two proxied streams to B: number 0, on which it keeps sending ``--size``
(64 KiB) messages for ``--seconds``, and number 1, on which it keeps sending
``--flow-size`` messages at full speed. B accepts both but reads only stream 1; stream
0 sits unread until the end. Meanwhile the parent samples the Coordinator's resident
memory (front-end plus workers, ``/proc`` ``VmRSS``) every 0.5 s.

At the end A stops (a ``send`` cancelled while waiting sends nothing) and finishes
both streams; only then does B read stream 0, so the number of messages it finds
there must equal the number A managed to send.

Reported (one JSON line): the stalled stream's send count over time (it must stop
near ``(writer high watermark + two stream windows) / size``), the flowing stream's
msgs/s and MB/s at B during the stall, and the Coordinator's RSS growth
``max(samples) - baseline`` in MB (1 MB = 1e6 bytes). Target: growth < 100 MB.

``python -m bench.stall [--seconds 15] [--size 65536] [--flow-size 1024]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from bench._clients import COORD_NAME, Target, connect
from bench._common import (
    MB,
    MP,
    STARTUP_TIMEOUT_S,
    Ctl,
    Procs,
    Stop,
    emit,
    make_self_signed,
    rates,
    start_coord,
    tree_rss_kib,
    wait_event,
)

STALLED_N = 0
FLOWING_N = 1
SAMPLE_S = 0.5
TARGET_GROWTH_MB = 100
#: Time to wait before the baseline reading (connections up, streams open).
SETTLE_S = 1.0


async def receiver_main(target: Target, drain: Stop, *, ctl: Ctl, stop: Stop) -> None:
    """Client B: read stream 1 as it comes; read stream 0 only once *drain* is set."""
    from conec_actors import StreamClosed

    client = await connect("b", target)
    try:
        ctl.put(("ready", "b"))
        streams: dict[int, Any] = {}
        incoming = aiter(client.incoming)
        while len(streams) < 2:
            stream = await anext(incoming)
            streams[stream.stream_id.n] = stream
        flowing, stalled = streams[FLOWING_N].recv, streams[STALLED_N].recv
        ctl.put(("accepted", sorted(streams)))

        flow: dict[str, Any] = {"msgs": 0, "payload_bytes": 0, "t_first": 0.0, "t_last": 0.0}

        async def read_flowing() -> None:
            async for message in flowing:
                now = time.perf_counter()
                if not flow["msgs"]:
                    flow["t_first"] = now
                flow["t_last"] = now
                flow["msgs"] += 1
                flow["payload_bytes"] += len(message)

        flow_task = asyncio.create_task(read_flowing())
        await wait_event(drain)
        received = payload_bytes = 0
        with contextlib.suppress(StreamClosed):
            while True:
                message = await asyncio.wait_for(stalled.recv(), STARTUP_TIMEOUT_S)
                received += 1
                payload_bytes += len(message)
        await asyncio.wait_for(flow_task, STARTUP_TIMEOUT_S)
        ctl.put(("b_done", {"stalled_received": received, "stalled_payload_bytes": payload_bytes,
                            **flow}))
        await wait_event(stop)
    finally:
        await client.close()


async def sender_main(target: Target, seconds: float, size: int, flow_size: int, go: Stop,
                      *, ctl: Ctl, stop: Stop) -> None:
    """Client A: send on stream 0 (stalled at B) and stream 1 for *seconds*, then finish."""
    client = await connect("a", target)
    try:
        stalled, _ = await client.new_proxied_stream("b", stream_id=STALLED_N)
        flowing, _ = await client.new_proxied_stream("b", stream_id=FLOWING_N)
        ctl.put(("opened", None))
        await wait_event(go, poll_s=0.002)
        sent = {"stalled": 0, "flowing": 0}

        async def pump(stream: Any, key: str, payload: bytes) -> None:
            while True:
                await stream.send(payload)
                sent[key] += 1

        tasks = [asyncio.create_task(pump(stalled, "stalled", bytes(size))),
                 asyncio.create_task(pump(flowing, "flowing", bytes(flow_size)))]
        timeline: list[tuple[float, int]] = []
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            timeline.append((round(elapsed, 2), sent["stalled"]))
            await asyncio.sleep(min(SAMPLE_S, max(0.0, seconds - elapsed)))
            for task in tasks:
                if task.done():  # a send failed: report it
                    task.result()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        timeline.append((round(time.monotonic() - t0, 2), sent["stalled"]))
        await stalled.finish()
        await flowing.finish()
        ctl.put(("a_done", {**sent, "stalled_timeline": timeline}))
        await wait_event(stop)
    finally:
        await client.close()


def run_stall(*, seconds: float, size: int, flow_size: int, max_datagram_size: int = 1200,
              routing_workers: int = 1) -> dict[str, Any]:
    from conec_actors.streams import HIGH_WATER, STREAM_WINDOW

    cert, key = make_self_signed(COORD_NAME)
    with Procs("stall") as procs:
        coord = start_coord(procs, cert, key, routing_workers=routing_workers,
                            max_datagram_size=max_datagram_size)
        target: Target = (coord.port, cert, max_datagram_size)
        drain, go = MP.Event(), MP.Event()
        procs.start("b", receiver_main, target, drain)
        procs.expect("ready")
        procs.start("a", sender_main, target, seconds, size, flow_size, go)
        procs.expect("opened")
        procs.expect("accepted")
        time.sleep(SETTLE_S)
        baseline = tree_rss_kib(coord.pid)[0]
        go.set()
        t0 = time.monotonic()
        samples: list[tuple[float, int]] = []
        while (elapsed := time.monotonic() - t0) < seconds + SAMPLE_S:
            samples.append((round(elapsed, 2), tree_rss_kib(coord.pid)[0]))
            time.sleep(SAMPLE_S)
        a_done = procs.expect("a_done", timeout=STARTUP_TIMEOUT_S)
        stats = coord.stats()
        drain.set()
        b_done = procs.expect("b_done", timeout=STARTUP_TIMEOUT_S * 2)

    if b_done["stalled_received"] != a_done["stalled"]:
        raise RuntimeError(f"stall: A sent {a_done['stalled']} messages on the stalled "
                           f"stream, B found {b_done['stalled_received']}")
    if b_done["msgs"] != a_done["flowing"]:
        raise RuntimeError(f"stall: A sent {a_done['flowing']} messages on the flowing "
                           f"stream, B got {b_done['msgs']}")
    peak = max(kib for _, kib in samples)
    timeline = a_done["stalled_timeline"]
    after_1s = next((n for t, n in timeline if t >= 1.0), timeline[-1][1])
    flow_seconds = b_done["t_last"] - b_done["t_first"]
    return {
        "bench": "stall",
        "seconds": seconds,
        "size": size,
        "flow_size": flow_size,
        "max_datagram_size": max_datagram_size,
        "routing_workers": routing_workers,
        "stalled_sent": a_done["stalled"],
        "stalled_sent_after_1s": after_1s,
        "stalled_sent_timeline": timeline,
        "stalled_received_after": b_done["stalled_received"],
        "expected_stalled_about": (HIGH_WATER + 2 * STREAM_WINDOW) // size + 1,
        "flowing": {
            "msgs": b_done["msgs"],
            "seconds": flow_seconds,
            **(rates(flow_size, b_done["msgs"], flow_seconds) if flow_seconds > 0 else {}),
        },
        "rss_baseline_kib": baseline,
        "rss_max_kib": peak,
        "rss_samples_kib": [kib for _, kib in samples],
        "growth_mb": (peak - baseline) * 1024 / MB,
        "target_growth_mb": f"< {TARGET_GROWTH_MB}",
        "coord_bytes_forwarded": stats["bytes_forwarded"],
        "coord_streams": stats["streams"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.stall", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="length of the stall")
    p.add_argument("--size", type=int, default=65536, help="message size, stalled stream")
    p.add_argument("--flow-size", type=int, default=1024, help="message size, flowing stream")
    p.add_argument("--max-datagram-size", type=int, default=1200)
    p.add_argument("--routing-workers", type=int, default=1)
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.size < 1 or args.flow_size < 1:
        p.error("--seconds, --size and --flow-size must be positive")
    emit(run_stall(seconds=args.seconds, size=args.size, flow_size=args.flow_size,
                   max_datagram_size=args.max_datagram_size,
                   routing_workers=args.routing_workers))


if __name__ == "__main__":
    main()
