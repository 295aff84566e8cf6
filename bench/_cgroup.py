"""CPU quotas for benchmark processes, through the cgroup ``cpu`` controller.

``bench.shards`` holds every front-end shard to a fraction of a CPU (0.2 by default) to
emulate small cores on a 2-core machine. :class:`CpuQuota` makes one parent group per
run and one child group per limited process under it:

* cgroup v1, when the ``cpu`` controller is mounted at ``/sys/fs/cgroup/cpu``:
  ``cpu.cfs_period_us`` and ``cpu.cfs_quota_us`` (``quota * period``);
* else cgroup v2 at ``/sys/fs/cgroup`` with ``cpu`` among its controllers: ``+cpu`` in
  the parents' ``cgroup.subtree_control``, then ``cpu.max`` (``"QUOTA PERIOD"``).

The process goes in by writing its pid to the group's ``cgroup.procs`` (all its threads
move with it). :meth:`CpuQuota.close` (also on ``with`` exit, error or Ctrl-C) moves
every process still in a group back to the group the limited process came from and
removes the directories. Needs root: :func:`unavailable` says why it cannot run here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")

#: Scheduling period of every group (microseconds): 100 ms, the kernel's default.
PERIOD_US = 100_000

#: How long :meth:`CpuQuota.close` retries removing a group whose processes are exiting.
RMDIR_WAIT_S = 2.0


class CgroupError(RuntimeError):
    """A group could not be made or a process could not be moved."""


def version() -> int | None:
    """1 or 2: which cgroup hierarchy carries the ``cpu`` controller here (None: neither)."""
    if (V1_ROOT / "cpu.cfs_quota_us").exists():
        return 1
    controllers = V2_ROOT / "cgroup.controllers"
    with contextlib.suppress(OSError):
        if "cpu" in controllers.read_text().split():
            return 2
    return None


def unavailable() -> str | None:
    """Why CPU quotas cannot be set here, or None if they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "CPU quotas need root (cgroup directories are root's)"
    if version() is None:
        return (f"no cgroup cpu controller: neither v1 at {V1_ROOT} nor v2 with 'cpu' in "
                f"{V2_ROOT / 'cgroup.controllers'}")
    return None


def _own_group(pid: int, ver: int) -> str:
    """The path (``/...``, relative to the hierarchy's root) of *pid*'s group."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        num, controllers, path = line.split(":", 2)
        if ver == 2 and num == "0" and controllers == "":
            return path
        if ver == 1 and "cpu" in controllers.split(","):
            return path
    return "/"


def read_quota(group: Path) -> float:
    """The CPU share (quota / period) a group is held to; ``inf`` for no limit."""
    if (group / "cpu.cfs_quota_us").exists():
        quota = int((group / "cpu.cfs_quota_us").read_text())
        period = int((group / "cpu.cfs_period_us").read_text())
    else:
        text_quota, text_period = (group / "cpu.max").read_text().split()
        if text_quota == "max":
            return float("inf")
        quota, period = int(text_quota), int(text_period)
    return float("inf") if quota < 0 else quota / period


def group_pids(group: Path) -> list[int]:
    """The processes in *group* now."""
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except OSError:
        return []


class CpuQuota:
    """Limit processes to *quota* CPUs each, one cgroup per process, for a ``with`` block.

    ``with CpuQuota(0.2) as q: q.limit(pid, "shard0")``. Raises :class:`CgroupError`
    (with :func:`unavailable`'s reason when that is the cause) if a group cannot be made.
    """

    def __init__(self, quota: float, *, label: str = "conec-bench",
                 period_us: int = PERIOD_US) -> None:
        if quota <= 0:
            raise ValueError(f"quota must be > 0 CPUs, got {quota}")
        why = unavailable()
        if why is not None:
            raise CgroupError(why)
        ver = version()
        assert ver is not None
        self.version: int = ver
        self.quota = quota
        self.period_us = period_us
        self.root = V1_ROOT if ver == 1 else V2_ROOT
        #: The per-run parent group (unique per benchmark process).
        self.parent = self.root / f"{label}-{os.getpid()}"
        #: name -> (group directory, the group its process came from).
        self.groups: dict[str, tuple[Path, Path]] = {}

    def __enter__(self) -> CpuQuota:
        try:
            self.parent.mkdir()
            if self.version == 2:
                self._enable_cpu(self.root)
                self._enable_cpu(self.parent)
        except OSError as e:
            self.close()
            raise CgroupError(f"cannot make {self.parent}: {e}") from e
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _enable_cpu(group: Path) -> None:
        control = group / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            control.write_text("+cpu")

    def limit(self, pid: int, name: str) -> Path:
        """Make group *name* holding ``quota`` CPUs and move process *pid* into it."""
        if name in self.groups:
            raise ValueError(f"group {name!r} exists already")
        group = self.parent / name
        try:
            came_from = self.root / _own_group(pid, self.version).lstrip("/")
            group.mkdir()
            self.groups[name] = (group, came_from)
            quota_us = max(1000, round(self.quota * self.period_us))
            if self.version == 1:
                (group / "cpu.cfs_period_us").write_text(str(self.period_us))
                (group / "cpu.cfs_quota_us").write_text(str(quota_us))
            else:
                (group / "cpu.max").write_text(f"{quota_us} {self.period_us}")
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as e:
            raise CgroupError(f"cannot hold pid {pid} in {group}: {e}") from e
        return group

    def close(self) -> None:
        """Move every process back where it came from and remove the groups.

        Never raises for a process that has exited or a directory already gone.
        """
        for group, came_from in self.groups.values():
            for pid in group_pids(group):  # also what the process forked since
                # ProcessLookupError: it exited meanwhile.
                with contextlib.suppress(OSError):
                    (came_from / "cgroup.procs").write_text(str(pid))
        for group, _ in self.groups.values():
            _rmdir(group)
        self.groups.clear()
        _rmdir(self.parent)


def _rmdir(path: Path) -> None:
    """Remove a group directory, waiting a little while its last processes exit; a
    group that stays busy is reported on stderr (cleaning up goes on)."""
    deadline = time.monotonic() + RMDIR_WAIT_S
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:  # EBUSY: a process still in it is exiting
            if time.monotonic() > deadline:
                print(f"bench._cgroup: cannot remove {path}: {e}", file=sys.stderr)
                return
            time.sleep(0.02)
