"""ENOSPC while spooling: a clear error, readiness false, no corrupt spool file, nothing lost.

The spool sits on a real 2 MiB tmpfs that is filled up for real; the test needs the right to mount
(root in a container that allows it) and is skipped, saying so, where it has not.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Job, free_port, logs_of, readyz, wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_keeps_the_batch_fails_readiness_and_recovers_when_space_returns(
    job: Job, small_disk: Path
) -> None:
    probe = free_port()
    job.configure(
        sources={"settle_seconds": "50ms"},
        batch={"max_age": "200ms"},
        spool={"dir": str(small_disk / "spool")},
        server={"listen": f"127.0.0.1:{probe}"},
        output={"prefix": job.prefix, "compression": "none"},
    )
    proc = job.start()
    try:
        wait_for(lambda: readyz(probe) == 200, 60, "the worker")
        filler = small_disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk for real, then leave ~64 KiB free
            size = 0
            while True:
                try:
                    size += os.write(fd, b"\0" * 4096)
                except OSError:
                    break
            os.ftruncate(fd, max(0, size - 64 * 2**10))
        finally:
            os.close(fd)
        rng = random.Random(5)
        rows = [{"id": i, "v": rng.random()} for i in range(40_000)]  # ~640 KB of Parquet
        staged = job.dir / "big.jsonl"
        staged.write_text("".join(json.dumps(r) + "\n" for r in rows))
        staged.rename(job.inbox / "big.jsonl")

        wait_for(lambda: readyz(probe) == 503, 30, "readiness to turn false")
        reason = httpx.get(f"http://127.0.0.1:{probe}/readyz", timeout=2).json()["reason"]
        assert "spool disk full" in reason and "spool.dir" in reason
        objects = small_disk / "spool"
        assert not [p for p in objects.rglob("objects/*") if p.is_file()]  # nothing half-written left
        assert list((job.inbox / ".ingest" / "claimed").rglob("*--big.jsonl"))  # input kept
        assert job.keys() == []

        filler.unlink()  # space comes back: the kept batch is written and uploaded
        wait_for(lambda: len(job.rows()) == len(rows), 90, "the batch to be uploaded")
        wait_for(lambda: readyz(probe) == 200, 30, "readiness to return")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert any("spool disk full" in str(e.get("event")) for e in logs_of(err))
    ids = sorted(int(r["id"]) for r in job.rows())  # type: ignore[call-overload]
    assert ids == list(range(len(rows)))
