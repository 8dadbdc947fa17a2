"""How many cores the worker may use, and Arrow's thread pool sized to match."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")  # a container sees its own cgroup here


def cores(cgroup: Path = CGROUP) -> int:
    """The cores this process may use: its CPU affinity, or a container's CPU limit when that is
    lower. `os.cpu_count()` is the machine's: on a 64-core node a pod limited to 2 CPUs would run
    64 parses at once, and no body would ever wait to share one."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _limit(cgroup)
    return n if limit is None else min(n, max(1, math.ceil(limit)))


def _limit(cgroup: Path) -> float | None:
    """CPUs a cgroup quota allows (None: no quota, or none found): v2 `cpu.max` ("<quota µs>
    <period µs>", or "max <period>"), else v1 `cpu.cfs_quota_us` (-1: none) / `cpu.cfs_period_us`."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in ("cpu", "cpu,cpuacct"):
        try:
            quota = (cgroup / v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / v1 / "cpu.cfs_period_us").read_text().strip()
            return None if int(quota) <= 0 else int(quota) / int(period)
        except (OSError, ValueError):
            continue
    return None


def size_arrow_threads(cgroup: Path = CGROUP) -> None:
    """Arrow sizes its thread pool from the CPU affinity, not from a container's CPU limit: a pod
    limited to 2 CPUs on a 64-core node would parse with 64 threads and be throttled by the kernel.
    Call after pyarrow is imported; an `OMP_NUM_THREADS` set by the operator decides."""
    import pyarrow as pa

    if "OMP_NUM_THREADS" not in os.environ and (n := cores(cgroup)) < pa.cpu_count():
        pa.set_cpu_count(n)
