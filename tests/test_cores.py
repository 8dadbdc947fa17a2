"""The cores the worker may use: a container's CPU limit counts, not the node's cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ingest.cores import cores


def test_the_cores_this_process_may_use(tmp_path: Path) -> None:
    """A container's CPU limit counts, not the node's cores: cgroup v2 `cpu.max` (quota and period
    in µs), else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; no limit, missing or unreadable
    files: the CPU affinity."""
    mine = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    assert cores(v2) == mine  # no file
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cores(v2) == mine
    (v2 / "cpu.max").write_text("50000 100000\n")  # half a CPU: one
    assert cores(v2) == 1
    (v2 / "cpu.max").write_text(f"{(mine + 3) * 100000} 100000\n")  # above the affinity
    assert cores(v2) == mine
    (v2 / "cpu.max").write_text("garbage\n")
    assert cores(v2) == mine
    for name in ("cpu", "cpu,cpuacct"):
        v1 = tmp_path / f"v1-{name}" / name
        v1.mkdir(parents=True)
        (v1 / "cpu.cfs_period_us").write_text("100000\n")
        (v1 / "cpu.cfs_quota_us").write_text("-1\n")
        assert cores(v1.parent) == mine
        (v1 / "cpu.cfs_quota_us").write_text("150000\n")  # 1.5 CPUs: two
        assert cores(v1.parent) == min(mine, 2)
        (v1 / "cpu.cfs_quota_us").write_text("80000\n")
        assert cores(v1.parent) == 1


def _arrow_threads(cgroup: Path, **env: str) -> tuple[int, int]:
    """Arrow's thread count before and after `size_arrow_threads`, in a fresh process."""
    code = (
        "import pyarrow as pa, sys; from pathlib import Path; from ingest.cores import size_arrow_threads; "
        "n = pa.cpu_count(); size_arrow_threads(Path(sys.argv[1])); print(n, pa.cpu_count())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(cgroup)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    before, after = run.stdout.split()
    return int(before), int(after)


def test_arrows_threads_follow_a_container_limit_unless_the_operator_set_them(tmp_path: Path) -> None:
    mine = len(os.sched_getaffinity(0))
    assert _arrow_threads(tmp_path) == (mine, mine)  # no limit: Arrow's own count (the affinity)
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one CPU
    assert _arrow_threads(tmp_path) == (mine, 1)
    omp = {"OMP_NUM_THREADS": str(mine)}  # the operator's choice decides
    assert _arrow_threads(tmp_path, **omp) == (mine, mine)
