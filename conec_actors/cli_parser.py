"""The command line's arguments: the ``conec-actors`` parser and its value
checks (what each subcommand does is in `cli`)."""

from __future__ import annotations

import argparse
from typing import Any

from .config import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_DATAGRAM_SIZE, DEFAULT_PORT

PROG = "conec-actors"

#: Where `conec-actors top` looks by default (``coord --metrics 127.0.0.1:9464``).
DEFAULT_METRICS_URL = "http://127.0.0.1:9464"


# -- values --------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {value}")
    return value


LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log lines on stderr as text or one JSON object each "
                   "(default %(default)s)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="least severe level logged (default %(default)s: refusals "
                   "and worker restarts, nothing per message)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``conec-actors``: ``command`` names the
    subcommand (``certs_command`` the kind of certificate), and each
    subparser sets itself as the ``parser`` default (for its usage errors)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="COordinated NEtwork Channels: a Coordinator, "
        "certificates, a demo and benchmarks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kw)
        p.set_defaults(parser=p)
        return p

    p = add("coord", help="run a Coordinator until interrupted",
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
    p.add_argument("--frontends", metavar="N", type=_positive_int, default=1,
                   help="front-end shard processes sharing the UDP port (default "
                   "%(default)s: the front-end runs in this process; N > 1 needs Linux)")
    p.add_argument("--state-dir", metavar="DIR", help="where the development CA is kept "
                   "(default $XDG_STATE_HOME/conec-actors, else "
                   "~/.local/state/conec-actors)")
    p.add_argument("--max-datagram-size", metavar="N", type=int,
                   default=DEFAULT_MAX_DATAGRAM_SIZE, help="largest UDP payload sent "
                   "(default %(default)s; above ~1452 only on loopback or known paths)")
    p.add_argument("--idle-timeout", metavar="S", type=float, default=DEFAULT_IDLE_TIMEOUT,
                   help="seconds before a silent connection is dropped "
                   "(default %(default)s)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics (Prometheus), "
                   "/healthz and /clients over HTTP there (port 0 picks a free one)")
    p.add_argument("--cluster", metavar="URL[,URL...]", help="NATS servers (JetStream on) "
                   "of the cluster whose Coordinators form one federation (needs the "
                   "'cluster' extra: nats-py)")
    p.add_argument("--name", metavar="N", help="this Coordinator's unique name in the "
                   "federation (default: host name:port)")
    p.add_argument("--cluster-ca", metavar="F", help="TLS to NATS: the CA its servers' "
                   "certificates are checked against (this Coordinator's certificate is "
                   "presented)")
    p.add_argument("--cluster-creds", metavar="F", help="a NATS credentials file to "
                   "authenticate to NATS with")
    _add_log_options(p)

    certs = add("certs", help="make certificates and keys",
                description="Write <name>.pem and <name>.key (mode 0600) into --out.")
    csub = certs.add_subparsers(dest="certs_command", metavar="KIND", required=True)

    def add_cert(name: str, help_text: str, name_default: str | None) -> \
            argparse.ArgumentParser:
        c = csub.add_parser(name, help=help_text, description=help_text)
        c.set_defaults(parser=c, san=[])
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

    p = add("demo", help="a Coordinator and a few clients, with live figures",
            description="Start a Coordinator and a few clients in this process, send "
            "checked traffic between them, and print live figures and a summary.")
    p.add_argument("--duration", metavar="SECONDS", type=float, default=5.0,
                   help="how long to send (default %(default)s)")
    p.add_argument("--clients", metavar="N", type=int, default=3,
                   help="number of clients (default %(default)s)")
    p.add_argument("--frontends", metavar="N", type=_positive_int, default=None,
                   help="front-end shard processes of the Coordinator (default 2 on "
                   "Linux, 1 elsewhere)")

    p = add("top", help="a live view of a running Coordinator's metrics",
            description="Show a Coordinator's clients, rates, workers, event loop lag "
            "and refusals, read from its metrics endpoint (coord --metrics), "
            "redrawn every --interval seconds until Ctrl-C (needs the 'top' extra: "
            "pip install 'conec-actors[top]').")
    p.add_argument("--metrics", metavar="URL", default=DEFAULT_METRICS_URL,
                   help="the endpoint (default %(default)s)")
    p.add_argument("--once", action="store_true", help="print one plain-text snapshot "
                   "(rates over one interval) and exit")
    p.add_argument("--interval", metavar="SECONDS", type=_positive_float, default=1.0,
                   help="seconds between scrapes (default %(default)s)")

    p = add("bench", help="run a benchmark from bench/ (or list them)",
            usage=f"{PROG} bench [NAME [ARGS...] [--plot FILE.png]]",
            description="Run python -m bench.NAME ARGS from a source checkout; with "
            "--plot, also draw its ratios against the baselines into FILE.png (needs "
            "the 'plot' extra: pip install 'conec-actors[plot]').")
    p.add_argument("--plot", metavar="FILE.png", help=argparse.SUPPRESS)
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser
