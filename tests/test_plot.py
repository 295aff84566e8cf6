"""Tests for conec_actors.plot and ``conec-actors bench NAME --plot FILE.png``:
ratio extraction over real benchmark lines (tests/bench_lines.jsonl, captured
from ``python -m bench.proxied --rounds 1 --duration 0.5 --ping-n 50``,
``bench.direct`` likewise, ``bench.broadcast --members 4 --rounds 1 --messages
2000 --no-nats``, ``bench.actors --rounds 1 --duration 0.5 --ask-n 50
--no-nats --group-rounds 1``, ``bench.groups --rounds 1 --n 500 --ask-n 50``
and ``bench.stall --seconds 1``), drawing, and the command end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conec_actors.cli import main, split_plot
from conec_actors.plot import (
    PlotUnavailable,
    Ratio,
    draw,
    json_lines,
    ratios,
    require_matplotlib,
)

LINES = Path(__file__).with_name("bench_lines.jsonl")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def lines(bench: str) -> list[dict[str, Any]]:
    found = [d for d in json_lines(LINES.read_text().splitlines()) if d["bench"] == bench]
    assert found, bench
    return found


def one(bench: str, **match: Any) -> dict[str, Any]:
    found = [d for d in lines(bench) if all(d.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (bench, match)
    return found[0]


# -- extraction ----------------------------------------------------------------------


def test_proxied_throughput_line_gives_one_ratio_with_its_target() -> None:
    line = one("proxied", size=1024)
    assert ratios(line) == [Ratio("proxied 1024 B", "msgs/s", "naive relay",
                                  line["ratio_msgs_per_s"], 1.0, True)]
    # ratio_mb_per_s is left out: the same messages, so the same ratio.


def test_ping_line_targets_its_p50_not_its_p99() -> None:
    line = one("proxied-ping")
    p50, p99 = ratios(line)
    assert (p50.metric, p50.value, p50.target, p50.higher_is_better) == (
        "p50", line["ratio_p50"], 1.2, False)
    assert (p99.metric, p99.target, p99.higher_is_better) == ("p99", None, False)
    assert p50.baseline == p99.baseline == "naive relay"


def test_direct_lines_name_their_baseline_and_target() -> None:
    got = [r for d in lines("direct") for r in ratios(d)]
    assert [(r.label, r.target) for r in got] == [
        ("direct 64 B", 0.9), ("direct 1024 B", 0.9), ("direct 65536 B", 0.9)]
    assert {r.baseline for r in got} == {"plain aioquic"}


def test_an_explicit_target_key_and_a_target_that_is_no_number() -> None:
    ask = one("actors-ask", path="proxied")
    assert "target_ratio_p50" in ask and "target_ratio" not in ask
    by_metric = {r.metric: r for r in ratios(ask)}
    assert by_metric["p50"].target == 1.2 and by_metric["p99"].target is None
    assert by_metric["p50"].label == "actors-ask proxied 64 B"
    assert by_metric["p50"].baseline == ask["baseline_impl"]
    assert "p50_to_stream_ping" not in by_metric  # context, not the baseline
    tell = one("actors-tell", path="direct", size=64)
    assert tell["target_ratio"].startswith("none")
    [r] = ratios(tell)
    assert (r.metric, r.target, r.higher_is_better) == ("msgs/s", None, True)


def test_broadcast_targets_deliveries_and_knows_costs() -> None:
    line = one("broadcast")
    by_metric = {r.metric: r for r in ratios(line)}
    assert set(by_metric) == {"deliveries/s", "p50", "p99", "cpu/delivery"}
    assert by_metric["deliveries/s"].target == 1.0
    assert by_metric["deliveries/s"].higher_is_better
    assert not by_metric["cpu/delivery"].higher_is_better
    assert by_metric["p50"].target is None
    assert by_metric["p50"].label == "broadcast 4 members 64 B"


def test_groups_summary_only_with_named_ratios() -> None:
    assert ratios(lines("groups-round")[0]) == []
    summary = [d for d in lines("groups") if "tell_group_ratio" in d][-1]
    by_metric = {r.metric: r for r in ratios(summary)}
    assert by_metric["tell_group msgs/s"].higher_is_better
    assert by_metric["tell_group msgs/s"].baseline == "tell to one peer"
    assert not by_metric["ask_group p50"].higher_is_better


def test_a_line_without_ratios_gives_none() -> None:
    assert ratios(one("stall")) == []
    assert ratios({"bench": "x", "ratio_ask_p50_to_nats": {"direct": 1.0}}) == []


def test_meets_in_both_directions() -> None:
    assert Ratio("a", "msgs/s", "b", 0.95, 0.9, True).meets is True
    assert Ratio("a", "msgs/s", "b", 0.85, 0.9, True).meets is False
    assert Ratio("a", "p50", "b", 1.3, 1.2, False).meets is False
    assert Ratio("a", "p50", "b", 1.2, 1.2, False).meets is True
    assert Ratio("a", "p50", "b", 9.0, None, False).meets is None


def test_json_lines_skips_what_is_not_a_json_object() -> None:
    got = json_lines(["bench.proxied: round 1/3", '{"bench": "x"}', "[1, 2]", "{broken", ""])
    assert got == [{"bench": "x"}]


# -- drawing -------------------------------------------------------------------------


def needs_matplotlib() -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the 'plot' extra (matplotlib)")


def test_draw_writes_a_png(tmp_path: Path) -> None:
    needs_matplotlib()
    bars = [r for d in json_lines(LINES.read_text().splitlines()) for r in ratios(d)]
    out = tmp_path / "all.png"
    draw(bars, "conec-actors bench everything", out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    height, width = matplotlib.image.imread(str(out)).shape[:2]
    assert width > height > 400  # two panels, many bars side by side
    with pytest.raises(ValueError, match="no ratio"):
        draw([], "t", tmp_path / "none.png")


def test_without_matplotlib_the_error_names_the_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(PlotUnavailable, match=r"conec-actors\[plot\]"):
        require_matplotlib()
    # The CLI says so before running the benchmark.
    assert main(["bench", "proxied", "--rounds", "1", "--plot", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "conec-actors: --plot needs matplotlib: pip install 'conec-actors[plot]'"]


# -- the command line ----------------------------------------------------------------


def test_split_plot() -> None:
    assert split_plot(["proxied", "--rounds", "3", "--plot", "p.png"], None) == (
        ["proxied", "--rounds", "3"], "p.png")
    assert split_plot(["proxied", "--plot=p.png", "--rounds", "3"], None) == (
        ["proxied", "--rounds", "3"], "p.png")
    assert split_plot(["proxied"], "given-before.png") == (["proxied"], "given-before.png")
    assert split_plot(["proxied"], None) == (["proxied"], None)
    for bad in (["proxied", "--plot"], ["proxied", "--plot", "--rounds"], ["x", "--plot="]):
        with pytest.raises(ValueError, match="--plot needs a file name"):
            split_plot(bad, None)


@pytest.mark.timeout(240)
def test_bench_plot_end_to_end(tmp_path: Path) -> None:
    needs_matplotlib()
    out = tmp_path / "proxied.png"
    r = subprocess.run(
        [sys.executable, "-m", "conec_actors.cli", "bench", "proxied", "--rounds", "1",
         "--duration", "0.3", "--sizes", "64", "--ping-n", "20", "--plot", str(out)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=230)
    assert r.returncode == 0, r.stderr
    printed = [json.loads(line) for line in r.stdout.splitlines()]  # still printed
    assert [d["bench"] for d in printed] == ["proxied", "proxied-ping"]
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert f"plot: {out}" in r.stderr.splitlines()


def test_bench_plot_into_a_missing_directory_fails_before_running(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs_matplotlib()
    where = tmp_path / "nowhere" / "p.png"
    assert main(["bench", "proxied", "--plot", str(where)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"conec-actors: --plot {where}: no such directory"]
    assert captured.out == ""  # the benchmark did not run


@pytest.mark.timeout(60)
def test_bench_plot_needs_a_file_name() -> None:
    r = subprocess.run([sys.executable, "-m", "conec_actors.cli", "bench", "proxied",
                        "--plot"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=50)
    assert r.returncode == 2 and "--plot needs a file name" in r.stderr
