"""Worker processes: how many CPUs this process really has, and workers that end with their parent.

A run killed with SIGKILL cannot stop its process-pool workers, and a worker in the middle of a training
would go on writing into the run directory while the rerun of the same command resumes that training. Each
worker therefore watches its parent and exits as soon as the parent is gone.

How many workers: ``os.cpu_count()`` counts the machine's cores, not the ones a container or SLURM job may
use, so :func:`cpu_count` reads the affinity mask and the cgroup CPU quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us``), and ``--workers`` overrides both.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from pathlib import Path


def _watch(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)  # the parent is gone: leave at once, without running cleanup that could write files


def exit_with_parent(interval: float = 0.2) -> None:
    """Call in a worker process (e.g. as a pool initializer): a daemon thread ends the process when its parent
    process dies."""
    threading.Thread(target=_watch, args=(os.getppid(), interval), daemon=True, name="exit-with-parent").start()


# -- how many CPUs this process really has --------------------------------------------------------------------
WORKERS_ENV = "LCASC_WORKERS"  # set by ``--workers``; inherited by every worker process


def _cgroup_v2_limit(cgroup_root: Path, relative: str) -> float | None:
    """CPUs allowed by ``cpu.max`` ("quota period" or "max period") of the process's cgroup and its parents."""
    limit = None
    node = cgroup_root / relative.lstrip("/")
    while True:
        try:
            quota, period = (node / "cpu.max").read_text().split()[:2]
            if quota != "max" and float(period) > 0:
                cpus = float(quota) / float(period)
                limit = cpus if limit is None else min(limit, cpus)
        except (OSError, ValueError):
            pass
        if node == cgroup_root or cgroup_root not in node.parents:
            return limit
        node = node.parent


def _cgroup_v1_limit(cpu_dir: Path) -> float | None:
    """CPUs allowed by ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: no quota)."""
    try:
        quota = float((cpu_dir / "cpu.cfs_quota_us").read_text())
        period = float((cpu_dir / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


@functools.lru_cache(maxsize=8)  # read once per process: quotas do not change under a running job
def cgroup_cpu_limit(cgroup_root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
                     ) -> float | None:
    """The CPU quota (in CPUs, may be fractional) of this process's cgroup, v2 or v1; None when unlimited or
    unknown. Containers and SLURM jobs set it without changing the affinity mask or ``os.cpu_count()``."""
    root = Path(cgroup_root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, relative = parts
        if controllers == "":  # cgroup v2 (unified hierarchy)
            limit = _cgroup_v2_limit(root, relative) if (root / "cgroup.controllers").exists() else None
        elif "cpu" in controllers.split(","):
            cpu_dir = next((root / name for name in ("cpu,cpuacct", "cpu", "cpuacct,cpu") if (root / name).is_dir()),
                           None)
            limit = None
            if cpu_dir is not None:  # inside a container the cgroup is mounted at its root
                own = cpu_dir / relative.lstrip("/")
                limit = _cgroup_v1_limit(own if own.is_dir() else cpu_dir)
        else:
            continue
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def cpu_count() -> int:
    """CPUs this process may really use: ``--workers`` (``$LCASC_WORKERS``) if given, else the smaller of the
    affinity mask (``taskset``, cpusets, SLURM) and the cgroup CPU quota rounded up (containers, SLURM); at
    least 1. ``os.cpu_count()`` counts the machine's cores and oversubscribes a quota."""
    forced = os.environ.get(WORKERS_ENV, "").strip()
    if forced:
        try:
            n = int(forced)
        except ValueError:
            raise ValueError(f"${WORKERS_ENV}={forced!r}: the number of workers must be a positive integer") from None
        if n < 1:
            raise ValueError(f"${WORKERS_ENV}={forced!r}: the number of workers must be a positive integer")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)
