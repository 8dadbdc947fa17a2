"""The cores the worker may use: a container's CPU limit counts, not the node's cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ingest.cores import cores


def test_the_cores_this_process_may_use(tmp_path: Path) -> None:
    """A container's CPU limit (cgroup v2 `cpu.max`: quota and period in µs) counts, not the node's
    cores; no limit, a missing or unreadable file: the CPU affinity."""
    mine = len(os.sched_getaffinity(0))
    limit = tmp_path / "cpu.max"
    assert cores(limit) == mine  # no such file
    limit.write_text("max 100000\n")
    assert cores(limit) == mine
    limit.write_text("50000 100000\n")  # half a CPU: one lane's worth
    assert cores(limit) == 1
    limit.write_text(f"{(mine + 3) * 100000} 100000\n")  # a limit above the affinity
    assert cores(limit) == mine
    limit.write_text("garbage\n")
    assert cores(limit) == mine


def _arrow_threads(cpu_max: Path, **env: str) -> tuple[int, int]:
    """Arrow's thread count before and after `size_arrow_threads`, in a fresh process."""
    code = (
        "import pyarrow as pa, sys; from pathlib import Path; from ingest.cores import size_arrow_threads; "
        "n = pa.cpu_count(); size_arrow_threads(Path(sys.argv[1])); print(n, pa.cpu_count())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(cpu_max)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    before, after = run.stdout.split()
    return int(before), int(after)


def test_arrows_threads_follow_a_container_limit_unless_the_operator_set_them(tmp_path: Path) -> None:
    mine = len(os.sched_getaffinity(0))
    limit = tmp_path / "cpu.max"
    assert _arrow_threads(limit) == (mine, mine)  # no limit: Arrow's own count (the affinity)
    limit.write_text("100000 100000\n")  # one CPU
    assert _arrow_threads(limit) == (mine, 1)
    omp = {"OMP_NUM_THREADS": str(mine)}  # the operator's choice decides
    assert _arrow_threads(limit, **omp) == (mine, mine)
