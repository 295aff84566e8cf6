"""Tests for conec_actors.cli_parser: the command line's arguments, parsed
without running anything."""

from __future__ import annotations

import pytest

from conec_actors.cli_parser import build_parser
from conec_actors.config import DEFAULT_PORT


def test_coord_defaults() -> None:
    args = build_parser().parse_args(["coord"])
    assert args.command == "coord"
    assert (args.host, args.port, args.routing_workers) == ("127.0.0.1", DEFAULT_PORT, 1)
    assert args.parser.prog.endswith("coord")  # usage errors name the subcommand


def test_certs_kinds() -> None:
    args = build_parser().parse_args(["certs", "issue", "--name", "a", "--out", "d",
                                      "--ca", "cadir", "--san", "b", "--san", "c"])
    assert (args.command, args.certs_command, args.san, args.ca_name) == (
        "certs", "issue", ["b", "c"], "ca")
    ca = build_parser().parse_args(["certs", "ca", "--out", "d"])
    assert (ca.name, ca.san) == ("ca", [])


@pytest.mark.parametrize("argv", [
    ["coord", "--port", "65536"],
    ["coord", "--port", "x"],
    ["coord", "--routing-workers", "0"],
    ["certs", "self-signed", "--out", "d"],  # --name is required
    [],
])
def test_bad_arguments_are_usage_errors(argv: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_bench_keeps_the_rest_of_the_line() -> None:
    args = build_parser().parse_args(["bench", "proxied", "--rounds", "3"])
    assert args.args == ["proxied", "--rounds", "3"]
