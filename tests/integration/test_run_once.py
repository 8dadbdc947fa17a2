"""`ingest run --once` end to end: files in, dated Parquet objects out, read back from the real store."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from tests.faultproxy import HashCheckingProxy
from tests.integration.conftest import Job, ingest_without_r2, logs_of, today_dir, write_csv, write_jsonl


def _rows(start: int, n: int) -> list[dict[str, object]]:
    return [{"id": i, "value": i * 0.5, "name": f"n{i}", "ok": i % 2 == 0} for i in range(start, start + n)]


def test_fifty_files_become_numbered_objects_without_gaps(job: Job) -> None:
    expected: list[dict[str, object]] = []
    kinds = [".jsonl", ".ndjson", ".csv", ".jsonl.gz", ".ndjson.zst"]
    for i in range(50):
        rows = _rows(i * 100, 100)
        expected += rows
        path = job.inbox / f"part-{i:02d}{kinds[i % len(kinds)]}"
        if path.name.endswith(".csv"):
            write_csv(path, [{**r, "ok": str(r["ok"]).lower()} for r in rows])
        else:
            write_jsonl(path, rows)
    job.configure(batch={"max_records": 700})

    r = job.run_once()
    assert r.returncode == 0, r.stderr

    keys = job.keys()
    day = today_dir()
    assert keys == [f"{job.prefix}{day}/ingested_{n:04d}.parquet" for n in range(1, len(keys) + 1)]
    assert len(keys) == 5000 // 700 + 1  # batches span files: 8 objects for 5000 records
    got = sorted(job.rows(), key=lambda row: int(row["id"]))  # type: ignore[call-overload]
    assert got == expected
    assert list(job.inbox.iterdir()) == [job.inbox / ".ingest"]  # every file acknowledged (deleted)
    assert not any((job.inbox / ".ingest").rglob("*.jsonl"))
    uploaded = [e for e in logs_of(r.stderr) if e.get("event") == "uploaded"]
    assert sorted(e["key"] for e in uploaded) == keys
    assert all(
        e["records"] > 0 and e["bytes"] > 0 and e["attempts"] == 1 and "seconds" in e for e in uploaded
    )
    meta = job.r2.token_s3().head_object(Bucket=job.r2.bucket, Key=keys[0])["Metadata"]
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["batch-id"])


def test_a_run_that_finds_nothing_ends_without_building_the_s3_client_and_one_with_input_uploads(
    job: Job,
) -> None:
    """The S3 client (a third of an empty cron run's time) is built once a source opened input."""
    job.configure(log={"level": "debug"})
    r = job.run_once()
    assert r.returncode == 0, r.stderr
    events = [e.get("event") for e in logs_of(r.stderr)]
    assert "s3 client built" not in events and job.keys() == []
    assert "uploaded 0 records" in r.stdout

    write_jsonl(job.inbox / "a.jsonl", _rows(0, 3))
    r = job.run_once()
    assert r.returncode == 0, r.stderr
    assert [e.get("event") for e in logs_of(r.stderr)].count("s3 client built") == 1
    assert sorted(job.rows(), key=lambda row: int(row["id"])) == _rows(0, 3)  # type: ignore[call-overload]


def test_a_big_last_batch_is_encoded_and_uploaded_as_two_halves_rows_exact(job: Job) -> None:
    """The input ends on a full batch (60,000 rows, 26 MB in Arrow): both encoders share it."""
    pad = "x" * 400
    expected = [{"id": i, "pad": pad} for i in range(60_000)]
    write_jsonl(job.inbox / "a.jsonl", expected[:30_000])
    write_jsonl(job.inbox / "b.jsonl", expected[30_000:])
    job.configure(batch={"max_records": 60_000})

    r = job.run_once()
    assert r.returncode == 0, r.stderr
    keys = job.keys()
    assert len(keys) == 2
    ids = [sorted(job.read(k).column("id").to_pylist()) for k in keys]
    assert sorted(ids) == [list(range(30_000)), list(range(30_000, 60_000))]  # in order, cut in the middle
    got = sorted(job.rows(), key=lambda row: int(row["id"]))  # type: ignore[call-overload]
    assert got == expected
    assert len(set(job.batch_ids().values())) == 2
    assert list(job.inbox.iterdir()) == [job.inbox / ".ingest"]  # both files acknowledged
    uploaded = [e for e in logs_of(r.stderr) if e.get("event") == "uploaded"]
    assert sorted(e["records"] for e in uploaded) == [30_000, 30_000]


def test_existing_objects_are_not_overwritten_and_numbering_continues(job: Job) -> None:
    s3 = job.r2.token_s3()
    day = today_dir()
    for n in (1, 2, 3):
        s3.put_object(Bucket=job.r2.bucket, Key=f"{job.prefix}{day}/ingested_{n:04d}.parquet", Body=f"old{n}")
    write_jsonl(job.inbox / "a.jsonl", _rows(0, 10))

    r = job.run_once()
    assert r.returncode == 0, r.stderr

    assert job.keys()[-1] == f"{job.prefix}{day}/ingested_0004.parquet"
    for n in (1, 2, 3):
        body = s3.get_object(Bucket=job.r2.bucket, Key=f"{job.prefix}{day}/ingested_{n:04d}.parquet")["Body"]
        assert body.read() == f"old{n}".encode()
    assert job.read(job.keys()[-1]).num_rows == 10


def test_two_processes_share_one_directory(job: Job) -> None:
    total = 0
    for i in range(40):  # enough work that the second process starts before the first is done
        write_jsonl(job.inbox / f"f{i:02d}.jsonl", _rows(i * 10_000, 10_000))
        total += 10_000
    job.configure(batch={"max_records": 15_000})

    procs = [job.start("--once") for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    keys = job.keys()
    assert len(keys) == len(set(keys))
    ids = Counter(int(row["id"]) for row in job.rows())  # type: ignore[call-overload]
    assert sum(ids.values()) == total
    assert max(ids.values()) == 1
    assert set(ids) == set(range(total))
    per_process = [[e["key"] for e in logs_of(out[1]) if e.get("event") == "uploaded"] for out in outputs]
    # Which worker takes how much depends on start-up timing: the property is that together they took
    # every file exactly once (no id twice above, each key by one process below).
    assert sorted(per_process[0] + per_process[1]) == keys  # each key written by exactly one process


def test_partition_by_event_time_gives_one_directory_per_day(job: Job) -> None:
    start = datetime(2024, 8, 1, 22, 0, tzinfo=UTC)
    rows = [
        {"id": i, "ts": (start + timedelta(hours=i)).isoformat().replace("+00:00", "Z")} for i in range(40)
    ]
    write_jsonl(job.inbox / "events.jsonl", rows)
    job.configure(output={"partition_by": "ts"})

    r = job.run_once()
    assert r.returncode == 0, r.stderr

    keys = job.keys()
    assert keys == [
        f"{job.prefix}2024/08/01/ingested_0001.parquet",
        f"{job.prefix}2024/08/02/ingested_0001.parquet",
        f"{job.prefix}2024/08/03/ingested_0001.parquet",
    ]
    per_day = [job.read(k).column("id").to_pylist() for k in keys]
    assert per_day == [list(range(0, 2)), list(range(2, 26)), list(range(26, 40))]


def test_multipart_upload_with_equal_parts_reads_back_intact(job: Job) -> None:
    import os

    rows = 200 * 4  # 800 rows of 256 KiB random bytes: ~200 MiB that does not compress
    blob = pa.array([os.urandom(256 * 1024) for _ in range(rows)], pa.binary())
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "blob": blob})
    pq.write_table(table, job.inbox / "big.parquet", compression="none")
    # Through a proxy that checks each PUT's signed payload hash against its body, as S3 does (the
    # parts' digests are computed in the threads that read them, not by botocore).
    with HashCheckingProxy(urlparse(job.r2.endpoint_url).port or 0) as proxy:
        job.endpoint_url = proxy.url
        job.configure(
            batch={"max_bytes": "1GiB"},
            output={"compression": "none"},
            upload={"multipart_threshold": "64MiB", "part_size": "16MiB"},
        )
        r = job.run_once()
    assert r.returncode == 0, r.stderr
    assert proxy.mismatched == 0 and proxy.hashed >= 13  # every part (and the index) checked

    [key] = job.keys()
    s3 = job.r2.token_s3()
    head = s3.head_object(Bucket=job.r2.bucket, Key=key)
    size = head["ContentLength"]
    assert size > 200 * 2**20
    parts = -(-size // (16 * 2**20))
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # a multipart object of that many parts
    part_sizes = [
        s3.head_object(Bucket=job.r2.bucket, Key=key, PartNumber=n)["ContentLength"]
        for n in range(1, parts + 1)
    ]
    assert part_sizes[:-1] == [16 * 2**20] * (parts - 1)
    assert 0 < part_sizes[-1] <= 16 * 2**20
    back = job.read(key)
    assert back.column("id").to_pylist() == list(range(rows))
    assert back.column("blob").equals(table.column("blob"))


def test_no_r2_configured_starts_the_local_r2(tmp_path: Path) -> None:
    """The README's main command: nothing configured, `ingest run --once` still works."""
    work = tmp_path
    (work / "inbox").mkdir()
    (work / "inbox" / "a.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(25)))
    r = ingest_without_r2(work, "run", "--once")
    assert r.returncode == 0, r.stderr
    assert "no R2 configured: using the local R2" in r.stdout
    assert "uploaded 25 records in 1 object" in r.stdout
    objects = list((work / ".ingest" / "local").rglob("*"))
    assert objects  # the local R2 kept its data under .ingest/local
    assert not (work / "inbox" / "a.jsonl").exists()


def test_temporary_credentials_scoped_to_the_output_prefix_can_upload(job: Job) -> None:
    write_jsonl(job.inbox / "a.jsonl", _rows(0, 10))
    job.configure(output={"prefix": job.prefix})
    env = {
        "R2_AUTH_MODE": "temporary",
        "R2_API_TOKEN": job.r2.api_token,
        "CLOUDFLARE_API_BASE_URL": job.r2.api_base_url,
    }
    r = job.run_once(**env, R2_ACCESS_KEY_ID="", R2_SECRET_ACCESS_KEY="")
    assert r.returncode == 0, r.stderr
    write_jsonl(job.inbox / "b.jsonl", _rows(10, 10))
    r = job.run_once(**env, R2_ACCESS_KEY_ID="", R2_SECRET_ACCESS_KEY="")
    assert r.returncode == 0, r.stderr
    day = today_dir()
    assert job.keys() == [f"{job.prefix}{day}/ingested_{n:04d}.parquet" for n in (1, 2)]
    assert sorted(int(row["id"]) for row in job.rows()) == list(range(20))
