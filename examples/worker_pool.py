"""A pool of worker actors in separate processes, fed through their group.

The main process runs a Coordinator and a dispatcher client, and starts
WORKERS `Worker` processes with `ActorPool` (each joins group "worker"; a
worker that dies is restarted). The dispatcher hands out jobs (count the
primes in a range): half with `tell_group` (the worker tells the result
back), half with `ask_group` (the result is the answer); each goes to the
least loaded worker. Messages are msgspec Structs.

The pool's processes import this file as module `worker_pool` to find
`Worker` and `worker_config`, so the program stays under the `__main__`
guard; they learn the Coordinator's port and CA from the environment.

    python examples/worker_pool.py
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import msgspec

from conec_actors import Actor, ActorPool, Client, ClientConfig, Coord, CoordConfig
from conec_actors.certs import self_signed

WORKERS = 3
JOBS = 24
CHUNK = 10_000


class Job(msgspec.Struct, tag=True):
    n: int
    lo: int
    hi: int
    tell_back: bool = False


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


class Worker(Actor):
    """Counts primes; answers an ask, or tells the result back."""

    message_type = Job

    async def receive(self, sender: str, body: Job) -> Result:
        result = Result(body.n, f"{self.id} (pid {os.getpid()})",
                        count_primes(body.lo, body.hi))
        if body.tell_back:
            await self.client.tell(sender, result)
        return result


def worker_config(i: int) -> ClientConfig:
    """Worker i's config (called in its process)."""
    return ClientConfig(f"worker-{i + 1}", "localhost",
                        addr=("127.0.0.1", int(os.environ["WORKER_POOL_PORT"])),
                        ca=os.environ["WORKER_POOL_CA"].encode())


async def main() -> None:
    cert = self_signed(["localhost"])
    async with Coord.start(CoordConfig(cert.cert_pem, cert.key_pem, port=0)) as coord, \
            Client.connect(ClientConfig("dispatcher", "localhost", addr=coord.address,
                                        ca=cert.cert_pem)) as dispatcher:
        os.environ["WORKER_POOL_PORT"] = str(coord.port)
        os.environ["WORKER_POOL_CA"] = cert.cert_pem.decode()
        async with await ActorPool.start(Worker, worker_config, WORKERS) as pool:
            print(f"Coordinator on port {coord.port}; pool {pool.group!r} of {WORKERS} "
                  f"processes: {sorted(await dispatcher.group_members(pool.group))}")
            t0 = time.perf_counter()
            jobs = [Job(n, n * CHUNK, (n + 1) * CHUNK, tell_back=n < JOBS // 2)
                    for n in range(JOBS)]
            told, asked = jobs[:JOBS // 2], jobs[JOBS // 2:]
            for job in told:
                await dispatcher.tell_group(pool.group, job)
            answers = await asyncio.gather(*(
                dispatcher.ask_group(pool.group, job, timeout=30, reply_type=Result)
                for job in asked))
            inbox = dispatcher.mailbox.typed(Result)
            results = list(answers) + [
                (await asyncio.wait_for(anext(inbox), 30)).body for _ in told]
            elapsed = time.perf_counter() - t0
        print(f"{len(told)} jobs told, {len(asked)} asked; all {len(results)} results "
              f"in {elapsed:.2f} s")
        for worker, jobs_done in sorted(Counter(r.worker for r in results).items()):
            print(f"  {worker}: {jobs_done} jobs")
        total = sum(r.primes for r in results)
        expected = count_primes(0, JOBS * CHUNK)
        status = "checked" if total == expected else f"WRONG, expected {expected}"
        print(f"pool done: {total} primes below {JOBS * CHUNK:,} ({status})")
        if total != expected or sorted(r.n for r in results) != list(range(JOBS)):
            raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
