from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def _ingest(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def test_help_lists_every_command_group_with_its_summary() -> None:
    r = _ingest("--help")
    assert r.returncode == 0, r.stderr
    listed = set(re.findall(r"│ (\w+) {2,}", r.stdout))
    assert listed == {"local", "run", "status", "doctor", "presign", "token", "cors"}, r.stdout
    for group in ("cors", "token"):
        sub = _ingest(group, "--help")
        assert sub.returncode == 0 and "Usage:" in sub.stdout, sub.stderr


def test_a_bad_config_is_exit_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "ingest.toml").write_text('[r2]\njurisdiction = "mars"\n')
    r = _ingest("run", "--once", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "config error: r2.jurisdiction: must be one of default, eu, fedramp, us (got 'mars')"
    ]
