"""How many cores the worker may use, and Arrow's thread pool sized to match."""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota µs> <period µs>", or "max <period>"


def cores(cpu_max: Path = CPU_MAX) -> int:
    """The cores this process may use: its CPU affinity, or a container's CPU limit (cgroup v2
    `cpu.max`) when that is lower. `os.cpu_count()` is the machine's: on a 64-core node a pod
    limited to 2 CPUs would run 64 parses at once, and no body would ever wait to share one."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def size_arrow_threads(cpu_max: Path = CPU_MAX) -> None:
    """Arrow sizes its thread pool from the CPU affinity, not from a container's CPU limit: a pod
    limited to 2 CPUs on a 64-core node would parse with 64 threads and be throttled by the kernel.
    Call after pyarrow is imported; an `OMP_NUM_THREADS` set by the operator decides."""
    import pyarrow as pa

    if "OMP_NUM_THREADS" not in os.environ and (n := cores(cpu_max)) < pa.cpu_count():
        pa.set_cpu_count(n)
