from __future__ import annotations

import subprocess
import sys


def test_help_lists_the_commands() -> None:
    r = subprocess.run([sys.executable, "-m", "ingest", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "local" in r.stdout
