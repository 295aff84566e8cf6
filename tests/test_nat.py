"""A real NAT: the Coordinator on a "public" network and two clients, each
behind its own masquerading NAT (nftables), all in network namespaces.

    cnhost1 10.1.0.2 --- 10.1.0.1 cnnat1 203.0.113.11 --- p1 \
                                                             cnpub 203.0.113.1
    cnhost2 10.2.0.2 --- 10.2.0.1 cnnat2 203.0.113.12 --- p2 /

cnpub runs the Coordinator and is also the one router of the "internet" (the
NATs reach each other through it, one hop).
Each NAT masquerades its LAN behind its public address, forwards only LAN ->
WAN and established/related traffic back, and answers nothing on its WAN
side (input: established/related only), like a home router. The Coordinator
and the clients run as tests/nat_peer.py processes inside the namespaces;
this file drives them over pipes and reads their JSON answers.

Shows: (1) with holepunching the channel opens and direct streams carry data
that the Coordinator never forwards, while a proxied stream's data it does;
(2) with holepunch=False on either side, new_channel fails with
ConnectFailed after its 5 s bound and new_stream falls back to proxied after
about 2 s; (3) the NATs really filter: an unsolicited datagram to a client's
public mapping reaches the NAT and goes no further.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PEER_SCRIPT = Path(__file__).with_name("nat_peer.py")
COORD_IP = "203.0.113.1"
NAT_IPS = ("203.0.113.11", "203.0.113.12")
LAN_NETS = ("10.1.0", "10.2.0")
MESSAGES = 200
MESSAGE_SIZE = 1024


# -- skip rule ---------------------------------------------------------------------------


def _tool(name: str) -> str | None:
    """Where a system tool is, also when PATH lacks the sbin directories."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


IP = _tool("ip") or "ip"
NFT = _tool("nft") or "nft"


def _namespaces_unavailable() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    if _tool("ip") is None:
        return "needs the `ip` command (iproute2)"
    probe = f"cnprobe{os.getpid()}{uuid.uuid4().hex[:4]}"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True)
    subprocess.run([IP, "netns", "del", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    return None


_UNAVAILABLE = _namespaces_unavailable()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")


# -- topology ----------------------------------------------------------------------------


def _run(*cmd: str, stdin: str | None = None) -> str:
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def _nat_ruleset(public_ip: str, lan: str, other_nat: str) -> str:
    """A home router: masquerade LAN -> WAN; forward back only what conntrack
    knows; nothing on the WAN side reaches the router itself. `from_peer`
    counts what the other NAT's address gets forwarded to the LAN."""
    return f"""
table ip cnat {{
    counter from_peer {{ }}
    counter wan_in_udp {{ }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        iifname "wan" ip saddr {other_nat} meta l4proto udp counter name wan_in_udp
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" ip saddr {lan}.0/24 masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related iifname "wan" ip saddr {other_nat} counter name from_peer
        ct state established,related accept
        iifname "lan" oifname "wan" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        {WAN_INPUT_FILTER}
    }}
}}
"""


#: The router itself answers nothing from the WAN side that conntrack does
#: not know (home routers drop or reject there). Without it, see
#: test_holepunch_through_a_router_that_accepts_on_its_wan_side.
WAN_INPUT_FILTER = 'iifname "wan" ct state != { established, related } drop'


@contextlib.contextmanager
def wan_input_open(topo: Topology) -> Iterator[None]:
    """Let the NAT routers accept anything on their WAN side for a while
    (plain `masquerade` and nothing else, as on a bare Linux box)."""
    def nft(nat: str, command: str) -> None:
        _run(IP, "netns", "exec", nat, NFT, command)

    for nat in topo.nats:
        nft(nat, "flush chain ip cnat input")
    try:
        yield
    finally:
        for nat in topo.nats:
            nft(nat, "flush chain ip cnat input")
            nft(nat, f"add rule ip cnat input {WAN_INPUT_FILTER}")


@dataclass
class Topology:
    pub: str
    nats: tuple[str, str]
    hosts: tuple[str, str]

    @property
    def namespaces(self) -> list[str]:
        return [self.pub, *self.nats, *self.hosts]

    def counter(self, nat: int, name: str) -> int:
        out = _run(IP, "netns", "exec", self.nats[nat], NFT, "-j", "list", "counter",
                   "ip", "cnat", name)
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise AssertionError(f"no counter {name} in {self.nats[nat]}: {out}")


def _forwarding_on(ns: str) -> None:
    # /proc/sys/net belongs to the namespace of the process that opens it
    _run(IP, "netns", "exec", ns, sys.executable, "-c",
         "open('/proc/sys/net/ipv4/ip_forward', 'w').write('1')")


def _build(topo: Topology) -> None:
    ns = (IP, "netns", "exec")
    for name in topo.namespaces:
        _run(IP, "netns", "add", name)
        _run(IP, "-n", name, "link", "set", "lo", "up")
    # The "internet" is one router: the NATs' traffic to each other crosses a hop.
    _run(IP, "-n", topo.pub, "addr", "add", f"{COORD_IP}/32", "dev", "lo")
    _forwarding_on(topo.pub)
    for i, (nat, host) in enumerate(zip(topo.nats, topo.hosts, strict=True)):
        port = f"p{i + 1}"
        # veths are created inside the namespaces: the root one is never touched
        _run(IP, "-n", topo.pub, "link", "add", port, "type", "veth",
             "peer", "name", "wan", "netns", nat)
        _run(IP, "-n", topo.pub, "link", "set", port, "up")
        _run(IP, "-n", topo.pub, "route", "add", f"{NAT_IPS[i]}/32", "dev", port,
             "src", COORD_IP)
        _run(IP, "-n", nat, "link", "add", "lan", "type", "veth",
             "peer", "name", "eth0", "netns", host)
        _run(IP, "-n", nat, "addr", "add", f"{NAT_IPS[i]}/32", "dev", "wan")
        _run(IP, "-n", nat, "addr", "add", f"{LAN_NETS[i]}.1/24", "dev", "lan")
        _run(IP, "-n", nat, "link", "set", "wan", "up")
        _run(IP, "-n", nat, "link", "set", "lan", "up")
        _run(IP, "-n", nat, "route", "add", "default", "via", COORD_IP, "dev", "wan",
             "onlink")
        _forwarding_on(nat)
        _run(*ns, nat, NFT, "-f", "-",
             stdin=_nat_ruleset(NAT_IPS[i], LAN_NETS[i], NAT_IPS[1 - i]))
        _run(IP, "-n", host, "addr", "add", f"{LAN_NETS[i]}.2/24", "dev", "eth0")
        _run(IP, "-n", host, "link", "set", "eth0", "up")
        _run(IP, "-n", host, "route", "add", "default", "via", f"{LAN_NETS[i]}.1")


def _destroy(topo: Topology) -> None:
    for name in topo.namespaces:
        subprocess.run([IP, "netns", "del", name], capture_output=True)


@pytest.fixture
def topology() -> Iterator[Topology]:
    """Fresh namespaces for every test: NAT mappings (conntrack entries live
    30-120 s) left by one test must not decide how the next one's ports are
    mapped."""
    if _tool("nft") is None:
        pytest.fail("the NAT tests need nftables (the `nft` command): .ci/run must install "
                    "it (apt-get install -y nftables), as it does when run as root")
    tag = f"{os.getpid()}{uuid.uuid4().hex[:4]}"
    topo = Topology(f"cnpub{tag}", (f"cnnat1{tag}", f"cnnat2{tag}"),
                    (f"cnhost1{tag}", f"cnhost2{tag}"))
    try:
        _build(topo)
        yield topo
    finally:
        _destroy(topo)


# -- processes ---------------------------------------------------------------------------


class Peer:
    """A nat_peer.py process in a namespace, spoken to over its pipes."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.lines: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, ns: str, name: str, logdir: Path, *args: str) -> Peer:
        log = logdir / f"{name}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                IP, "netns", "exec", ns, sys.executable, str(PEER_SCRIPT), *args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err)
        return cls(name, proc, log)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def expect(self, ev: str, timeout: float) -> dict[str, Any]:
        """The next answer of kind `ev` (answers of other kinds are kept)."""
        assert self.proc.stdout is not None
        for i, kept in enumerate(self.lines):
            if kept.get("ev") == ev:
                return self.lines.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), max(left, 0.01))
            except TimeoutError:
                raise AssertionError(f"{self.name}: no {ev!r} answer within {timeout} s"
                                     f"{self.tail()}") from None
            if not raw:
                raise AssertionError(f"{self.name} exited ({await self.proc.wait()}) "
                                     f"before answering {ev!r}{self.tail()}")
            msg: dict[str, Any] = json.loads(raw)
            if msg.get("ev") == ev:
                return msg
            self.lines.append(msg)

    async def ask(self, line: str, ev: str, timeout: float) -> dict[str, Any]:
        self.send(line)
        return await self.expect(ev, timeout)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace")[-3000:]
            if text:
                return f"\n--- {self.name} stderr ---\n{text}"
        return ""

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.send("quit")
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


class Net:
    """The Coordinator running in the public namespace, plus clients."""

    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.tmp = tmp
        self.peers: list[Peer] = []
        self.coord: Peer | None = None
        self.port = 0

    async def start_coord(self) -> None:
        self.coord = await self._spawn(self.topo.pub, "coord", "coord", str(self.tmp), COORD_IP)
        ready = await self.coord.expect("ready", 20)
        self.port = int(ready["port"])

    async def client(self, host: int, client_id: str, *, holepunch: bool = True) -> Peer:
        args = ["client", client_id, COORD_IP, str(self.port), str(self.tmp / "coord.pem")]
        if not holepunch:
            args.append("--no-holepunch")
        peer = await self._spawn(self.topo.hosts[host], client_id, *args)
        ready = await peer.expect("ready", 15)
        assert ready["ok"], f"{client_id} could not connect: {ready}{peer.tail()}"
        # it really is behind its NAT: the Coordinator sees the NAT's address
        assert ready["observed"][0] == NAT_IPS[host], ready
        return peer

    async def forwarded(self) -> int:
        assert self.coord is not None
        stats = (await self.coord.ask("stats", "stats", 10))["stats"]
        return int(stats["bytes_forwarded"])

    async def _spawn(self, ns: str, name: str, *args: str) -> Peer:
        peer = await Peer.start(ns, name, self.tmp, *args)
        self.peers.append(peer)
        return peer

    async def close(self) -> None:
        # clients first, the Coordinator last
        await asyncio.gather(*(p.stop() for p in self.peers if p is not self.coord))
        if self.coord is not None:
            await self.coord.stop()


@contextlib.asynccontextmanager
async def network(topo: Topology) -> AsyncIterator[Net]:
    with tempfile.TemporaryDirectory(prefix="conec-nat-") as tmp:
        net = Net(topo, Path(tmp))
        try:
            await net.start_coord()
            yield net
        finally:
            await net.close()


def xfer(mode: str, peer: str) -> str:
    return f"xfer {mode} {peer} {MESSAGES} {MESSAGE_SIZE}"


# -- tests -------------------------------------------------------------------------------


async def check_holepunched_channel(net: Net, topo: Topology) -> None:
    a, b = await asyncio.gather(net.client(0, "alice"), net.client(1, "bob"))
    opened = await a.ask("channel bob", "channel", 10)
    assert opened["ok"], f"holepunched channel failed: {opened}{a.tail()}{b.tail()}"
    assert opened["elapsed"] < 2.0, opened
    assert opened["channels"] == ["bob"]
    assert (await b.ask("info", "info", 5))["channels"] == ["alice"]

    peer_before = topo.counter(0, "from_peer"), topo.counter(1, "from_peer")
    before = await net.forwarded()
    out = await a.ask(xfer("direct", "bob"), "xfer", 30)
    back = await b.expect("incoming", 10)
    after = await net.forwarded()
    assert out["ok"] and out["kind"] == "direct" and out["echoed"] == MESSAGES, out
    assert back == {"ev": "incoming", "peer": "alice", "kind": "direct", "count": MESSAGES,
                    "ok": True}, back
    assert after == before, \
        f"the Coordinator forwarded {after - before} bytes of a direct stream"
    # The data crossed from NAT to NAT: each let the other's packets in, at
    # least one per 1500 bytes of the 200 KiB each way.
    peer_after = topo.counter(0, "from_peer"), topo.counter(1, "from_peer")
    for nat in (0, 1):
        assert peer_after[nat] - peer_before[nat] >= MESSAGES * MESSAGE_SIZE // 1500, \
            (peer_before, peer_after)

    # Control: the same traffic proxied does move the Coordinator's counter.
    out = await a.ask(xfer("proxied", "bob"), "xfer", 30)
    back = await b.expect("incoming", 10)
    assert out["ok"] and out["kind"] == "proxied" and out["echoed"] == MESSAGES, out
    assert back["kind"] == "proxied" and back["count"] == MESSAGES, back
    moved = await net.forwarded() - after
    assert moved >= 2 * MESSAGES * MESSAGE_SIZE, moved


@pytest.mark.timeout(90)
async def test_holepunched_channel_carries_direct_streams_the_coordinator_never_sees(
        topology: Topology) -> None:
    async with network(topology) as net:
        await check_holepunched_channel(net, topology)


@pytest.mark.timeout(90)
async def test_holepunch_through_a_router_that_accepts_on_its_wan_side(
        topology: Topology) -> None:
    """Knocks start with a low TTL so none reaches the opener's NAT before its
    dial does (which would make a WAN-accepting NAT move the dial's port), and
    the target's first knock leaves before its answer to the offer, so the
    dial cannot reach the target's NAT before it (which would move the
    knocks' port: under load that race was lost in about 1 run of 10)."""
    with wan_input_open(topology):
        async with network(topology) as net:
            await check_holepunched_channel(net, topology)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("without", ["opener", "target"])
async def test_without_holepunch_no_channel_and_new_stream_falls_back_to_proxied(
        topology: Topology, without: str) -> None:
    async with network(topology) as net:
        punch_a, punch_b = without != "opener", without != "target"
        a1, b1, a2, b2 = await asyncio.gather(
            net.client(0, "alice1", holepunch=punch_a), net.client(1, "bob1", holepunch=punch_b),
            net.client(0, "alice2", holepunch=punch_a), net.client(1, "bob2", holepunch=punch_b))
        before = await net.forwarded()
        # two pairs at once: one calls new_channel, the other new_stream
        failed, out = await asyncio.gather(a1.ask("channel bob1", "channel", 15),
                                           a2.ask(xfer("auto", "bob2"), "xfer", 30))

        assert failed["ok"] is False and failed["error"] == "ConnectFailed", failed
        assert 4.5 <= failed["elapsed"] <= 6.0, failed
        assert failed["channels"] == []
        assert (await b1.ask("info", "info", 5))["channels"] == []

        assert out["ok"] and out["kind"] == "proxied", out
        assert 1.5 <= out["open_elapsed"] <= 2.5, out
        assert out["sent"] == out["echoed"] == MESSAGES, out
        back = await b2.expect("incoming", 10)
        assert back == {"ev": "incoming", "peer": "alice2", "kind": "proxied",
                        "count": MESSAGES, "ok": True}, back
        assert await net.forwarded() - before >= 2 * MESSAGES * MESSAGE_SIZE


PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(b"unsolicited", (sys.argv[1], int(sys.argv[2])))
"""


@pytest.mark.timeout(90)
async def test_the_nat_really_filters_unsolicited_datagrams(topology: Topology) -> None:
    async with network(topology) as net:
        a, b = await asyncio.gather(net.client(0, "alice"), net.client(1, "bob"))
        host, port = (await b.ask("info", "info", 5))["observed"]
        arrived, passed = topology.counter(1, "wan_in_udp"), topology.counter(1, "from_peer")
        # from client 1's host to client 2's public mapping, without any knock
        _run(IP, "netns", "exec", topology.hosts[0], sys.executable, "-c", PROBE,
             host, str(port))
        await asyncio.sleep(0.3)
        assert topology.counter(1, "wan_in_udp") - arrived == 3, \
            "the probe did not reach client 2's NAT"
        assert topology.counter(1, "from_peer") == passed, \
            "client 2's NAT let an unsolicited datagram through to its LAN"
        # while a knock from client 2 opens it: the channel comes through
        opened = await a.ask("channel bob", "channel", 10)
        assert opened["ok"], opened
        assert topology.counter(1, "from_peer") > passed
