"""What the demo sends, checks and reports, without running it: checked
messages (sequence number and CRC-32), the figures of each stream and of the
broadcast room, and the summary table."""

from __future__ import annotations

import math
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
         "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent",
         "victor", "walter")
MIN_SIZE = 64
MAX_SIZE = 16 * 1024
#: Each message starts with its sequence number and the CRC-32 of the rest.
HEADER = struct.Struct(">QI")
#: At most this many problems are kept (and printed) per stream.
MAX_PROBLEMS = 3
MB = 1_000_000

_POOL = random.Random(1719).randbytes(2 * MAX_SIZE)


def client_names(n: int) -> list[str]:
    """The first `n` demo client ids: alice, bob, carol, ... then client-20, ..."""
    return [NAMES[i] if i < len(NAMES) else f"client-{i + 1}" for i in range(n)]


def make_message(seq: int, size: int) -> bytes:
    """A `size`-byte message (at least the header's 12 bytes) carrying `seq`
    and a CRC-32 over the sequence number and the payload."""
    body = max(0, size - HEADER.size)
    start = (seq * 7919) % MAX_SIZE
    payload = _POOL[start:start + body]
    seq_bytes = seq.to_bytes(8, "big")
    crc = zlib.crc32(payload, zlib.crc32(seq_bytes))
    return HEADER.pack(seq, crc) + payload


def check_message(msg: bytes, expected_seq: int) -> str | None:
    """None if `msg` is intact and has sequence number `expected_seq`, else
    what is wrong with it."""
    if len(msg) < HEADER.size:
        return f"message {expected_seq}: only {len(msg)} bytes"
    seq, crc = HEADER.unpack_from(msg)
    if zlib.crc32(memoryview(msg)[HEADER.size:], zlib.crc32(msg[:8])) != crc:
        return f"message {expected_seq}: checksum mismatch (corrupted)"
    if seq != expected_seq:
        return f"expected message {expected_seq}, got {seq} (lost or reordered)"
    return None


def random_size(rng: random.Random) -> int:
    """Sizes spread evenly on a log scale between MIN_SIZE and MAX_SIZE."""
    return int(math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE + 1))))


@dataclass
class Flow:
    """The figures of one demo stream, filled in by both of its ends."""

    sender: str
    receiver: str
    kind: str
    n: int
    sent_msgs: int = 0
    sent_bytes: int = 0
    recv_msgs: int = 0
    recv_bytes: int = 0
    finished: bool = False  # the writer called finish()
    ended_clean: bool = False  # the reader saw the clean end
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    @property
    def ok(self) -> bool:
        return (self.problem_count == 0 and self.finished and self.ended_clean
                and self.recv_msgs == self.sent_msgs and self.recv_bytes == self.sent_bytes)

    def describe(self) -> str:
        return f"{self.sender} -> {self.receiver} {self.kind} #{self.n}"


class Flows:
    """Flows by (sender, receiver, n); whichever end comes first creates it."""

    def __init__(self) -> None:
        self._flows: dict[tuple[str, str, str, int], Flow] = {}

    def get(self, sender: str, receiver: str, kind: str, n: int) -> Flow:
        key = (sender, receiver, kind, n)
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = Flow(sender, receiver, kind, n)
        return flow

    def __iter__(self) -> Iterator[Flow]:
        return iter(self._flows.values())


@dataclass
class Room:
    """The demo broadcast: what each member sent and what each one heard."""

    sent: dict[str, int] = field(default_factory=dict)
    heard: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def check(self) -> bool:
        orders = list(self.heard.values())
        if self.problems or not orders:
            return False
        if any(o != orders[0] for o in orders):
            self.problems.append("members heard different orders")
            return False
        for sender, n in self.sent.items():
            if [k for s, k in orders[0] if s == sender] != list(range(n)):
                self.problems.append(f"{sender}'s messages were not all heard in order")
                return False
        return True


class Printer:
    """Prints the demo's lines to `out` as they come."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)


def mb(n: int) -> str:
    """Bytes as megabytes, one decimal."""
    return f"{n / MB:,.1f}"


def table(rows: list[list[str]], right: set[int], indent: str = "  ") -> list[str]:
    """`rows` as aligned lines; the columns in `right` are right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def summary(flows: Flows, clients: list[str], stats: dict[str, Any], elapsed: float,
             stuck: list[str], say: Printer, interrupted: bool,
             broadcast_msgs: int = 0) -> bool:
    """Print the summary of the streams between `clients` (their ids); True if
    every check passed."""
    all_flows = list(flows)
    sent_msgs = sum(f.sent_msgs for f in all_flows)
    sent_bytes = sum(f.sent_bytes for f in all_flows)
    fwd_msgs, fwd_bytes = int(stats["messages_forwarded"]), int(stats["bytes_forwarded"])
    secs = max(elapsed, 1e-9)

    say("")
    say(f"summary after {elapsed:.1f} s" + (" (interrupted)" if interrupted else ""))
    rows = [["client", "sent msgs", "sent MB", "received msgs", "received MB", "check"]]
    for c in clients:
        out = [f for f in all_flows if f.sender == c]
        inc = [f for f in all_flows if f.receiver == c]
        good = all(f.ok for f in inc)
        rows.append([c, f"{sum(f.sent_msgs for f in out):,}",
                     mb(sum(f.sent_bytes for f in out)),
                     f"{sum(f.recv_msgs for f in inc):,}",
                     mb(sum(f.recv_bytes for f in inc)),
                     "ok" if good else "FAILED"])
    rows.append(["total", f"{sent_msgs:,}", mb(sent_bytes),
                 f"{sum(f.recv_msgs for f in all_flows):,}",
                 mb(sum(f.recv_bytes for f in all_flows)), ""])
    for line in table(rows, right={1, 2, 3, 4}):
        say(line)
    say("")
    say(f"  through the Coordinator: {fwd_msgs:,} messages, {mb(fwd_bytes)} MB "
        f"({fwd_msgs / secs:,.0f} msgs/s, {fwd_bytes / secs / MB:,.2f} MB/s)")
    proxied_msgs = sum(f.sent_msgs for f in all_flows if f.kind == "proxied")
    direct = [f for f in all_flows if f.kind == "direct"]
    if fwd_msgs != proxied_msgs + broadcast_msgs:
        say(f"  note: the Coordinator counted {fwd_msgs:,} messages forwarded, the "
            f"clients sent {proxied_msgs:,} on proxied streams and {broadcast_msgs:,} "
            "on the broadcast")
    if direct:
        say(f"  over the direct channel: {sum(f.recv_msgs for f in direct):,} messages, "
            f"{mb(sum(f.recv_bytes for f in direct))} MB, none through the Coordinator")

    failed = [f for f in all_flows if not f.ok]
    if not failed and not stuck and all_flows:
        say(f"  checks: all {len(all_flows)} streams ok: every message arrived, in order and "
            "intact")
        say("          (sequence number and CRC-32 in each), and every stream ended cleanly")
    else:
        say(f"  checks: FAILED on {len(failed)} of {len(all_flows)} streams")
        for f in failed:
            details = list(f.problems)
            if f.problem_count > len(f.problems):
                details.append(f"... {f.problem_count - len(f.problems)} more")
            if not details:
                details.append(f"{f.recv_msgs:,} of {f.sent_msgs:,} messages arrived"
                               + ("" if f.ended_clean else ", no clean end"))
            for d in details:
                say(f"    {f.describe()}: {d}")
        for s in stuck:
            say(f"    {s}")
    return not failed and not stuck and bool(all_flows)




def shard_lines(stats: dict[str, Any]) -> list[str]:
    """Where the clients landed, from `Coord.stats()`: each front-end shard's
    pid and clients (nothing for a Coordinator of one front-end)."""
    shards = stats["frontends"]
    if len(shards) < 2:
        return []
    held = [f for f in shards if f["clients"]]
    lines = [f"{len(shards)} front-end shards on one UDP port (the kernel steers each "
             "client by its first connection id):",
             "  " + "; ".join(f"shard {f['shard']} (pid {f['pid']}): {f['clients']} "
                              f"client{'s' * (f['clients'] != 1)}" for f in shards)
             + f"; imbalance {stats['frontends_imbalance']:.2f} (busiest / mean)"]
    if len(held) == 1:
        lines.append(f"  every client landed on shard {held[0]['shard']} this time: "
                     "nothing crosses shards (more clients make that unlikely)")
    return lines


def shard_summary(stats: dict[str, Any]) -> list[str]:
    """What each front-end shard forwarded, and its CPU time since it started."""
    rows = [["shard", "pid", "clients", "msgs forwarded", "MB forwarded", "cpu s"]]
    for f in stats["frontends"]:
        rows.append([str(f["shard"]), str(f["pid"]), str(f["clients"]),
                     f"{f['messages_forwarded']:,}", mb(f["bytes_forwarded"]),
                     f"{f['cpu_seconds']:.2f}"])
    return ["  front-end shards:", *table(rows, right={1, 2, 3, 4, 5}, indent="    ")]
