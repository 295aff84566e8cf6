"""Tests for conec_actors.logs: the JSON formatter and the rate-limit filter
fed records directly (time injected), and `conec-actors coord --log-format
json` as a real subprocess that refuses a client."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from conec_actors import Client, ClientConfig, DuplicateId
from conec_actors.cli_parser import build_parser
from conec_actors.logs import (
    EXTRA_FIELDS,
    JsonFormatter,
    LogWriter,
    RateLimitFilter,
    TextFormatter,
    setup_logging,
)
from tests.test_cli import env, kill_workers_until_exit, start_coord, wait_gone

__all__ = ["env"]  # the fixture, imported for the subprocess test

WHEN = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def record(msg: str = "refused %s", *args: object, level: int = logging.WARNING,
           name: str = "conec_actors.coord.frontend", exc: bool = False,
           **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)
    rec.created = WHEN
    rec.__dict__.update(extra)
    return rec


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- JsonFormatter ---------------------------------------------------------------------


def test_json_line_has_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("refused %s", "alice"))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.250Z", "level": "WARNING",
        "logger": "conec_actors.coord.frontend", "message": "refused alice"}


def test_json_line_carries_the_extra_fields_present() -> None:
    rec = record("refused %s", "alice", reason="duplicate_id",
                 address=("127.0.0.1", 4433), client_id="alice", other="not carried")
    out = json.loads(JsonFormatter().format(rec))
    assert out["reason"] == "duplicate_id" and out["client_id"] == "alice"
    assert out["address"] == "127.0.0.1:4433"  # as /clients writes addresses
    assert "other" not in out and "kind" not in out and "pid" not in out
    full = record(**{k: 7 for k in EXTRA_FIELDS})
    assert {k: json.loads(JsonFormatter().format(full))[k] for k in EXTRA_FIELDS} == \
        dict.fromkeys(EXTRA_FIELDS, 7)


def test_json_ipv6_address_and_odd_values() -> None:
    out = json.loads(JsonFormatter().format(
        record(address=("::1", 4433, 0, 0), kind=b"routing", pid=None)))
    assert out["address"] == "[::1]:4433"
    assert out["kind"] == "routing"
    assert "pid" not in out  # None: absent


def test_json_exception_stays_on_one_line() -> None:
    line = JsonFormatter().format(record("worker failed", level=logging.ERROR, exc=True))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "ERROR"
    assert "Traceback" in out["exception"] and "RuntimeError: boom" in out["exception"]


def test_text_format_says_how_many_were_suppressed() -> None:
    fmt = TextFormatter()
    assert fmt.format(record("refused %s", "a")).endswith(
        "WARNING conec_actors.coord.frontend: refused a")
    assert fmt.format(record("refused %s", "a", suppressed=3)).endswith(
        "refused a (3 similar suppressed)")
    assert json.loads(JsonFormatter().format(record(suppressed=3)))["suppressed"] == 3


# -- RateLimitFilter -------------------------------------------------------------------


def test_repeats_within_the_window_are_dropped_and_then_counted() -> None:
    clock = Clock()
    f = RateLimitFilter(10.0, clock=clock)
    assert f.filter(record("refused %s", "a"))
    for i in range(5):
        clock.now += 1.0
        assert not f.filter(record("refused %s", f"b{i}"))  # same template
    clock.now += 5.0  # 10 s after the first
    passed = record("refused %s", "c")
    assert f.filter(passed)
    assert passed.__dict__["suppressed"] == 5
    clock.now += 1.0
    assert not f.filter(record("refused %s", "d"))  # a new window began at "c"
    clock.now += 10.0
    again = record("refused %s", "e")
    assert f.filter(again) and again.__dict__["suppressed"] == 1


def test_a_warning_after_a_quiet_window_carries_no_count() -> None:
    clock = Clock()
    f = RateLimitFilter(10.0, clock=clock)
    assert f.filter(record())
    clock.now += 30.0
    later = record()
    assert f.filter(later) and "suppressed" not in later.__dict__


def test_templates_loggers_and_levels_are_limited_separately() -> None:
    f = RateLimitFilter(10.0, clock=Clock())
    assert f.filter(record("refused %s", "a"))
    assert f.filter(record("dropped %s", "a"))
    assert f.filter(record("refused %s", "a", name="conec_actors.transport"))
    assert f.filter(record("refused %s", "a", level=logging.ERROR))
    assert not f.filter(record("refused %s", "a", level=logging.ERROR))


def test_records_below_its_level_always_pass() -> None:
    f = RateLimitFilter(10.0, clock=Clock())
    assert all(f.filter(record("closing %s", i, level=logging.INFO)) for i in range(5))
    g = RateLimitFilter(10.0, level=logging.INFO, clock=Clock())
    assert g.filter(record(level=logging.INFO))
    assert not g.filter(record(level=logging.INFO))


def test_distinct_preformatted_messages_do_not_grow_it_forever() -> None:
    clock = Clock()
    f = RateLimitFilter(1.0, clock=clock)
    for i in range(5000):
        clock.now += 0.01
        assert f.filter(record(f"message {i}"))
    assert len(f._seen) <= 1024  # what expired was forgotten


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        RateLimitFilter(0.0)


# -- setup_logging -------------------------------------------------------------------


@pytest.fixture
def restore_root() -> Any:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("quic").level)
    yield
    logging.captureWarnings(False)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("quic").setLevel(saved[2])


def test_setup_logging_json_rate_limits_through_the_handler(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging("json", "info", stream=out)
    log = logging.getLogger("conec_actors.test_logs")
    log.debug("not shown")
    for i in range(3):
        log.warning("refused a ZeroMQ peer at %s", f"peer{i}", extra={"address": "x"})
    log.info("closing %s", "a")
    logging.getLogger("quic").info("per-connection chatter")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a Python warning", UserWarning, stacklevel=1)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["level"], d["message"]) for d in lines[:2]] == [
        ("WARNING", "refused a ZeroMQ peer at peer0"), ("INFO", "closing a")]
    assert lines[0]["address"] == "x"
    assert lines[2]["logger"] == "py.warnings" and "a Python warning" in lines[2]["message"]
    assert len(lines) == 3


def test_setup_logging_text_and_bad_format(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging("text", logging.WARNING, stream=out)
    logging.getLogger("conec_actors.x").warning("hello %d", 1)
    assert re.fullmatch(r"\S+ \S+ WARNING conec_actors\.x: hello 1\n", out.getvalue())
    with pytest.raises(ValueError, match="log format"):
        setup_logging("xml", stream=out)  # type: ignore[arg-type]


def test_log_writer_logs_each_line(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging("json", stream=out)
    w = LogWriter(logging.getLogger("conec_actors.cli"))
    print("conec-actors: the coordinator failed: 100% x", file=w)
    w.write("two\nlines\nand a ")
    w.write("rest")
    w.flush()
    got = [(d["level"], d["logger"], d["message"])
           for d in map(json.loads, out.getvalue().splitlines())]
    assert got == [("ERROR", "conec_actors.cli", "conec-actors: the coordinator failed: 100% x"),
                   ("ERROR", "conec_actors.cli", "two"), ("ERROR", "conec_actors.cli", "lines"),
                   ("ERROR", "conec_actors.cli", "and a rest")]


def test_coord_log_options() -> None:
    args = build_parser().parse_args(["coord"])
    assert (args.log_format, args.log_level) == ("text", "info")
    args = build_parser().parse_args(["coord", "--log-format", "json", "--log-level",
                                      "debug"])
    assert (args.log_format, args.log_level) == ("json", "debug")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["coord", "--log-format", "xml"])


# -- a real Coordinator --------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_coord_json_logs_a_refusal_as_json(tmp_path: Path,
                                                 env: dict[str, str]) -> None:
    cli, host, port, ca = await asyncio.to_thread(
        start_coord, env, "--state-dir", str(tmp_path / "state"), "--log-format", "json")
    try:
        cfg = ClientConfig("twin", "localhost", addr=(host, port), ca=str(ca))
        first = await Client.connect(cfg)
        try:
            with pytest.raises(DuplicateId):
                await Client.connect(cfg)
            for _ in range(300):  # until the refusal's line is on stderr
                if any("twin" in line or "already connected" in line for line in cli.err):
                    break
                await asyncio.sleep(0.05)
        finally:
            await first.close()
        cli.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(cli.wait, 15) == 0, cli.stderr
    finally:
        await asyncio.to_thread(cli.kill)
    assert cli.err, "nothing was logged"
    lines = [json.loads(line) for line in cli.err]  # every line is one JSON object
    for d in lines:
        assert {"time", "level", "logger", "message"} <= d.keys(), d
        assert d["time"].endswith("Z")
    refusals = [d for d in lines if d.get("client_id") == "twin"
                or "already connected" in d["message"]]
    assert refusals, lines
    assert all(d["logger"].startswith("conec_actors.coord") for d in refusals)


@pytest.mark.timeout(90)
def test_coord_json_crash_loop_every_line_json_restarts_rate_limited(
        tmp_path: Path, env: dict[str, str]) -> None:
    """Workers killed three times: the restart warnings repeat within the
    window, so one is logged; the coordinator's failure is a JSON line too."""
    cli, _host, _port, _ca = start_coord(env, "--state-dir", str(tmp_path / "state"),
                                         "--log-format", "json")
    try:
        killed = kill_workers_until_exit(cli)
        assert cli.wait(15) == 1, (cli.stdout, cli.stderr)
        assert len(killed) >= 3
        assert wait_gone(killed) == set()
    finally:
        cli.kill()
    lines = [json.loads(line) for line in cli.err]  # every line is one JSON object
    restarts = [d for d in lines if "restarting" in d["message"]]
    assert len(restarts) == 1 and restarts[0]["level"] == "WARNING", lines
    failed = [d for d in lines if "the coordinator failed" in d["message"]]
    assert len(failed) == 1 and failed[0]["level"] == "ERROR", lines
    assert "crashed" in failed[0]["message"]
