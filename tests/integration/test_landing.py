"""The landing-prefix source against the local R2: several workers, claims, restarts."""

from __future__ import annotations

import json
import signal
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.faultproxy import FaultProxy, Faults
from tests.integration.conftest import Job, logs_of, wait_for


def _workers(job: Job, tmp_path: Path, *ids: str) -> list[Job]:
    """Jobs sharing `job`'s prefix (so one landing prefix), each with its own worker id and spool."""
    out = []
    for wid in ids:
        d = tmp_path / wid
        d.mkdir()
        w = Job(job.r2, d, job.prefix)
        w.configure(
            sources=[{"kind": "landing", "settle_seconds": "200ms"}],
            worker={"id": wid},
            batch={"max_records": 40},  # several batches per worker
        )
        out.append(w)
    return out


def _land(job: Job, files: int, rows_per_file: int, name: str = "part.jsonl", first: int = 0) -> list[str]:
    s3 = job.r2.token_s3()
    keys = []
    for f in range(files):
        key = f"{job.prefix}_landing/{uuid.uuid4().hex}/{name}"
        rows = ({"id": first + f * rows_per_file + i, "file": f} for i in range(rows_per_file))
        body = "".join(json.dumps(r) + "\n" for r in rows)
        s3.put_object(Bucket=job.r2.bucket, Key=key, Body=body.encode())
        keys.append(key)
    return keys


def _ingested(stderr: str) -> list[str]:
    return [e["key"] for e in logs_of(stderr) if e.get("event") == "landing object ingested and deleted"]


def test_two_workers_on_one_landing_prefix_take_every_object_once(job: Job, tmp_path: Path) -> None:
    files, per_file = 24, 15
    landed = _land(job, files, per_file)
    a, b = _workers(job, tmp_path, "worker-a", "worker-b")
    procs = [w.start("--once") for w in (a, b)]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]

    taken = [_ingested(err) for _out, err in results]
    assert Counter(taken[0] + taken[1]) == Counter(landed)  # each object by exactly one worker

    ids = [r["id"] for r in job.rows()]
    assert len(ids) == files * per_file and set(ids) == set(range(files * per_file))
    assert job.landing_keys() == []  # objects and claim markers deleted
    data = job.keys()
    assert data and all(k.endswith(".parquet") for k in data)


def test_a_claim_belongs_to_its_worker_until_that_worker_finishes_it(job: Job, tmp_path: Path) -> None:
    mine, theirs = _land(job, 1, 5), _land(job, 1, 5, name="other.jsonl", first=100)
    skipped = _land(job, 1, 1, name="notes.txt")  # unknown format: left alone, with a warning
    a, b = _workers(job, tmp_path, "worker-a", "worker-b")
    s3 = job.r2.token_s3()
    marker = theirs[0].replace("_landing/", "_landing/.claims/", 1)
    # worker-b claimed `theirs` and crashed before copying it
    s3.put_object(Bucket=job.r2.bucket, Key=marker, Body=json.dumps({"worker": "worker-b"}).encode())

    first = a.run_once()
    assert first.returncode == 0, first.stderr[-3000:]
    assert _ingested(first.stderr) == mine
    assert sorted(r["id"] for r in job.rows()) == [0, 1, 2, 3, 4]
    assert job.landing_keys() == sorted([theirs[0], marker, skipped[0]])
    warned = [e for e in logs_of(first.stderr) if e.get("event", "").startswith("landing object skipped")]
    assert [e["key"] for e in warned] == skipped

    second = b.run_once()  # the same worker id resumes its own claim
    assert second.returncode == 0, second.stderr[-3000:]
    assert _ingested(second.stderr) == theirs
    assert sorted(r["id"] for r in job.rows()) == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]
    assert job.landing_keys() == skipped


def test_landing_configuration_mistakes_exit_2_naming_the_key(job: Job) -> None:
    job.configure(sources=[{"kind": "landing"}, {"kind": "landing", "settle_seconds": "5s"}])
    two = job.run_once()
    assert two.returncode == 2
    assert "sources.1.kind: a second landing source" in two.stderr

    job.configure(server={"upload_token": "t0ken"})  # grants, but only a directory source
    orphan = job.run_once()
    assert orphan.returncode == 2
    assert 'server.upload_token: set, but no source has kind = "landing"' in orphan.stderr
    assert "t0ken" not in orphan.stderr + orphan.stdout


@pytest.mark.parametrize(
    "point", ["claimed:2", "encoded:1", "put:1", "uploaded:2", "unlanded:1", "unlanded:3", "acked:2"]
)
def test_killed_at_any_step_a_restart_finishes_with_every_row_once(
    job: Job, tmp_path: Path, point: str
) -> None:
    files, per_file = 6, 10
    landed = _land(job, files, per_file)
    (worker,) = _workers(job, tmp_path, "worker-a")
    worker.configure(sources=[{"kind": "landing"}], worker={"id": "worker-a"}, batch={"max_records": 15})
    killed = worker.run_once(INGEST_CRASH_AT=point)
    assert killed.returncode == -9, killed.stderr[-2000:]

    done = worker.run_once()
    assert done.returncode == 0, done.stderr[-3000:]
    ids = sorted(r["id"] for r in job.rows())
    assert ids == list(range(files * per_file))  # none lost, none twice
    assert job.landing_keys() == []
    before, after = _ingested(killed.stderr), _ingested(done.stderr)
    assert set(before) | set(after) <= set(landed) and not set(before) & set(after)
    assert len(after) == len(set(after))  # (a kill inside an acknowledgement may leave no log line)


def test_drops_and_503s_between_worker_and_store_lose_and_duplicate_nothing(job: Job, tmp_path: Path) -> None:
    files, per_file = 12, 10
    _land(job, files, per_file)
    faults = Faults(drop=0.1, drop_response=0.15, unavailable=0.45, seed=3)
    with FaultProxy(urlparse(job.r2.endpoint_url).port or 0, faults) as proxy:
        (worker,) = _workers(job, tmp_path, "worker-a")
        worker.endpoint_url = proxy.url
        proc = worker.start()  # a daemon: a failed listing is retried at the next poll
        try:
            wait_for(lambda: not job.landing_keys(), 120, "every upload ingested and deleted")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    for mode in ("drop", "drop_response", "unavailable", "pass"):
        assert proxy.seen[mode] > 0, proxy.seen
    ids = sorted(r["id"] for r in job.rows())
    assert ids == list(range(files * per_file))  # none lost, none twice


def test_a_full_disk_while_copying_a_landing_object_waits_for_space(job: Job, tmp_path: Path) -> None:
    _land(job, 3, 10)
    [w] = _workers(job, tmp_path, "worker-full")
    w.configure(
        sources=[{"kind": "landing", "settle_seconds": "200ms"}],
        worker={"id": "worker-full"},
        retry={"initial": "20ms", "max": "100ms"},
    )
    r = w.run_once(INGEST_DISK_FULL_AT="landing:1:4")
    assert r.returncode == 0, r.stderr[-3000:]
    waits = [
        e for e in logs_of(r.stderr) if e.get("event") == "spool disk full; the landing copy waits for space"
    ]
    assert len(waits) == 4
    assert sorted(int(row["id"]) for row in job.rows()) == list(range(30))
    assert job.landing_keys() == []
    assert not list((w.dir / "spool").rglob("*.part"))
