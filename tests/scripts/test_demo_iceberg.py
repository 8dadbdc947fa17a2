"""`bash scripts/demo --iceberg` as a user runs it: it ends by printing the table's row count, read
through the local R2's catalog."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_iceberg_demo_commits_the_sample_events_and_counts_them_through_the_catalog(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
    r = subprocess.run(
        ["bash", "scripts/demo", "--iceberg"],
        cwd=ROOT,
        env=env | {"INGEST_DEMO_DIR": str(tmp_path / "demo")},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    counted = re.search(r"demo\.events read through the catalog: ([\d,]+) rows", r.stdout)
    uploaded = re.search(r"uploaded ([\d,]+) records", r.stdout + r.stderr)
    assert counted and uploaded, r.stdout + r.stderr
    assert counted.group(1) == uploaded.group(1) != "0"
