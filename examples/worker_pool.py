"""A pool of worker actors in separate processes, fed by `tell`.

The main process runs a Coordinator and a dispatcher client. It starts
WORKERS processes (multiprocessing, spawn context); each runs a `Worker`
actor that tells the dispatcher it is ready. The dispatcher tells jobs
(count the primes in a range) round-robin to the workers, which tell their
results back; then it asks each worker for its figures, and tells it to
stop. Messages are msgspec Structs: the workers' mailbox is typed with
`Actor.message_type`, the dispatcher reads a typed mailbox too.

    python examples/worker_pool.py
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time

import msgspec

from conec_actors import Actor, Client, ClientConfig, Coord, CoordConfig
from conec_actors.certs import self_signed

WORKERS = 3
JOBS = 24
CHUNK = 10_000
DISPATCHER = "dispatcher"


# --- messages -------------------------------------------------------------------

class Job(msgspec.Struct, tag=True):
    n: int
    lo: int
    hi: int


class Stats(msgspec.Struct, tag=True):
    pass


class Stop(msgspec.Struct, tag=True):
    pass


class Ready(msgspec.Struct, tag=True):
    worker: str
    pid: int


class Result(msgspec.Struct, tag=True):
    n: int
    worker: str
    primes: int


def count_primes(lo: int, hi: int) -> int:
    """Primes in [lo, hi), by trial division (some honest CPU work)."""
    count = 0
    for k in range(max(lo, 2), hi):
        if k % 2 == 0:
            count += k == 2
            continue
        d = 3
        while d * d <= k:
            if k % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


# --- the worker process -------------------------------------------------------------

class Worker(Actor):
    """Counts primes for the dispatcher."""

    message_type = Job | Stats | Stop

    def __init__(self, dispatcher: str) -> None:
        self.dispatcher = dispatcher
        self.jobs = 0
        self.busy = 0.0

    async def on_start(self) -> None:
        await self.client.tell(self.dispatcher, Ready(self.id, os.getpid()))

    async def receive(self, sender: str, body: Job | Stats | Stop) -> object:
        if isinstance(body, Job):
            t0 = time.perf_counter()
            primes = count_primes(body.lo, body.hi)
            self.busy += time.perf_counter() - t0
            self.jobs += 1
            await self.client.tell(sender, Result(body.n, self.id, primes))
            return None
        if isinstance(body, Stats):
            return {"jobs": self.jobs, "busy_s": round(self.busy, 3), "pid": os.getpid()}
        await self.stop()
        return None


async def run_worker(name: str, port: int, ca_pem: bytes) -> None:
    cfg = ClientConfig(name, "localhost", addr=("127.0.0.1", port), ca=ca_pem)
    worker = await Worker.spawn(cfg, DISPATCHER)
    await worker.wait_stopped()


def worker_main(name: str, port: int, ca_pem: bytes) -> None:
    """Entry point of a worker process."""
    asyncio.run(run_worker(name, port, ca_pem))


# --- the dispatcher -----------------------------------------------------------------

async def main() -> None:
    cert = self_signed(["localhost"])
    async with Coord.start(CoordConfig(cert.cert_pem, cert.key_pem, port=0)) as coord, \
            Client.connect(ClientConfig(DISPATCHER, "localhost", addr=coord.address,
                                        ca=cert.cert_pem)) as dispatcher:
        print(f"Coordinator on port {coord.port}; starting {WORKERS} worker processes")
        ctx = multiprocessing.get_context("spawn")
        names = [f"worker-{i + 1}" for i in range(WORKERS)]
        procs = [ctx.Process(target=worker_main, args=(name, coord.port, cert.cert_pem),
                             name=name) for name in names]
        for p in procs:
            p.start()
        inbox = dispatcher.mailbox.typed(Ready | Result)
        try:
            ready: set[str] = set()
            while len(ready) < WORKERS:
                env = await asyncio.wait_for(anext(inbox), 30)
                assert isinstance(env.body, Ready)
                ready.add(env.body.worker)
                print(f"  {env.body.worker} ready (pid {env.body.pid})")

            t0 = time.perf_counter()
            for n in range(JOBS):
                await dispatcher.tell(names[n % WORKERS], Job(n, n * CHUNK, (n + 1) * CHUNK))
            print(f"told {JOBS} jobs round-robin")
            results: dict[int, Result] = {}
            while len(results) < JOBS:
                env = await asyncio.wait_for(anext(inbox), 30)
                assert isinstance(env.body, Result)
                results[env.body.n] = env.body
            elapsed = time.perf_counter() - t0
            total = sum(r.primes for r in results.values())
            print(f"collected {len(results)} results in {elapsed:.2f} s")

            for name in names:
                stats = await dispatcher.ask(name, Stats(), timeout=10)
                print(f"  {name}: {stats['jobs']} jobs, {stats['busy_s']} s busy "
                      f"(pid {stats['pid']})")
                await dispatcher.tell(name, Stop())
            expected = count_primes(0, JOBS * CHUNK)
            status = "checked" if total == expected else f"WRONG, expected {expected}"
            print(f"pool done: {total} primes below {JOBS * CHUNK:,} ({status})")
        finally:
            loop = asyncio.get_running_loop()
            for p in procs:
                await loop.run_in_executor(None, p.join, 10)
                if p.is_alive():
                    p.terminate()
                    await loop.run_in_executor(None, p.join, 5)
        if total != expected or any(p.exitcode != 0 for p in procs):
            raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
