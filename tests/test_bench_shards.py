"""bench.shards end to end (a short run at N=1, no quota) and bench._cgroup's CPU quota
groups (root and a cgroup cpu controller needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import _cgroup

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


@pytest.mark.timeout(180)
def test_smoke_run_at_one_frontend() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bench.shards", "--rounds", "1", "--duration", "0.3",
         "--sizes", "64", "--frontends", "1", "--skip-quota", "--ping-n", "20"],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_bench.setdefault(str(line["bench"]), []).append(line)

    [cpu] = by_bench["shards-cpu-round"]
    assert cpu["frontends"] == 1 and cpu["size"] == 64 and cpu["pairs"] == 8
    assert cpu["placement"] == [[0, 0]] * 8 and cpu["cross_pairs"] == 0
    for key in ("cpu_us_per_msg", "cpu_us_per_delivered", "msgs_per_s", "forwarded_per_s"):
        assert isinstance(cpu[key], float) and cpu[key] > 0, key
    assert len(cpu["shard_cpu"]) == 1

    assert by_bench["shards-quota"] == [{"bench": "shards-quota", "skipped": "--skip-quota"}]
    [same] = by_bench["shards-cross-round"]
    assert same["path"] == "same" and same["shards"] == [0, 0] and same["ping_n"] == 20
    assert 0 < same["p50_us"] <= same["p99_us"]
    assert "shards-cross" in by_bench  # cross-shard: needs frontends >= 2

    [summary] = by_bench["shards"]
    assert lines[-1] is summary
    assert summary["cpu_us_per_msg"] == {"64": {"1": cpu["cpu_us_per_msg"]}}
    assert summary["ratio_cpu_per_msg_64_n4"] is None
    assert summary["target_ratio_cpu_per_msg_64_n4"] == "<= 1.3"
    assert summary["ok_cpu_per_msg_64_n4"] is None and summary["ok"] is None
    assert summary["target_ratio_quota_msgs_per_s_n3"] == ">= 2.1"
    assert summary["same_msgs_per_s"] == same["msgs_per_s"]
    assert summary["ratio_cross_msgs_per_s"] is None
    assert any("--skip-quota" in s for s in summary["skipped"])


needs_cgroup = pytest.mark.skipif(_cgroup.unavailable() is not None,
                                  reason=_cgroup.unavailable() or "")


def _cpu_group(pid: int) -> str:
    """*pid*'s group in the hierarchy holding the cpu controller."""
    return _cgroup._own_group(pid, _cgroup.version() or 0)


@needs_cgroup
def test_cpu_quota_holds_a_process_and_puts_it_back() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        before = _cpu_group(sleeper.pid)
        with _cgroup.CpuQuota(0.25, label="conec-test") as q:
            group = q.limit(sleeper.pid, "sleeper")
            assert group.parent == q.parent and group.is_dir()
            assert _cgroup.read_quota(group) == pytest.approx(0.25)
            assert _cgroup.group_pids(group) == [sleeper.pid]
            assert _cpu_group(sleeper.pid) == "/" + str(group.relative_to(q.root))
            with pytest.raises(ValueError, match="exists already"):
                q.limit(sleeper.pid, "sleeper")
        assert not q.parent.exists()
        assert _cpu_group(sleeper.pid) == before
    finally:
        sleeper.kill()
        sleeper.wait()


@needs_cgroup
def test_cpu_quota_cleans_up_on_error_and_after_its_process_exited() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    with pytest.raises(KeyboardInterrupt), _cgroup.CpuQuota(0.2, label="conec-test") as q:
        q.limit(sleeper.pid, "gone")
        sleeper.kill()
        sleeper.wait()
        raise KeyboardInterrupt
    assert not q.parent.exists()


@needs_cgroup
def test_cpu_quota_refuses_a_process_that_does_not_exist() -> None:
    with _cgroup.CpuQuota(0.2, label="conec-test") as q, \
            pytest.raises(_cgroup.CgroupError, match="cannot hold pid"):
        q.limit(2**22 + 12345, "nobody")
    assert not q.parent.exists()
