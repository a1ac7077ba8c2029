"""How many CPUs this process may really use, for the default thread counts.

``os.cpu_count()`` counts the machine's CPUs, not the ones a process may run on: under
``taskset``, a batch scheduler's CPU set (Slurm, LSF) or a container's CPU quota (Docker
``--cpus``, Kubernetes limits) a pool sized from it oversubscribes the cores it has, and
every thread waits. Python 3.13 adds ``os.process_cpu_count()`` for the affinity part;
the cgroup quota is read here as Java and Go runtimes do.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["limit_torch_threads", "usable_cpus"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup's CFS quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``),
    or None when there is no quota or it cannot be read."""
    v2 = _read(root / "cpu.max")  # "max 100000" or "<quota> <period>"
    if v2 is not None:
        parts = v2.split()
        quota, period = (parts + ["", ""])[:2]
    else:
        quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    try:
        q, p = float(quota or "nan"), float(period or "nan")
    except ValueError:
        return None
    if not (q > 0 and p > 0 and math.isfinite(q) and math.isfinite(p)):  # "max", -1 or unreadable
        return None
    return q / p


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (rounded
    up: a quota of 1.5 CPUs keeps 2 threads busy part of the time); at least 1."""
    n = _affinity()
    quota = cgroup_quota(root)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def limit_torch_threads() -> int:
    """Lower torch's intra-op thread count to :func:`usable_cpus` if it is higher, and
    return the count in use. torch sizes its pool from the affinity mask but not from a
    container's CPU quota, so on a 64-core host limited to 2 CPUs it would run 64
    threads on 2 CPUs. Never raises the count (a lower one was chosen by the user)."""
    import torch

    n = usable_cpus()
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
