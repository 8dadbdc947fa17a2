"""The local R2 never leaves a SeaweedFS process behind, however `ingest local` ends."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import start_local_r2


def _weed_children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and "(weed)" in stat:
                pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_orphan_weed(tmp_path: Path, sig: signal.Signals) -> None:
    r2 = start_local_r2(tmp_path)
    weeds = _weed_children(r2.proc.pid)
    assert len(weeds) == 1
    os.kill(r2.proc.pid, sig)
    r2.proc.wait(30)
    deadline = time.monotonic() + 20
    while _alive(weeds[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(weeds[0]), f"weed {weeds[0]} survived {sig.name} of ingest local"
