"""bench.federation end to end (`--quick`): a real 3-node NATS cluster, two
Coordinators and two clients per session; checks the shape of its JSON lines,
not the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.nats_cluster import need_nats_server

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="nats-server on Linux")


def _rtt(figures: dict[str, Any], runs: int) -> None:
    assert 0 < figures["p50_us"] <= figures["p99_us"]
    assert len(figures["runs"]) == runs


@pytest.mark.timeout(240)
def test_quick_run_prints_rounds_then_ratios() -> None:
    pytest.importorskip("nats", reason="nats-py (the cluster extra) is not installed")
    need_nats_server()
    r = subprocess.run(
        [sys.executable, "-m", "bench.federation", "--quick", "--sizes", "64,65536"],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=230)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_bench.setdefault(str(line["bench"]), []).append(line)
    assert set(by_bench) == {"federation-round", "federation", "federation-ask"}

    rounds = by_bench["federation-round"]
    assert sorted(x["path"] for x in rounds) == ["cross", "same"]
    for x in rounds:
        assert x["round"] == 0
        assert set(x["stream"]) == {"64", "65536"}
        for size, run in x["stream"].items():
            assert run["msgs"] >= 1 and run["msgs_per_s"] > 0 and run["seconds"] > 0
            assert run["mb_per_s"] == pytest.approx(run["msgs_per_s"] * int(size) / 1e6)
        assert x["ask"]["n"] == 30 and x["stream_ping"]["n"] == 30
        # Where the stream went: B's Coordinator forwards what reaches B.
        on = "y" if x["path"] == "cross" else "x"
        assert x["messages_forwarded"][on] > 0

    sizes = by_bench["federation"]
    assert [x["size"] for x in sizes] == [64, 65536]
    for x in sizes:
        assert x["rounds"] == 1 and x["target_ratio"] == ">= 0.5"
        assert x["nats_nodes"] == "spread"
        assert x["ratio_msgs_per_s"] == pytest.approx(
            x["cross"]["msgs_per_s"] / x["same"]["msgs_per_s"])
        assert len(x["same"]["runs"]) == len(x["cross"]["runs"]) == 1

    [ask] = by_bench["federation-ask"]
    assert lines[-1] is ask
    assert ask["target_ratio"] == "<= 2.0" and ask["n"] == 30
    for key in ("same", "cross", "stream_same", "stream_cross"):
        _rtt(ask[key], 1)
    assert ask["ratio_p50"] == pytest.approx(ask["cross"]["p50_us"] / ask["same"]["p50_us"])
    for key in ("ratio_p99", "ratio_stream_p50", "ratio_stream_p99"):
        assert ask[key] > 0
