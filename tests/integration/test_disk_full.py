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
        # Nothing half-written stays between attempts (an attempt in progress may hold a .tmp).
        wait_for(
            lambda: not [p for p in objects.rglob("objects/*") if p.is_file()], 20, "no partial spool file"
        )
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


# Every write the spool and journal make, by the name the fault hook knows it by (ingest/durable/faults.py):
# each fails three times with the error a full disk gives that call, then the disk has room again.
WRITES = [
    "add_unit",  # a claimed file is journaled before it is read
    "encode",  # the Parquet file in the spool (ENOSPC)
    "deadletters",  # the dead-letter file (ENOSPC)
    "spooled",  # the batch and the rows it holds
    "attempting",  # the key about to be written
    "uploaded",  # the object is in R2 (the write that crashed the worker before)
    "unit_read",  # a file was read to its end
    "forget_unit",  # a file was acknowledged
    "add_object",  # sealed dead letters queued for upload (and counted for `ingest status`)
    "set_problems",  # unreadable input, for `ingest status`
]


@pytest.mark.parametrize("point", WRITES)
def test_every_spool_and_journal_write_waits_for_space(job: Job, point: str) -> None:
    for f in range(3):
        lines = [json.dumps({"id": f * 100 + i, "v": f"r{i}"}) for i in range(50)]
        lines.insert(7, "{not json")
        (job.inbox / f"f{f}.jsonl").write_text("\n".join(lines) + "\n")
    job.configure(batch={"max_records": 60}, retry={"initial": "20ms", "max": "100ms"})
    r = job.run_once(INGEST_DISK_FULL_AT=f"{point}:1:3")
    assert r.returncode == 0, r.stderr[-3000:]
    full = [e for e in logs_of(r.stderr) if "disk full" in str(e.get("event"))]
    assert len(full) >= 3, f"the fault at {point} never fired"
    assert sorted(int(row["id"]) for row in job.rows()) == [f * 100 + i for f in range(3) for i in range(50)]
    letters = job.dead_letters()
    assert sorted((d["source"], d["line"]) for d in letters) == [(f"f{f}.jsonl", 8) for f in range(3)]
    assert not [p for p in job.inbox.rglob("*.jsonl")]  # every file acknowledged


def test_readiness_is_false_while_the_journal_cannot_write(job: Job) -> None:
    probe = free_port()
    job.configure(
        sources={"settle_seconds": "50ms"},
        batch={"max_age": "100ms"},
        retry={"initial": "50ms", "max": "200ms"},
        server={"listen": f"127.0.0.1:{probe}"},
    )
    proc = job.start(INGEST_DISK_FULL_AT="uploaded:1:40")  # ~8 s without room after the first upload
    try:
        wait_for(lambda: readyz(probe) == 200, 60, "the worker")
        (job.inbox / "a.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(10)))
        wait_for(lambda: readyz(probe) == 503, 30, "readiness to turn false")
        reason = httpx.get(f"http://127.0.0.1:{probe}/readyz", timeout=2).json()["reason"]
        assert "spool disk full" in reason and "journal upload" in reason
        assert (job.inbox / ".ingest" / "claimed").exists()
        wait_for(lambda: readyz(probe) == 200, 60, "readiness to return once there is room")
        wait_for(lambda: not list(job.inbox.rglob("*.jsonl")), 30, "the file acknowledged")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert sorted(int(r["id"]) for r in job.rows()) == list(range(10))


@pytest.mark.parametrize(
    ("point", "code", "says"),
    [("encode", "EIO", "EIO"), ("spooled", "EROFS", "disk I/O error"), ("uploaded", "EIO", "disk I/O error")],
)
def test_a_spool_that_cannot_be_written_ends_the_run_with_one_line_and_keeps_the_input(
    job: Job, point: str, code: str, says: str
) -> None:
    (job.inbox / "a.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(20)))
    job.configure(retry={"initial": "20ms", "max": "100ms"})
    r = job.run_once(INGEST_DISK_FULL_AT=f"{point}:1:1000:{code}", timeout=60)
    assert r.returncode == 1, r.stderr[-2000:]
    [line] = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "cannot write the spool" in line and says in line and "Traceback" not in r.stderr
    assert list((job.inbox / ".ingest" / "claimed").rglob("*--a.jsonl"))  # kept for the next run
    r = job.run_once()  # the disk is fine again: everything arrives, once
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(int(row["id"]) for row in job.rows()) == list(range(20))
