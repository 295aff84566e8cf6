"""The ``conec-actors`` command line.

Subcommands:

* ``coord``: run a Coordinator until SIGINT/SIGTERM. Without ``--cert``/``--key``
  it keeps a development CA and a certificate for ``localhost`` in a state
  directory and prints where the CA is, so clients can trust it.
* ``certs``: make a CA, a self-signed certificate, or one issued by a CA.
* ``demo``: a Coordinator and a few clients in one process, with live figures.
* ``top``: a live view of a running Coordinator's metrics endpoint.
* ``bench``: run a benchmark from ``bench/`` (source checkouts), or list them;
  ``--plot FILE.png`` draws its ratios against the baselines.

Everything a script may want to read is printed on stdout as ``label: value``
lines and flushed at once; errors are one line on stderr (exit status 1, or 2
for a usage error), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from cryptography import x509

from ._oserror import describe_os_error
from ._run import loop_name, on_stop_signals, run
from .cert_files import (
    DEV_CERT_STEM,
    CliError,
    default_state_dir,
    dev_certificates,
    file_stem,
    is_self_signed,
    pem_paths,
    read_pair,
    write_certkey,
)
from .certs import issue, load_pem, new_ca, self_signed
from .cli_parser import PROG, build_parser
from .config import CoordConfig
from .coord import Coord
from .coord.coord import METRICS_ENDPOINT
from .errors import ConecError, CoordinatorFailed
from .logs import LogWriter, setup_logging

__all__ = ["default_state_dir", "dev_certificates", "main", "run"]


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
    stop = asyncio.Event()
    with on_stop_signals(stop.set):
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
                if exc.filename == METRICS_ENDPOINT:
                    where, exc.filename = f"{cfg.metrics} (--metrics)", None
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


async def _serve(coord: Coord, stop: asyncio.Event, stopper: asyncio.Future[Any], *,
                 ca_path: Path | None, cert_path: str | None, out: TextIO,
                 err: TextIO) -> int:
    cfg = coord.config
    try:
        host, port = coord.address
        lines = [f"{PROG} coordinator listening on {_format_address(host, port)}"]
        if ca_path is not None:
            lines.append(f"CA certificate: {ca_path}")
        elif cert_path is not None and is_self_signed(load_pem(cert_path)):
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
                     f"(pids {', '.join(map(str, coord.worker_pids('routing')))})")
        if cfg.frontends > 1:
            lines.append(f"front-end shards: {cfg.frontends} "
                         f"(pids {', '.join(map(str, coord.worker_pids('frontend')))})")
        fed = coord.federation
        if fed is not None:
            lines.append(f"federation: {fed.name!r} (number {fed.cnum}) over "
                         f"{','.join(fed.servers)}")
        if coord.metrics_address is not None:
            mhost, mport = coord.metrics_address
            lines.append(f"metrics: http://{_format_address(mhost, mport)}/metrics "
                         "(also /healthz, /clients)")
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
        cert_src, key_src = (str(p) for p in pem_paths(state_dir, DEV_CERT_STEM))
    else:
        cert_src, key_src = args.cert, args.key
        for p in (cert_src, key_src):
            load_pem(p)  # a clear FileNotFoundError now rather than later
    try:
        cfg = CoordConfig(cert_src, key_src, host=args.host, port=args.port,
                          client_ca=args.client_ca, routing_workers=args.routing_workers,
                          broadcast_workers=args.broadcast_workers,
                          frontends=args.frontends, idle_timeout=args.idle_timeout,
                          max_datagram_size=args.max_datagram_size, metrics=args.metrics,
                          cluster=args.cluster, name=args.name, cluster_ca=args.cluster_ca,
                          cluster_creds=args.cluster_creds)
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
    setup_logging(args.log_format, args.log_level)
    # In JSON, the messages about the coordinator's end are JSON lines too.
    err = sys.stderr if args.log_format == "text" else \
        cast(TextIO, LogWriter(logging.getLogger("conec_actors.cli")))  # print() needs write()
    return run(serve_coordinator(cfg, ca_path=ca_path, err=err,
                                 cert_path=None if args.cert is None else cert_src))


# -- certs ---------------------------------------------------------------------


def _cmd_certs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    names = [args.name, *args.san]
    file_name = getattr(args, "file_name", None)
    stem = file_stem(args.name) if file_name is None else file_stem(file_name, "--file-name")
    try:
        if args.certs_command == "ca":
            default_cn = "conec-actors CA" + ("" if args.name == "ca" else f" {args.name}")
            ck = new_ca(args.common_name or default_cn)
        elif args.certs_command == "self-signed":
            ck = self_signed(names)
        else:
            ca_dir = Path(args.ca)
            ca_cert, ca_key = pem_paths(ca_dir, file_stem(args.ca_name, "--ca-name"))
            ca = read_pair(ca_cert, ca_key, "the CA")
            try:
                ck = issue(ca, names)
            except (ValueError, TypeError) as exc:
                raise CliError(f"cannot issue with the CA in {ca_dir}: {exc}") from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    cert_path, key_path = write_certkey(ck, args.out, stem, args.force)
    _print(sys.stdout, f"certificate: {cert_path}", f"private key: {key_path} (mode 0600)")
    return 0


# -- top -----------------------------------------------------------------------------


def _cmd_top(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import top

    try:
        if args.once:
            top.run_once(args.metrics, args.interval, sys.stdout)
            return 0
        try:
            import rich  # noqa: F401
        except ImportError:
            raise CliError("the live view needs rich: pip install 'conec-actors[top]' "
                           "(or use --once)") from None
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the live view ends
            top.run_live(args.metrics, args.interval)
        return 0
    except top.TopError as exc:
        raise CliError(str(exc)) from None


# -- demo and bench ------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .demo import run_demo

    if not args.duration > 0:
        parser.error("--duration must be positive")
    if not 1 <= args.clients <= 64:
        parser.error("--clients must be between 1 and 64")
    return run_demo(args.duration, args.clients, args.frontends)


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
    try:
        rest, plot_path = split_plot(list(args.args), args.plot)
    except ValueError as exc:
        parser.error(str(exc))
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
    if plot_path is None:
        _print(sys.stderr, f"running: {' '.join(cmd)}")
        return subprocess.call(cmd, cwd=bench_dir.parent)
    from . import plot

    # Checked before a benchmark of minutes, not after it.
    try:
        plot.require_matplotlib()
    except plot.PlotUnavailable as exc:
        raise CliError(str(exc)) from None
    if not Path(plot_path).absolute().parent.is_dir():
        raise CliError(f"--plot {plot_path}: no such directory")
    _print(sys.stderr, f"running: {' '.join(cmd)}")
    out: list[str] = []
    with subprocess.Popen(cmd, cwd=bench_dir.parent, stdout=subprocess.PIPE, text=True,
                          bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # still printed as they come
            sys.stdout.write(line)
            sys.stdout.flush()
            out.append(line)
    if proc.returncode != 0:
        _print(sys.stderr, f"{PROG}: no plot: the benchmark exited with {proc.returncode}")
        return proc.returncode
    bars = [r for line in plot.json_lines(out) for r in plot.ratios(line)]
    if not bars:
        raise CliError(f"no plot: bench.{name} printed no ratio against a baseline")
    plot.draw(bars, " ".join([PROG, "bench", name, *extra]), plot_path)
    _print(sys.stderr, f"plot: {Path(plot_path).resolve()}")
    return 0


def split_plot(rest: list[str], plot: str | None) -> tuple[list[str], str | None]:
    """`rest` (a benchmark and its arguments) without ``--plot FILE`` /
    ``--plot=FILE``, and that FILE (else `plot`, given before the name)."""
    out: list[str] = []
    it = iter(rest)
    for arg in it:
        if arg == "--plot":
            plot = next(it, None)
            if plot is None or plot.startswith("-"):
                raise ValueError("--plot needs a file name (FILE.png)")
        elif arg.startswith("--plot="):
            plot = arg.removeprefix("--plot=")
        else:
            out.append(arg)
    if plot is not None and not plot:
        raise ValueError("--plot needs a file name (FILE.png)")
    return out, plot


_COMMANDS: dict[str, Callable[[argparse.Namespace, argparse.ArgumentParser], int]] = {
    "coord": _cmd_coord, "certs": _cmd_certs, "demo": _cmd_demo, "bench": _cmd_bench,
    "top": _cmd_top,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``conec-actors`` with `argv` (default ``sys.argv[1:]``); returns the
    exit status (2 for a usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return _COMMANDS[args.command](args, args.parser)
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
