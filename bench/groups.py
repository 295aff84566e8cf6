"""Groups: `tell_group` msgs/s vs `tell` to one peer, `ask_group` p50 vs `ask` p50,
and the share of a group's asks that a member slowed 10x gets (DESIGN.md section 11).

Three processes per session: the Coordinator (:func:`bench._common.coord_main`), the
members and the sender. The members process runs eight clients: ``m0``..``m3`` join
group ``g`` and answer every ask at once (``await env.reply(env.body)``); ``s0``..``s3``
join group ``slow`` and sleep before answering with their id, ``s0`` ten times longer
(``--slow-ms``, default 20 ms, vs 2 ms). The sender ``a``, in each round:

* tells ``N`` 64-byte ``bytes`` bodies with ``await client.tell("m0", body)``, then as
  many with ``await client.tell_group("g", body)``, each run timed from its first send
  until every message is acknowledged by the receivers' mailboxes
  (an ask to every member after the run: order holds per pair), order alternating
  per round;
* ``--ask-n`` sequential 64-byte asks with ``ask("m0", ...)`` and as many with
  ``ask_group("g", ...)`` (after 50 unmeasured ones of each);
* 200 ``ask_group("slow", ...)`` from 8 concurrent askers: the share ``s0`` answered.

One JSON line per round, then a summary line of the medians; a ratio is the median
of the rounds' ratios, each of figures measured back to back, which cancels the
machine's drift between rounds (targets: tell_group >= 0.8x tell, ask_group p50
<= 1.2x ask, slowed share < 0.25).

``python -m bench.groups [--rounds 7] [--n 20000] [--ask-n 1000] [--slow-ms 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from collections.abc import Iterator
from typing import Any

from bench._clients import COORD_NAME, Target, connect
from bench._common import (
    Ctl,
    Procs,
    Stop,
    emit,
    make_self_signed,
    median,
    percentile,
    start_coord,
    wait_event,
)

FAST = [f"m{i}" for i in range(4)]
SLOW = [f"s{i}" for i in range(4)]
WARMUP = 50
SLOW_ASKS = 200
ASKERS = 8
BODY = b"x" * 64


async def members_main(target: Target, slow_ms: float, *, ctl: Ctl, stop: Stop) -> None:
    """The members: ``m*`` answer at once, ``s*`` after a sleep (``s0`` 10x longer)."""
    clients = [await connect(name, target) for name in FAST + SLOW]

    async def serve(client: Any, delay: float) -> None:
        async for env in client.mailbox:
            if env.is_ask:
                if delay:  # a slow member answers with its id (the sender counts them)
                    await asyncio.sleep(delay)
                    await env.reply(client.id)
                else:
                    await env.reply(env.body)

    tasks = []
    for c in clients:
        delay = 0.0
        if c.id in SLOW:
            delay = slow_ms / 1000 if c.id == "s0" else slow_ms / 10000
        await c.join_group("g" if c.id in FAST else "slow")
        tasks.append(asyncio.create_task(serve(c, delay)))
    ctl.put(("ready", None))
    try:
        await wait_event(stop)
    finally:
        for t in tasks:
            t.cancel()
        for c in clients:
            await c.close()


async def _tell_run(client: Any, send: Any, n: int) -> float:
    """msgs/s of *n* sends, until every member has them (an ask to each: order
    holds per pair, so its answer comes after every tell before it)."""
    t0 = time.perf_counter()
    for _ in range(n):
        await send(BODY)
    await asyncio.gather(*(client.ask(m, BODY, timeout=60) for m in FAST))
    return n / (time.perf_counter() - t0)


async def _asks(ask: Any, n: int) -> list[float]:
    clock = time.perf_counter
    rtts = []
    for i in range(WARMUP + n):
        t0 = clock()
        await ask(BODY)
        if i >= WARMUP:
            rtts.append((clock() - t0) * 1e6)
    return rtts


async def _asker(client: Any, todo: Any, count: collections.Counter[str]) -> None:
    for _ in todo:
        count[await client.ask_group("slow", BODY, timeout=30)] += 1


async def sender_main(target: Target, rounds: int, n: int, ask_n: int, *, ctl: Ctl,
                      stop: Stop) -> None:
    client = await connect("a", target)
    try:
        await client.tell_group("g", BODY)  # follows g, opens the pairs
        for m in FAST:
            await client.ask(m, BODY)
        for r in range(rounds):
            out: dict[str, Any] = {"round": r}
            runs = [("tell", lambda b: client.tell("m0", b)),
                    ("tell_group", lambda b: client.tell_group("g", b))]
            if r % 2:
                runs.reverse()
            for kind, send in runs:
                out[kind] = await _tell_run(client, send, n)
            ask_rtts = await _asks(lambda b: client.ask("m0", b), ask_n)
            group_rtts = await _asks(lambda b: client.ask_group("g", b), ask_n)
            out["ask_p50_us"] = percentile(ask_rtts, 50)
            out["ask_group_p50_us"] = percentile(group_rtts, 50)
            out["tell_group_ratio"] = out["tell_group"] / out["tell"]
            out["ask_group_ratio"] = out["ask_group_p50_us"] / out["ask_p50_us"]
            count: collections.Counter[str] = collections.Counter()
            todo = iter(range(SLOW_ASKS))
            await asyncio.gather(*(_asker(client, todo, count) for _ in range(ASKERS)))
            out["slow_share"] = count["s0"] / SLOW_ASKS
            ctl.put(("round", out))
    finally:
        await client.close()
    ctl.put(("done", None))


def run(*, rounds: int = 7, n: int = 20000, ask_n: int = 1000,
        slow_ms: float = 20.0) -> Iterator[dict[str, Any]]:
    """One session: a JSON line per round, then the summary line (also run by
    ``python -m bench.actors``)."""
    cert, key = make_self_signed(COORD_NAME)
    got_rounds: list[dict[str, Any]] = []
    with Procs("groups") as procs:
        coord = start_coord(procs, cert, key)
        target: Target = (coord.port, cert, 1200)
        procs.start("members", members_main, target, slow_ms)
        procs.expect("ready")
        procs.start("a", sender_main, target, rounds, n, ask_n)
        for _ in range(rounds):
            got = procs.expect("round", timeout=300)
            yield {"bench": "groups-round", **got}
            got_rounds.append(got)
        procs.expect("done", timeout=60)

    def med(key: str) -> float:
        return median(r[key] for r in got_rounds)

    yield {"bench": "groups", "rounds": len(got_rounds),
           "tell_msgs_s": med("tell"), "tell_group_msgs_s": med("tell_group"),
           "tell_group_ratio": med("tell_group_ratio"),
           "ask_p50_us": med("ask_p50_us"), "ask_group_p50_us": med("ask_group_p50_us"),
           "ask_group_ratio": med("ask_group_ratio"),
           "slow_share": med("slow_share")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.groups",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--ask-n", type=int, default=1000)
    ap.add_argument("--slow-ms", type=float, default=20.0)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.n < 1 or args.ask_n < 1 or args.slow_ms <= 0:
        ap.error("--rounds, --n and --ask-n must be >= 1 and --slow-ms > 0")
    for line in run(rounds=args.rounds, n=args.n, ask_n=args.ask_n, slow_ms=args.slow_ms):
        emit(line)


if __name__ == "__main__":
    main()
