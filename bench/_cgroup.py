"""A fixed CPU budget for processes the bench started: a cgroup of their own, made and removed by the bench.

cgroup v1 (`/sys/fs/cgroup/cpu/<name>`, `cpu.cfs_quota_us` over `cpu.cfs_period_us`) or v2
(`/sys/fs/cgroup/<name>`, `cpu.max`). Only pids handed to `CpuBudget.add` are moved in; on exit any
still inside go back to the bench's own cgroup and the directory is removed. Needs root.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType
from typing import Self

_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """No writable cpu controller here (not root, no cgroup fs, or the controller is not delegated)."""


def _own_cgroup(v1: bool) -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if (v1 and "cpu" in controllers.split(",")) or (not v1 and _id == "0"):
            return (_V1 if v1 else _V2) / path.lstrip("/")
    return _V1 if v1 else _V2


class CpuBudget:
    """`cores` of CPU (e.g. 0.4) for the processes added; a context manager."""

    def __init__(self, name: str, cores: float) -> None:
        self.cores = cores
        self.v1 = (_V1 / "cpu.cfs_quota_us").exists()
        if not self.v1 and not (_V2 / "cgroup.controllers").exists():
            raise CgroupUnavailable("no cgroup cpu controller mounted")
        self.path = (_V1 if self.v1 else _V2) / f"alter-bench-{name}-{os.getpid()}"
        self.kind = "cgroup v1 cpu.cfs_quota_us" if self.v1 else "cgroup v2 cpu.max"

    def __enter__(self) -> Self:
        quota = max(1000, int(self.cores * PERIOD_US))
        try:
            self.path.mkdir()
            if self.v1:
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        except OSError as exc:
            self._remove()
            raise CgroupUnavailable(f"{self.path}: {exc.strerror or exc}") from None
        return self

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._remove()

    def _remove(self) -> None:
        if not self.path.exists():
            return
        home = _own_cgroup(self.v1) / "cgroup.procs"
        for _ in range(50):
            try:
                pids = (self.path / "cgroup.procs").read_text().split()
            except OSError:
                pids = []
            for pid in pids:
                try:
                    home.write_text(pid)
                except OSError:
                    continue  # exited meanwhile
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.05)  # a process still leaving
