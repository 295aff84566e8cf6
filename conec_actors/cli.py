"""The ``conec-actors`` command line.

Subcommands:

* ``coord``: run a Coordinator until SIGINT/SIGTERM. Without ``--cert``/``--key``
  it keeps a development CA and a certificate for ``localhost`` in a state
  directory and prints where the CA is, so clients can trust it.
* ``certs``: make a CA, a self-signed certificate, or one issued by a CA.
* ``demo``: a Coordinator and a few clients in one process, with live figures.
* ``bench``: run a benchmark from ``bench/`` (source checkouts), or list them.

Everything a script may want to read is printed on stdout as ``label: value``
lines and flushed at once; errors are one line on stderr (exit status 1, or 2
for a usage error), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import importlib
import ipaddress
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from cryptography import x509

from .certs import CertKey, issue, load_pem, new_ca, self_signed
from .config import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_DATAGRAM_SIZE, DEFAULT_PORT, CoordConfig
from .coord import Coord
from .errors import ConecError, CoordinatorFailed

__all__ = ["default_state_dir", "dev_certificates", "main", "run"]

PROG = "conec-actors"

#: Names the development certificate is valid for.
DEV_NAMES = ["localhost", "127.0.0.1", "::1"]
DEV_CA_NAME = "conec-actors development CA"
#: File stems of the development CA and certificate inside the state dir.
DEV_CA_STEM = "ca"
DEV_CERT_STEM = "localhost"

T = TypeVar("T")


class CliError(Exception):
    """A failure to report as one line on stderr (exit status 1)."""


def describe_os_error(exc: OSError) -> str:
    """One line for an `OSError`: its file name (unless the message already
    names it) and its message, without the ``[Errno N]`` prefix."""
    text = exc.strerror or str(exc)
    name = exc.filename
    if name is not None and str(name) not in text:
        return f"{name}: {text}"
    return text


# -- event loop ------------------------------------------------------------------


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop is installed (extra ``fast``), else None
    (the default asyncio loop)."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: what `run` will use."""
    return "asyncio" if loop_factory() is None else "uvloop"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on uvloop if it is installed, else on asyncio."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


# -- development certificates ------------------------------------------------------


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/conec-actors``, else ``~/.local/state/conec-actors``."""
    base = os.environ.get("XDG_STATE_HOME")
    if base and os.path.isabs(base):  # the XDG spec says to ignore relative paths
        return Path(base) / "conec-actors"
    return Path.home() / ".local" / "state" / "conec-actors"


def _pem_paths(directory: Path, stem: str) -> tuple[Path, Path]:
    return directory / f"{stem}.pem", directory / f"{stem}.key"


def _read_pair(cert_path: Path, key_path: Path, what: str) -> CertKey:
    try:
        return CertKey(cert_pem=load_pem(cert_path), key_pem=load_pem(key_path))
    except OSError as exc:
        raise CliError(f"cannot read {what}: {describe_os_error(exc)}") from None


def _issued_by(leaf_pem: bytes, ca_pem: bytes) -> bool:
    """True if `leaf_pem` verifies against `ca_pem` now, for every dev name."""
    from aioquic.tls import verify_certificate

    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        for name in DEV_NAMES:
            verify_certificate(certificate=leaf, chain=[], server_name=name, cadata=ca_pem)
    except Exception:  # any failure means: issue a new one
        return False
    return True


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (two coordinators started
    at once with one state dir must not make two CAs)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _private_dir(path: Path) -> None:
    """Create `path` with mode 0700 if it is missing; refuse one that someone
    else could plant files in (a CA of their own, or a link where the CA's
    key is about to be written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o700)  # whatever the umask
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"state directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise CliError(f"state directory {path} is owned by uid {st.st_uid}, not by you "
                       f"(uid {os.geteuid()}); refusing to keep a CA key there: use "
                       "another --state-dir")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CliError(f"state directory {path} is writable by others (mode "
                       f"{stat.S_IMODE(st.st_mode):o}); refusing to keep a CA key there: "
                       f"chmod go-w it or use another --state-dir")


def dev_certificates(state_dir: Path) -> tuple[Path, Path, Path]:
    """Make (once) a development CA and a certificate issued by it for
    ``localhost``, ``127.0.0.1`` and ``::1`` under `state_dir`, and return
    ``(ca_pem, cert_pem, key_pem)`` paths.

    Files that exist are reused; the certificate is issued again when it no
    longer verifies against the CA (expired, or the CA was replaced). The
    directory is created with mode 0700, and refused if someone else owns it
    or may write to it; keys are written as new files of mode 0600 that are
    renamed into place (`CertKey.write`).

    Raises:
        CliError: if the directory cannot be created or the files cannot be
            read or written, or if the CA exists but is unusable.
    """
    try:
        _private_dir(state_dir)
        with _locked(state_dir):
            ca_cert, ca_key = _pem_paths(state_dir, DEV_CA_STEM)
            cert, key = _pem_paths(state_dir, DEV_CERT_STEM)
            if ca_cert.exists() != ca_key.exists():
                raise CliError(f"{state_dir} holds only half of the development CA "
                               f"({ca_cert.name}, {ca_key.name}); remove the other file "
                               "to make a new CA")
            if not ca_cert.exists():
                new_ca(DEV_CA_NAME).write(ca_cert, ca_key)
            ca = _read_pair(ca_cert, ca_key, "the development CA")
            leaf_ok = cert.exists() and key.exists() and _issued_by(cert.read_bytes(),
                                                                    ca.cert_pem)
            if not leaf_ok:
                try:
                    leaf = issue(ca, DEV_NAMES)
                except (ValueError, TypeError) as exc:
                    raise CliError(f"the development CA in {state_dir} is unusable ({exc}); "
                                   f"remove {ca_cert.name} and {ca_key.name} to make a new "
                                   "one") from None
                leaf.write(cert, key)
    except OSError as exc:
        raise CliError(f"cannot use state directory {state_dir}: "
                       f"{describe_os_error(exc)}") from None
    return ca_cert, cert, key


def _is_self_signed(cert_pem: bytes) -> bool:
    with contextlib.suppress(ValueError):
        cert = x509.load_pem_x509_certificate(cert_pem)
        return cert.issuer == cert.subject
    return False


# -- coord ---------------------------------------------------------------------


def _format_address(host: str, port: int) -> str:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    return f"{host}:{port}"


def _print(out: TextIO, *lines: str) -> None:
    for line in lines:
        print(line, file=out)
    out.flush()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def serve_coordinator(cfg: CoordConfig, *, ca_path: Path | None, cert_path: str | None,
                            out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run a Coordinator until SIGINT or SIGTERM, then close it; returns the
    exit status (0 after a clean shutdown, 1 if it failed or could not start).

    `ca_path` is the CA clients should trust (printed), `cert_path` the
    certificate given on the command line, if any.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        stopper = asyncio.ensure_future(stop.wait())
        starter = asyncio.ensure_future(Coord.start(cfg))
        try:
            await asyncio.wait({starter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not starter.done():  # interrupted while starting
                await _cancel(starter)
                _print(out, f"{PROG}: stopped before the coordinator had started")
                return 0
            try:
                coord = starter.result()
            except OSError as exc:
                where = _format_address(cfg.host, cfg.port)
                _print(err, f"{PROG}: cannot listen on {where}: {describe_os_error(exc)}")
                return 1
            except (ConecError, ValueError) as exc:
                _print(err, f"{PROG}: cannot start the coordinator: {exc}")
                return 1
            return await _serve(coord, stop, stopper, ca_path=ca_path, cert_path=cert_path,
                                out=out, err=err)
        finally:
            await _cancel(stopper)
            if not starter.done():
                await _cancel(starter)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _serve(coord: Coord, stop: asyncio.Event, stopper: asyncio.Future[Any], *,
                 ca_path: Path | None, cert_path: str | None, out: TextIO,
                 err: TextIO) -> int:
    cfg = coord.config
    try:
        host, port = coord.address
        lines = [f"{PROG} coordinator listening on {_format_address(host, port)}"]
        if ca_path is not None:
            lines.append(f"CA certificate: {ca_path}")
        elif cert_path is not None and _is_self_signed(load_pem(cert_path)):
            lines.append(f"CA certificate: {Path(cert_path).resolve()} (self-signed)")
        elif cert_path is not None:
            lines.append(f"certificate: {Path(cert_path).resolve()} "
                         "(clients trust the CA that issued it)")
        if isinstance(cfg.client_ca, bytes):
            lines.append("client certificates: issued by the given client CA")
        elif cfg.client_ca is not None:
            lines.append(f"client certificates: issued by {Path(cfg.client_ca).resolve()}")
        else:
            lines.append("client certificates: self-signed, valid for the client's id")
        lines.append(f"routing workers: {cfg.routing_workers} "
                     f"(pids {', '.join(map(str, coord.worker_pids()))})")
        lines.append(f"event loop: {loop_name()}")
        lines.append("press Ctrl-C to stop")
        _print(out, *lines)
    except BaseException:
        await coord.close()
        raise

    closed = asyncio.ensure_future(coord.wait_closed())
    try:
        await asyncio.wait({closed, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not closed.done():
            _print(out, f"{PROG}: shutting down")
            await coord.close()
        try:
            await closed
        except CoordinatorFailed as exc:
            _print(err, f"{PROG}: the coordinator failed: {exc}")
            return 1
        if not stop.is_set():  # closed on its own without a failure
            _print(err, f"{PROG}: the coordinator stopped unexpectedly")
            return 1
        _print(out, f"{PROG}: stopped")
        return 0
    finally:
        if not closed.done():
            await _cancel(closed)
        await coord.close()


def _cmd_coord(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together: give both or neither")
    ca_path: Path | None = None
    state_dir: Path | None = None
    if args.cert is None:
        state_dir = (Path(args.state_dir) if args.state_dir else default_state_dir()).absolute()
        cert_src, key_src = (str(p) for p in _pem_paths(state_dir, DEV_CERT_STEM))
    else:
        cert_src, key_src = args.cert, args.key
        for p in (cert_src, key_src):
            load_pem(p)  # a clear FileNotFoundError now rather than later
    try:
        cfg = CoordConfig(cert_src, key_src, host=args.host, port=args.port,
                          client_ca=args.client_ca, routing_workers=args.routing_workers,
                          broadcast_workers=args.broadcast_workers,
                          idle_timeout=args.idle_timeout,
                          max_datagram_size=args.max_datagram_size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.client_ca is not None:
        try:
            if not x509.load_pem_x509_certificates(load_pem(args.client_ca)):
                raise ValueError("no certificate in it")
        except ValueError as exc:
            raise CliError(f"--client-ca {args.client_ca}: not a PEM certificate ({exc})"
                           ) from None
    if state_dir is not None:
        ca_path, _, _ = dev_certificates(state_dir)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(serve_coordinator(cfg, ca_path=ca_path,
                                 cert_path=None if args.cert is None else cert_src))


# -- certs ---------------------------------------------------------------------


#: Longest file name most file systems take (NAME_MAX on Linux).
_NAME_MAX = 255


def _file_stem(name: str, option: str = "--name") -> str:
    """A certificate name used as a file stem: no directories, no dot files,
    short enough for ``<stem>.pem`` and ``<stem>.key``."""
    if not name or "/" in name or os.sep in name or name.startswith("."):
        raise CliError(f"{option} {name!r} cannot be used as a file name")
    if len(os.fsencode(name)) + len(".pem") > _NAME_MAX:
        raise CliError(f"{option} is {len(name)} characters, too long for a file name "
                       f"(<name>.pem must fit in {_NAME_MAX}); give a shorter --file-name")
    return name


def _write_certkey(ck: CertKey, out_dir: str, stem: str, force: bool,
                   out: TextIO) -> None:
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {directory}: {describe_os_error(exc)}") from None
    cert_path, key_path = _pem_paths(directory.resolve(), stem)
    if not force:
        for p in (cert_path, key_path):
            if p.exists():
                raise CliError(f"{p} exists; use --force to overwrite it")
    try:
        ck.write(cert_path, key_path)
    except OSError as exc:
        raise CliError(f"cannot write: {describe_os_error(exc)}") from None
    _print(out, f"certificate: {cert_path}", f"private key: {key_path} (mode 0600)")


def _cmd_certs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    names = [args.name, *args.san]
    file_name = getattr(args, "file_name", None)
    stem = _file_stem(args.name) if file_name is None else _file_stem(file_name, "--file-name")
    try:
        if args.certs_command == "ca":
            default_cn = "conec-actors CA" + ("" if args.name == "ca" else f" {args.name}")
            ck = new_ca(args.common_name or default_cn)
        elif args.certs_command == "self-signed":
            ck = self_signed(names)
        else:
            ca_dir = Path(args.ca)
            ca_cert, ca_key = _pem_paths(ca_dir, _file_stem(args.ca_name, "--ca-name"))
            ca = _read_pair(ca_cert, ca_key, "the CA")
            try:
                ck = issue(ca, names)
            except (ValueError, TypeError) as exc:
                raise CliError(f"cannot issue with the CA in {ca_dir}: {exc}") from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _write_certkey(ck, args.out, stem, args.force, sys.stdout)
    return 0


# -- demo and bench ------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .demo import run_demo

    if not args.duration > 0:
        parser.error("--duration must be positive")
    if not 1 <= args.clients <= 64:
        parser.error("--clients must be between 1 and 64")
    return run_demo(args.duration, args.clients)


def bench_modules(bench_dir: Path) -> list[str]:
    """Names of the benchmark modules in `bench_dir` (``python -m bench.<name>``)."""
    if not bench_dir.is_dir():
        return []
    return sorted(p.stem for p in bench_dir.glob("*.py") if not p.stem.startswith("_"))


def _cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # The benchmarks are not part of the installed package: they run from a
    # source checkout, where bench/ sits next to conec_actors/.
    bench_dir = Path(__file__).resolve().parent.parent / "bench"
    modules = bench_modules(bench_dir)
    rest = list(args.args)
    if not rest:
        lines = ["usage: conec-actors bench NAME [ARGS...]  (runs python -m bench.NAME)"]
        if modules:
            lines.append(f"benchmarks in {bench_dir}:")
            lines.extend(f"  python -m bench.{m}" for m in modules)
        else:
            lines.append("no bench/ directory next to the installed package "
                         "(benchmarks run from a source checkout)")
        _print(sys.stdout, *lines)
        return 0
    name, extra = rest[0], rest[1:]
    if name not in modules:
        parser.error(f"unknown benchmark {name!r}; known: {', '.join(modules) or 'none'}")
    import subprocess

    cmd = [sys.executable, "-m", f"bench.{name}", *extra]
    _print(sys.stderr, f"running: {' '.join(cmd)}")
    return subprocess.call(cmd, cwd=bench_dir.parent)


# -- parser --------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {value}")
    return value


Handler = Callable[[argparse.Namespace, argparse.ArgumentParser], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``conec-actors`` (each subparser carries its
    handler and parser as the ``handler`` and ``parser`` defaults)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="COordinated NEtwork Channels: a Coordinator, "
        "certificates, a demo and benchmarks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kw)
        p.set_defaults(handler=handler, parser=p)
        return p

    p = add("coord", _cmd_coord, help="run a Coordinator until interrupted",
            description="Run a Coordinator until SIGINT/SIGTERM. Without --cert/--key "
            "it uses a development CA and a certificate for localhost kept in the "
            "state directory, and prints the CA's path for clients to trust.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on "
                   "(default %(default)s)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help="UDP port (default %(default)s; 0 picks a free one)")
    p.add_argument("--cert", metavar="C", help="certificate (PEM file); needs --key")
    p.add_argument("--key", metavar="K", help="private key (PEM file); needs --cert")
    p.add_argument("--client-ca", metavar="F", help="admit only clients with "
                   "certificates issued by this CA (default: self-signed for their id)")
    p.add_argument("--routing-workers", metavar="R", type=_positive_int, default=1)
    p.add_argument("--broadcast-workers", metavar="B", type=_positive_int, default=1)
    p.add_argument("--state-dir", metavar="DIR", help="where the development CA is kept "
                   "(default $XDG_STATE_HOME/conec-actors, else "
                   "~/.local/state/conec-actors)")
    p.add_argument("--max-datagram-size", metavar="N", type=int,
                   default=DEFAULT_MAX_DATAGRAM_SIZE, help="largest UDP payload sent "
                   "(default %(default)s; above ~1452 only on loopback or known paths)")
    p.add_argument("--idle-timeout", metavar="S", type=float, default=DEFAULT_IDLE_TIMEOUT,
                   help="seconds before a silent connection is dropped "
                   "(default %(default)s)")

    certs = add("certs", _cmd_certs, help="make certificates and keys",
                description="Write <name>.pem and <name>.key (mode 0600) into --out.")
    csub = certs.add_subparsers(dest="certs_command", metavar="KIND", required=True)

    def add_cert(name: str, help_text: str, name_default: str | None) -> \
            argparse.ArgumentParser:
        c = csub.add_parser(name, help=help_text, description=help_text)
        c.set_defaults(handler=_cmd_certs, parser=c, san=[])
        if name_default is None:
            c.add_argument("--name", required=True, help="name the certificate is valid "
                           "for (a client id or a host name); also the file name "
                           "unless --file-name is given")
        else:
            c.add_argument("--name", default=name_default,
                           help="file name (default %(default)s)")
        c.add_argument("--out", metavar="DIR", required=True, help="output directory")
        c.add_argument("--force", action="store_true", help="overwrite existing files")
        return c

    c = add_cert("ca", "make a CA certificate", "ca")
    c.add_argument("--common-name", metavar="CN", help="the CA's subject common name")
    for kind, text in (("self-signed", "make a self-signed certificate"),
                       ("issue", "make a certificate issued by a CA")):
        c = add_cert(kind, text, None)
        c.add_argument("--san", metavar="NAME", action="append", default=[],
                       help="another DNS name or IP address it is valid for "
                       "(repeatable)")
        c.add_argument("--file-name", metavar="STEM", help="write <STEM>.pem and "
                       "<STEM>.key (default: the name; needed for names too long "
                       "to be file names)")
        if kind == "issue":
            c.add_argument("--ca", metavar="DIR", required=True,
                           help="directory holding the CA's <ca-name>.pem and .key")
            c.add_argument("--ca-name", metavar="CANAME", default="ca",
                           help="file name of the CA (default %(default)s)")

    p = add("demo", _cmd_demo, help="a Coordinator and a few clients, with live figures",
            description="Start a Coordinator and a few clients in this process, send "
            "checked traffic between them, and print live figures and a summary.")
    p.add_argument("--duration", metavar="SECONDS", type=float, default=5.0,
                   help="how long to send (default %(default)s)")
    p.add_argument("--clients", metavar="N", type=int, default=3,
                   help="number of clients (default %(default)s)")

    p = add("bench", _cmd_bench, help="run a benchmark from bench/ (or list them)")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``conec-actors`` with `argv` (default ``sys.argv[1:]``); returns the
    exit status (2 for a usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Handler = args.handler
        return handler(args, args.parser)
    except SystemExit as exc:  # argparse: usage error or --help
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except CliError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:
        print(f"{PROG}: {describe_os_error(exc)}", file=sys.stderr, flush=True)
        return 1
    except ConecError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
