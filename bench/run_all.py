"""Run every conec-actors benchmark once, with small settings, for a quick look.

``python -m bench.run_all`` runs, in order (about three minutes on a 2-core machine):

* ``bench.proxied --rounds 1 --duration 1 --ping-n 100`` (all sizes, and the ping);
* ``bench.direct --rounds 1 --duration 1 --ping-n 100``;
* ``bench.broadcast --members 2,8 --rounds 1 --no-nats``;
* ``bench.idle_clients --clients 200 --procs 2 --workers-list 1,2 --idle 1``;
* ``bench.stall --seconds 5``;
* ``bench.attacks`` (every attack pattern, defaults);
* ``bench.groups --rounds 1`` (tell_group/ask_group against tell/ask);
* ``bench.shards --rounds 1 --duration 1`` (front-end shards: CPU/msg, quota, cross-shard);
* ``bench.soak --minutes 0.5 --idle 100`` (endurance: leaks, losses, errors);
* ``bench.federation --quick`` (two Coordinators over a 3-node NATS cluster).

Each prints its own JSON lines. For figures worth comparing, run the modules
themselves with their defaults (several alternating rounds, 1,000 clients, ...).
"""

from __future__ import annotations

import argparse

from bench import (
    attacks,
    broadcast,
    direct,
    federation,
    groups,
    idle_clients,
    proxied,
    shards,
    soak,
    stall,
)

QUICK: dict[str, list[str]] = {
    "proxied": ["--rounds", "1", "--duration", "1", "--ping-n", "100"],
    "direct": ["--rounds", "1", "--duration", "1", "--ping-n", "100"],
    "broadcast": ["--members", "2,8", "--rounds", "1", "--no-nats"],
    "idle_clients": ["--clients", "200", "--procs", "2", "--workers-list", "1,2", "--idle", "1"],
    "stall": ["--seconds", "5"],
    "attacks": [],
    "groups": ["--rounds", "1"],
    "shards": ["--rounds", "1", "--duration", "1"],
    "soak": ["--minutes", "0.5", "--idle", "100"],
    "federation": ["--quick"],
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.run_all",
                                description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=sorted(QUICK), action="append",
                   help="run only this benchmark (repeatable)")
    args = p.parse_args(argv)
    runs = {"proxied": proxied.main, "direct": direct.main, "broadcast": broadcast.main,
            "idle_clients": idle_clients.main, "stall": stall.main, "attacks": attacks.main,
            "groups": groups.main, "shards": shards.main, "soak": soak.main,
            "federation": federation.main}
    for name in args.only or list(QUICK):
        runs[name](QUICK[name])


if __name__ == "__main__":
    main()
