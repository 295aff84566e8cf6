"""Tests for the `conec-actors` command line, run as real subprocesses
(`python -m conec_actors.cli ...`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aioquic.tls import AlertBadCertificate, verify_certificate
from cryptography import x509

from conec_actors import Client, ClientConfig
from conec_actors.cli import main

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and signals")

LISTENING = re.compile(r"^conec-actors coordinator listening on \[?([^\]\s]+?)\]?:(\d+)$")
CA_LINE = re.compile(r"^CA certificate: (\S+)")
STARTUP = 30.0  # seconds a coordinator may take to start on a loaded machine


class Cli:
    """`python -m conec_actors.cli ARGS` with its output collected as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conec_actors.cli", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines),
                             daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err),
                             daemon=True),
        ]
        for t in self._readers:
            t.start()
        self.workers: set[int] = set()

    def _pump(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def expect(self, pattern: re.Pattern[str], timeout: float = STARTUP) -> re.Match[str]:
        """Wait for a stdout line matching `pattern`."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = pattern.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None
                                 and not any(t.is_alive() for t in self._readers)):
                    raise AssertionError(
                        f"no line matching {pattern.pattern!r}; stdout: {self.lines}, "
                        f"stderr: {self.err}, exit: {self.proc.poll()}")
                self._cond.wait(min(left, 0.2))

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def kill(self) -> None:
        """Kill the process and the workers seen, if still running."""
        if self.proc.poll() is None:
            self.workers |= children(self.pid)
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.workers:
            if is_worker(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for t in self._readers:
            t.join(5)


def run_cli(*args: str, timeout: float = 60.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conec_actors.cli", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=env)


def children(pid: int) -> set[int]:
    """Direct children of `pid`, from /proc/<pid>/task/*/children."""
    out: set[int] = set()
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out.update(int(p) for p in path.read_text().split())
    return out


def is_worker(pid: int) -> bool:
    """True if `pid` is a live (not zombie) conec-actors worker process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"conec_actors.coord.worker" in cmdline and state != "Z"


def wait_gone(pids: set[int], timeout: float = 5.0) -> set[int]:
    """Wait until none of `pids` is a live worker; return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {p for p in pids if is_worker(p)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def worker_children(pid: int, timeout: float = STARTUP) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        found = {p for p in children(pid) if is_worker(p)}
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment for CLI subprocesses: a private XDG_STATE_HOME, so a
    run without --state-dir never touches the real home directory."""
    e = dict(os.environ)
    e["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    return e


def start_coord(env: dict[str, str], *args: str) -> tuple[Cli, str, int, Path]:
    cli = Cli("coord", "--port", "0", *args, env=env)
    m = cli.expect(LISTENING)
    ca = Path(cli.expect(CA_LINE).group(1))
    cli.expect(re.compile("^press Ctrl-C to stop$"))
    return cli, m.group(1), int(m.group(2)), ca


# -- coord ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_coord_serves_clients_and_stops_cleanly_on_signal(
        tmp_path: Path, env: dict[str, str], sig: signal.Signals) -> None:
    state = tmp_path / "state"
    cli, host, port, ca = await asyncio.to_thread(start_coord, env, "--state-dir", str(state))
    try:
        assert host == "127.0.0.1" and port > 0
        assert ca == state / "ca.pem" and ca.is_file()
        workers = await asyncio.to_thread(worker_children, cli.pid)
        cli.workers |= workers
        assert workers, "the coordinator started no worker process"

        cfg = ClientConfig("alice", "localhost", addr=(host, port), ca=str(ca))
        client = await Client.connect(cfg)
        try:
            send, _recv = await client.new_proxied_stream("alice")  # loopback
            stream_iter = client.incoming
            incoming = await anext(stream_iter)
            await send.send(b"hello through the CLI's coordinator")
            assert await incoming.recv.recv() == b"hello through the CLI's coordinator"

            cli.proc.send_signal(sig)
            rc = await asyncio.to_thread(cli.wait, 15)
            assert rc == 0, cli.stderr
            # The coordinator's close reached the client.
            deadline = time.monotonic() + 5
            while not client.is_closed and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert client.is_closed
        finally:
            await client.close()

        assert await asyncio.to_thread(wait_gone, workers) == set()
        assert "stopped" in cli.stdout
        assert "Traceback" not in cli.stderr, cli.stderr
    finally:
        await asyncio.to_thread(cli.kill)


@pytest.mark.timeout(120)
def test_coord_reuses_its_state_dir(tmp_path: Path, env: dict[str, str]) -> None:
    state = tmp_path / "state"
    seen: list[tuple[Path, bytes, bytes]] = []
    for _ in range(2):
        cli, _host, _port, ca = start_coord(env, "--state-dir", str(state))
        try:
            seen.append((ca, ca.read_bytes(), (state / "localhost.pem").read_bytes()))
            cli.proc.send_signal(signal.SIGTERM)
            assert cli.wait(15) == 0, cli.stderr
        finally:
            cli.kill()
    (ca1, ca_bytes1, leaf1), (ca2, ca_bytes2, leaf2) = seen
    assert ca1 == ca2
    assert ca_bytes1 == ca_bytes2, "the second run made a new CA"
    assert leaf1 == leaf2, "the second run issued a new certificate"
    assert state.stat().st_mode & 0o077 == 0
    for key in ("ca.key", "localhost.key"):
        assert stat.S_IMODE((state / key).stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificate(leaf1)
    for name in ("localhost", "127.0.0.1", "::1"):
        verify_certificate(certificate=leaf, chain=[], server_name=name, cadata=ca_bytes1)


@pytest.mark.timeout(60)
def test_coord_default_state_dir_is_under_xdg_state_home(tmp_path: Path,
                                                         env: dict[str, str]) -> None:
    cli, _host, _port, ca = start_coord(env)
    try:
        assert ca == Path(env["XDG_STATE_HOME"]) / "conec-actors" / "ca.pem"
        cli.proc.send_signal(signal.SIGINT)
        assert cli.wait(15) == 0, cli.stderr
    finally:
        cli.kill()


def kill_workers_until_exit(cli: Cli, within: float = 20.0) -> set[int]:
    """SIGKILL every worker of the `coord` process `cli` as it appears (a
    crash loop), until that process exits or `within` seconds pass; the
    pids killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + within
    while cli.proc.poll() is None and time.monotonic() < deadline:
        for pid in {p for p in children(cli.pid) if is_worker(p)} - killed:
            cli.workers.add(pid)
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)  # polling: a new worker announces itself to nobody here
    return killed


@pytest.mark.timeout(60)
def test_coord_fails_loudly_on_a_worker_crash_loop(tmp_path: Path,
                                                   env: dict[str, str]) -> None:
    cli, _host, _port, _ca = start_coord(env, "--state-dir", str(tmp_path / "state"))
    try:
        killed = kill_workers_until_exit(cli)
        rc = cli.wait(15)
        assert rc == 1, (cli.stdout, cli.stderr)
        assert len(killed) >= 3
        assert "the coordinator failed" in cli.stderr and "crashed" in cli.stderr
        assert "Traceback" not in cli.stderr
        assert wait_gone(killed) == set()
    finally:
        cli.kill()


@pytest.mark.timeout(60)
def test_coord_on_a_busy_port_says_so(tmp_path: Path, env: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        r = run_cli("coord", "--port", str(port), "--state-dir", str(tmp_path / "s"),
                    env=env)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("given", ["--cert", "--key"])
def test_coord_cert_and_key_go_together(tmp_path: Path, env: dict[str, str],
                                        given: str) -> None:
    r = run_cli("coord", given, str(tmp_path / "x.pem"), "--port", "0", env=env)
    assert r.returncode == 2
    assert "--cert and --key" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.timeout(60)
def test_coord_missing_cert_file(tmp_path: Path, env: dict[str, str]) -> None:
    r = run_cli("coord", "--cert", str(tmp_path / "nope.pem"), "--key",
                str(tmp_path / "nope.key"), "--port", "0", env=env)
    assert r.returncode == 1
    assert "nope.pem" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.timeout(90)
def test_coord_with_given_cert_and_client_ca(tmp_path: Path, env: dict[str, str]) -> None:
    """--cert/--key/--client-ca: a self-signed coordinator certificate is
    announced as the CA to trust, and only clients issued by the client CA
    are admitted."""
    d = tmp_path / "pki"
    for args in (("certs", "self-signed", "--name", "localhost", "--out", str(d)),
                 ("certs", "ca", "--name", "clients", "--out", str(d))):
        assert run_cli(*args, env=env).returncode == 0
    cli = Cli("coord", "--port", "0", "--cert", str(d / "localhost.pem"), "--key",
              str(d / "localhost.key"), "--client-ca", str(d / "clients.pem"), env=env)
    try:
        m = cli.expect(LISTENING)
        assert cli.expect(CA_LINE).group(1) == str(d / "localhost.pem")
        cli.expect(re.compile(r"^client certificates: issued by .*clients\.pem$"))
        assert cli.proc.poll() is None
        cli.proc.send_signal(signal.SIGINT)
        assert cli.wait(15) == 0, cli.stderr
        assert int(m.group(2)) > 0
    finally:
        cli.kill()


# -- certs ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_certs_ca_issue_self_signed(tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "pki"
    r = run_cli("certs", "ca", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert str(out / "ca.pem") in r.stdout and str(out / "ca.key") in r.stdout
    r = run_cli("certs", "issue", "--ca", str(out), "--name", "node1.test",
                "--out", str(out / "leaves"), env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("certs", "self-signed", "--name", "alice", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr

    for pem, key in ((out / "ca.pem", out / "ca.key"),
                     (out / "leaves" / "node1.test.pem", out / "leaves" / "node1.test.key"),
                     (out / "alice.pem", out / "alice.key")):
        assert pem.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

    ca_pem = (out / "ca.pem").read_bytes()
    leaf = x509.load_pem_x509_certificate((out / "leaves" / "node1.test.pem").read_bytes())
    verify_certificate(certificate=leaf, chain=[], server_name="node1.test", cadata=ca_pem)
    with pytest.raises(AlertBadCertificate):
        verify_certificate(certificate=leaf, chain=[], server_name="node2.test", cadata=ca_pem)
    alice_pem = (out / "alice.pem").read_bytes()
    alice = x509.load_pem_x509_certificate(alice_pem)
    verify_certificate(certificate=alice, chain=[], server_name="alice", cadata=alice_pem)
    with pytest.raises(AlertBadCertificate):
        verify_certificate(certificate=alice, chain=[], server_name="alice", cadata=ca_pem)


@pytest.mark.timeout(60)
def test_certs_issue_with_named_ca_and_refusals(tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "pki"
    assert run_cli("certs", "ca", "--out", str(out), "--name", "root",
                   env=env).returncode == 0
    # Writing over an existing CA needs --force.
    r = run_cli("certs", "ca", "--out", str(out), "--name", "root", env=env)
    assert r.returncode == 1 and "--force" in r.stderr
    r = run_cli("certs", "issue", "--ca", str(out), "--ca-name", "root", "--name", "bob",
                "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    leaf = x509.load_pem_x509_certificate((out / "bob.pem").read_bytes())
    verify_certificate(certificate=leaf, chain=[], server_name="bob",
                       cadata=(out / "root.pem").read_bytes())
    # Without --ca-name, ca.pem is looked for and is missing: one clear line.
    r = run_cli("certs", "issue", "--ca", str(out), "--name", "carol", "--out", str(out),
                env=env)
    assert r.returncode == 1 and "ca.pem" in r.stderr and "Traceback" not in r.stderr
    # A certificate that is not a CA cannot issue.
    r = run_cli("certs", "issue", "--ca", str(out), "--ca-name", "bob", "--name", "carol",
                "--out", str(out), env=env)
    assert r.returncode == 1 and "CA" in r.stderr and "Traceback" not in r.stderr


# -- demo and bench -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_demo_runs_checks_and_ends(env: dict[str, str]) -> None:
    start = time.monotonic()
    r = run_cli("demo", "--duration", "2", timeout=30, env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert time.monotonic() - start < 30
    out = r.stdout
    assert "summary after" in out
    assert "checks: all 7 streams ok" in out
    assert re.search(r"over the direct channel: [1-9][\d,]* messages", out), out
    for name in ("alice", "bob", "carol"):
        assert re.search(rf"^\s+{name}\s+[\d,]+\s", out, re.M), out
    assert "every member heard everything in one order" in out
    assert re.search(r"tell/ask alice -> bob \(direct\): [\d,]+ tells", out), out
    assert re.search(r"tell/ask bob -> carol \(proxied\)", out), out
    assert "Traceback" not in r.stderr
    m = re.search(r"routing worker pid (\d+), broadcast worker pid (\d+)\)", out)
    assert m, out
    assert wait_gone({int(m.group(1)), int(m.group(2))}) == set()


@pytest.mark.timeout(30)
def test_bench_lists_modules(env: dict[str, str]) -> None:
    r = run_cli("bench", env=env)
    assert r.returncode == 0
    assert "python -m bench." in r.stdout
    bench = Path(__file__).resolve().parent.parent / "bench"
    for module in sorted(bench.glob("[!_]*.py")):
        assert f"python -m bench.{module.stem}" in r.stdout
    unknown = run_cli("bench", "no-such-bench", env=env)
    assert unknown.returncode == 2
    assert "unknown benchmark" in unknown.stderr


@pytest.mark.timeout(30)
def test_usage_errors_exit_2_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coord", "--cert", "c.pem"]) == 2
    assert main(["coord", "--port", "70000"]) == 2
    assert main(["demo", "--duration", "0"]) == 2
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "usage" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_certs_for_long_names(tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "pki"
    # Longer than a common name may be: the subject alternative name carries it.
    name = "n" * 63 + "." + "m" * 40
    r = run_cli("certs", "self-signed", "--name", name, "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    pem = (out / f"{name}.pem").read_bytes()
    verify_certificate(certificate=x509.load_pem_x509_certificate(pem), chain=[],
                       server_name=name, cadata=pem)
    # The longest id does not fit in a file name: a clear refusal, then --file-name.
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    r = run_cli("certs", "self-signed", "--name", longest, "--out", str(out), env=env)
    assert r.returncode == 1 and "--file-name" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("certs", "self-signed", "--name", longest, "--file-name", "longest",
                "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    pem = (out / "longest.pem").read_bytes()
    verify_certificate(certificate=x509.load_pem_x509_certificate(pem), chain=[],
                       server_name=longest, cadata=pem)
    assert stat.S_IMODE((out / "longest.key").stat().st_mode) == 0o600


# -- the state directory ---------------------------------------------------------------


def _coord_refused(env: dict[str, str], state: Path) -> str:
    """Run ``coord --state-dir state``, expecting a refusal: its stderr."""
    cli = Cli("coord", "--port", "0", "--state-dir", str(state), env=env)
    try:
        try:
            rc = cli.wait(STARTUP)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the coordinator started: {cli.stdout}") from None
        assert rc == 1, (cli.stdout, cli.stderr)
        assert "Traceback" not in cli.stderr, cli.stderr
        assert "listening" not in cli.stdout
        return cli.stderr
    finally:
        cli.kill()


def _planted_ca(state: Path) -> bytes:
    """An attacker's CA planted in `state`; the bytes of its key."""
    from conec_actors.certs import new_ca

    new_ca("attacker").write(state / "ca.pem", state / "ca.key")
    return (state / "ca.key").read_bytes()


@pytest.mark.timeout(60)
def test_coord_refuses_a_state_dir_others_can_write(tmp_path: Path,
                                                    env: dict[str, str]) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    planted = _planted_ca(state)
    os.chmod(state, 0o777)
    err = _coord_refused(env, state)
    assert str(state) in err and "writable by others" in err
    assert (state / "ca.key").read_bytes() == planted
    assert not (state / "localhost.pem").exists(), "the planted CA was used"


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_coord_refuses_a_state_dir_owned_by_someone_else(tmp_path: Path,
                                                         env: dict[str, str]) -> None:
    state = tmp_path / "theirs"
    state.mkdir(mode=0o700)
    planted = _planted_ca(state)
    os.chown(state, 65534, 65534)
    err = _coord_refused(env, state)
    assert "owned by uid 65534" in err
    assert (state / "ca.key").read_bytes() == planted
    assert not (state / "localhost.pem").exists(), "the planted CA was used"


@pytest.mark.timeout(60)
def test_dev_certificates_write_through_no_planted_link(tmp_path: Path) -> None:
    # In-process, so that the names derived from the process id are known:
    # links planted at every name the writer might use are left alone.
    from conec_actors.cli import dev_certificates

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"the attacker's file\n")
    for name in ("ca.pem", "ca.key", "localhost.pem", "localhost.key"):
        (state / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    dev_certificates(state)
    assert victim.read_bytes() == b"the attacker's file\n"
    key = state / "ca.key"
    assert not key.is_symlink() and key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_certs_replace_a_link_at_the_key_name_instead_of_following_it(tmp_path: Path
                                                                       ) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.chmod(victim, 0o644)
    out = tmp_path / "pki"
    out.mkdir()
    (out / "alice.key").symlink_to(victim)
    r = run_cli("certs", "self-signed", "--name", "alice", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == b"precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    key = out / "alice.key"
    assert not key.is_symlink() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
