"""Per-test CPU, to find what makes the suite slow: `BERTNLI_CPU_TIMELINE=FILE python -m pytest ...`.

Wall time misleads on 2 cores: a test that waits (an outage, a server) costs little, one that starts four
sweep processes costs four cores' worth. Each pytest process moves itself into a cgroup (v1 `cpuacct`)
of its own, so the CPU of everything a test starts, also processes nobody waits for (forked trials,
forkservers), is counted to that test. One JSON line per test; `benchmarks/suite_cpu.py` sums them.
Off unless the variable is set; where cgroups cannot be made (no root, cgroup v2 only) the CPU is null.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def _current_cgroup() -> Path:
    """This process's cpuacct cgroup (a child of it keeps any limits the machine sets on it)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            return CPUACCT / path.lstrip("/")
    return CPUACCT


def _own_cgroup() -> tuple[Path, Path] | None:
    """A cgroup of its own under the current one, and the current one (to move back to at the end)."""
    parent = _current_cgroup()
    group = parent / f"bertnli-tests-{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        (group / "cgroup.procs").write_text(str(os.getpid()))
        return group, parent
    except OSError:
        return None


class CpuTimeline:
    def __init__(self, path: Path, worker: str):
        self.path, self.worker = path, worker
        self.group, self.parent = _own_cgroup() or (None, None)

    def _cpu_s(self) -> float | None:
        return int((self.group / "cpuacct.usage").read_text()) / 1e9 if self.group else None

    def pytest_unconfigure(self, config):
        """Back to the cgroup it came from; the empty group goes (one a straggler still holds stays)."""
        if self.group is None:
            return
        try:
            (self.parent / "cgroup.procs").write_text(str(os.getpid()))
            self.group.rmdir()
        except OSError:
            pass

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item):
        t0, c0 = time.time(), self._cpu_s()
        yield
        c1 = self._cpu_s()
        row = {"test": item.nodeid, "worker": self.worker, "start": t0, "wall_s": time.time() - t0}
        row["cpu_s"] = None if c0 is None else c1 - c0
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def pytest_configure(config):
    path = os.environ.get("BERTNLI_CPU_TIMELINE")
    if path:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        config.pluginmanager.register(CpuTimeline(Path(path).resolve(), worker), "bertnli-cpu-timeline")
