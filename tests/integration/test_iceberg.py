"""`ingest run` with [iceberg] on, against the local R2's catalog: every row committed once, read back
through the catalog (PyIceberg), and every data file opened with DuckDB and polars."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.iceberg.commits import BATCH_IDS
from tests.conftest import duck
from tests.faultproxy import FaultProxy, Faults
from tests.integration.conftest import Job, logs_of, readyz, wait_for, write_jsonl

UTC_US = pa.timestamp("us", tz="UTC")
OUTAGE = 20.0  # seconds the catalog answers 503 under a running worker


def _iceberg(job: Job, **extra: Any) -> dict[str, Any]:
    namespace = f"ns_{uuid.uuid4().hex[:8]}"
    return {"enabled": True, "namespace": namespace, "commit_interval": "1s", **extra}


def _env(job: Job, catalog_uri: str = "") -> dict[str, str]:
    env = job.r2.env
    return {
        "R2_CATALOG_URI": catalog_uri or env["R2_CATALOG_URI"],
        "R2_WAREHOUSE": env["R2_WAREHOUSE"],
        "R2_CATALOG_TOKEN": env["R2_CATALOG_TOKEN"],
    }


def _records(start: int, n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "at": f"2026-11-{26 + i % 3:02d}T10:00:00.{i % 1000:03d}Z",
            "name": f"r{i}",
            "local": f"2026-11-26T08:00:{i % 60:02d}",  # naive: no zone
            "tags": ["a", "b"][: i % 3],
            "where": {"x": i % 7, "y": str(i)},
        }
        for i in range(start, start + n)
    ]


def _table(job: Job, namespace: str, name: str = "default") -> Any:
    return job.r2.catalog().load_table(f"{namespace}.{name}")


def _scan_ids(table: Any) -> list[int]:
    table.refresh()
    return [int(i) for i in table.scan().to_arrow().column("id").to_pylist()]


def _data_files(job: Job, table: Any, tmp: Path) -> list[str]:
    """Every data file of the table: under its location's data/YYYY/MM/DD/, opened with pyarrow,
    polars and DuckDB."""
    paths = table.inspect.files().column("file_path").to_pylist()
    location = table.location().rstrip("/")
    s3 = job.r2.token_s3()
    for n, path in enumerate(paths):
        assert re.fullmatch(re.escape(location) + r"/data/\d{4}/\d\d/\d\d/ingested_\d{4}\.parquet", path), (
            path
        )
        bucket, _, key = path.removeprefix("s3://").partition("/")
        local = tmp / f"file-{n}.parquet"
        local.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        rows = pq.read_table(local).num_rows
        assert pl.read_parquet(local).height == rows
        ((count,),) = duck(f"SELECT count(*) FROM read_parquet('{local}')")
        assert count == rows
    return list(paths)


def _snapshot_batch_ids(table: Any) -> list[str]:
    ids: list[str] = []
    for snapshot in table.snapshots():
        ids += (snapshot.summary.additional_properties.get(BATCH_IDS) or "").split()
    return ids


def test_run_once_commits_every_row_once_into_a_day_partitioned_table(job: Job, tmp_path: Path) -> None:
    iceberg = _iceberg(job)
    job.configure(
        iceberg=iceberg, output={"partition_by": "at"}, batch={"max_records": 1000}, upload={"concurrency": 4}
    )
    for f in range(3):
        write_jsonl(job.inbox / f"part-{f}.jsonl", _records(f * 1500, 1500))
    r = job.run_once(**_env(job))
    assert r.returncode == 0, r.stderr
    assert not list(job.inbox.rglob("*.jsonl")), "input acknowledged"
    assert f"committed 4,500 records to Iceberg {iceberg['namespace']}.default in 1 snapshot (" in r.stdout

    table = _table(job, iceberg["namespace"])
    ids = _scan_ids(table)
    assert sorted(ids) == list(range(4500)), "every row once"
    schema = table.schema()
    assert str(schema.find_field("at").field_type) == "timestamptz"
    assert str(schema.find_field("id").field_type) == "long"
    assert str(schema.find_field("local").field_type) == "timestamp"
    assert [(f.name, str(f.transform)) for f in table.spec().fields] == [("at_day", "day")]
    paths = _data_files(job, table, tmp_path)
    batch_ids = _snapshot_batch_ids(table)
    assert len(batch_ids) == len(set(batch_ids)) == len(paths), "each file added once, with its batch id"
    logs = logs_of(r.stderr)
    committed = [e for e in logs if e.get("event") == "committed"]
    assert committed and sum(e["objects"] for e in committed) == len(paths)
    # Nested values and timestamps as sent.
    rows = {row["id"]: row for row in table.scan(row_filter="id < 3").to_arrow().to_pylist()}
    assert rows[2]["tags"] == ["a", "b"] and rows[2]["where"] == {"x": 2, "y": "2"}
    assert rows[1]["at"].isoformat() == "2026-11-27T10:00:00.001000+00:00"
    assert rows[1]["local"].isoformat() == "2026-11-26T08:00:01"


def test_without_partition_by_the_table_is_partitioned_by_ingestion_day(job: Job) -> None:
    iceberg = _iceberg(job)
    job.configure(iceberg=iceberg)
    write_jsonl(job.inbox / "a.jsonl", [{"id": i, "n": i * 2} for i in range(100)])
    r = job.run_once(**_env(job))
    assert r.returncode == 0, r.stderr
    table = _table(job, iceberg["namespace"])
    assert [(f.name, str(f.transform)) for f in table.spec().fields] == [("_ingested_at_day", "day")]
    arrow = table.scan().to_arrow()
    assert sorted(arrow.column("id").to_pylist()) == list(range(100))
    at = arrow.column("_ingested_at").to_pylist()
    assert all(abs(time.time() - a.timestamp()) < 600 for a in at)


def test_routed_tables_become_tables_and_schema_evolves(job: Job) -> None:
    iceberg = _iceberg(job)
    sources = [
        {"kind": "directory", "path": str(job.inbox / t), "table": t, "settle_seconds": "50ms"}
        for t in ("orders", "page-views")
    ]
    job.configure(
        iceberg=iceberg,
        sources=sources,
        output={"key_template": "{prefix}{table}/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet"},
    )
    write_jsonl(job.inbox / "orders" / "a.jsonl", [{"id": i, "small": i} for i in range(200) if i % 2])
    views = [{"id": i, "small": i} for i in range(200) if not i % 2]
    write_jsonl(job.inbox / "page-views" / "a.jsonl", views)
    assert (r := job.run_once(**_env(job))).returncode == 0, r.stderr
    # A second run adds a field; `small` stays long (Iceberg cannot make it a double): 0.5 is a dead letter.
    more = [{"id": 1000 + i, "small": 0.5 if i == 2 else i, "new": "x"} for i in range(5)]
    write_jsonl(job.inbox / "orders" / "b.jsonl", more)
    assert (r := job.run_once(**_env(job))).returncode == 0, r.stderr
    orders = _table(job, iceberg["namespace"], "orders")
    views = _table(job, iceberg["namespace"], "page_views")
    assert sorted(_scan_ids(orders)) == [i for i in range(200) if i % 2] + [1000, 1001, 1003, 1004]
    assert sorted(_scan_ids(views)) == [i for i in range(200) if not i % 2]
    assert str(orders.schema().find_field("new").field_type) == "string"
    assert str(orders.schema().find_field("small").field_type) == "long"
    (dead,) = job.dead_letters()
    assert dead["line"] == 3 and "'small'" in dead["reason"] and "int64" in dead["reason"], dead


def test_values_iceberg_cannot_hold_are_dead_letters_naming_field_and_type(job: Job) -> None:
    iceberg = _iceberg(job)
    job.configure(iceberg=iceberg, output={"schema_file": str(_schema_file(job))})
    rows = [
        {"id": i, "at": "2026-11-26T10:00:00.000000001Z" if i == 7 else "2026-11-26T10:00:00Z"}
        for i in range(50)
    ]
    write_jsonl(job.inbox / "a.jsonl", rows)
    r = job.run_once(**_env(job))
    assert r.returncode == 0, r.stderr
    table = _table(job, iceberg["namespace"])
    assert sorted(_scan_ids(table)) == [i for i in range(50) if i != 7]
    assert str(table.schema().find_field("at").field_type) == "timestamptz"
    dead = job.dead_letters()
    assert len(dead) == 1 and dead[0]["line"] == 8, dead
    assert "'at'" in dead[0]["reason"] and "timestamp[us, tz=UTC]" in dead[0]["reason"], dead[0]


def _schema_file(job: Job) -> Path:
    path = job.dir / "schema.json"
    path.write_text(json.dumps({"at": "timestamp[ns, tz=UTC]"}))
    return path


def test_an_object_that_cannot_fit_an_existing_table_becomes_dead_letters(job: Job) -> None:
    iceberg = _iceberg(job)
    catalog = job.r2.catalog()
    catalog.create_namespace(iceberg["namespace"])
    catalog.create_table(f"{iceberg['namespace']}.default", schema=pa.schema([pa.field("n", pa.int64())]))
    job.configure(iceberg=iceberg)
    write_jsonl(job.inbox / "a.jsonl", [{"n": f"text {i}"} for i in range(10)])
    r = job.run_once(**_env(job))
    assert r.returncode == 0, r.stderr
    assert not list(job.inbox.rglob("*.jsonl"))
    dead = job.dead_letters()
    assert sorted(json.loads(d["raw"])["n"] for d in dead) == sorted(f"text {i}" for i in range(10))
    assert all("'n'" in d["reason"] or "n:" in d["reason"] for d in dead), dead[0]
    assert _scan_ids_or_empty(job, iceberg["namespace"]) == 0


def _scan_ids_or_empty(job: Job, namespace: str) -> int:
    return int(_table(job, namespace).scan().to_arrow().num_rows)


def test_a_refused_catalog_token_is_one_line_and_exit_2(job: Job) -> None:
    job.configure(iceberg=_iceberg(job))
    write_jsonl(job.inbox / "a.jsonl", [{"id": 1}])
    r = job.run_once(**(_env(job) | {"R2_CATALOG_TOKEN": "not-a-token"}))
    assert r.returncode == 2, r.stderr
    assert "iceberg.token" in r.stderr and "Traceback" not in r.stderr
    assert "not-a-token" not in r.stderr
    assert list(job.inbox.rglob("*.jsonl")), "nothing taken"


def test_a_read_only_catalog_token_is_refused_at_start_naming_the_namespace(job: Job) -> None:
    from tests.local.test_catalog import CATALOG_READ, _token

    iceberg = _iceberg(job)
    job.configure(iceberg=iceberg)
    write_jsonl(job.inbox / "a.jsonl", [{"id": 1}])
    reader = _token(job.r2, CATALOG_READ)
    r = job.run_once(**(_env(job) | {"R2_CATALOG_TOKEN": reader}))
    assert r.returncode == 2, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert f"iceberg.namespace {iceberg['namespace']}: the token may not write there" in line, line
    assert "Workers R2 Data Catalog Write" in line and reader not in r.stderr
    assert list(job.inbox.rglob("*.jsonl")) and not job.keys(), "nothing taken, nothing written"


CRASHES = [("put", 2), ("uploaded", 2), ("committed", 1), ("commit journaled", 1), ("acked", 2)]


@pytest.mark.parametrize(("point", "n"), CRASHES, ids=[p for p, _ in CRASHES])
def test_a_crash_around_the_commit_commits_every_row_exactly_once(job: Job, point: str, n: int) -> None:
    iceberg = _iceberg(job)
    job.configure(iceberg=iceberg, batch={"max_records": 500}, upload={"concurrency": 2})
    for f in range(4):
        write_jsonl(job.inbox / f"part-{f}.jsonl", _records(f * 500, 500))
    first = job.run_once(**_env(job), INGEST_CRASH_AT=f"{point}:{n}")
    assert first.returncode == -signal.SIGKILL, f"never reached {point}:{n}\n{first.stderr}"
    second = job.run_once(**_env(job))
    assert second.returncode == 0, second.stderr
    assert not list(job.inbox.rglob("*.jsonl"))
    table = _table(job, iceberg["namespace"])
    ids = _scan_ids(table)
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} rows twice"
    assert sorted(ids) == list(range(2000))
    batch_ids = _snapshot_batch_ids(table)
    assert len(batch_ids) == len(set(batch_ids))
    files = table.inspect.files().column("file_path").to_pylist()
    assert len(files) == len(set(files))


def test_a_catalog_outage_holds_commits_and_readiness_then_commits_once(job: Job) -> None:
    """The catalog answers 503 for 20 s under a running worker: uploads go on into R2, readiness turns false
    with the reason, the input stays unacknowledged; when it answers again, everything is committed
    once and the input acknowledged."""
    from tests.integration.conftest import free_port

    iceberg = _iceberg(job)
    port = free_port()
    api = urlparse(job.r2.env["R2_CATALOG_URI"])
    with FaultProxy(api.port or 0, Faults()) as proxy:
        job.configure(
            iceberg=iceberg,
            server={"listen": f"127.0.0.1:{port}", "ready_failure_seconds": "2s"},
            retry={"initial": "100ms", "max": "1s"},
            batch={"max_age": "200ms"},
        )
        write_jsonl(job.inbox / "a.jsonl", [{"id": i} for i in range(100)])
        proc = job.start(**_env(job, proxy.url + api.path))
        err = ""
        try:
            wait_for(lambda: not list(job.inbox.rglob("*a.jsonl")), 60, "the first file to be committed")
            table = _table(job, iceberg["namespace"])
            proxy.faults.unavailable = 1.0
            outage = time.monotonic()
            write_jsonl(job.inbox / "b.jsonl", [{"id": 100 + i} for i in range(200)])
            wait_for(lambda: len(_stored(job, table)) == 2, 60, "the second object to be uploaded")
            wait_for(lambda: readyz(port) == 503, 60, "readiness to fail")
            reason = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).text
            assert "Iceberg catalog" in reason, reason
            assert list(job.inbox.rglob("*b.jsonl")), "acknowledged before its commit"
            status = job.cli("status", **_env(job)).stdout
            assert "uploaded, awaiting their Iceberg commit: 1 object" in status, status
            assert sorted(_scan_ids(table)) == list(range(100))
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - outage)))  # the whole outage
            proxy.faults.unavailable = 0.0
            wait_for(lambda: not list(job.inbox.rglob("*b.jsonl")), 60, "the input to be acknowledged")
            wait_for(lambda: readyz(port) == 200, 30, "readiness to come back")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
    assert sorted(_scan_ids(table)) == list(range(300))
    assert len(_stored(job, table)) == 2
    events = Counter(e.get("event") for e in logs_of(err))
    assert events["Iceberg catalog call failed; retrying"] > 0, err[-3000:]


def _stored(job: Job, table: Any) -> list[str]:
    """Data objects under the table's location in R2 (committed or not)."""
    bucket, _, prefix = table.location().removeprefix("s3://").partition("/")
    s3 = job.r2.token_s3()
    found = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/data/").get("Contents", [])
    return [o["Key"] for o in found]


def test_doctor_checks_the_catalog_the_tokens_rights_and_the_tables_types(job: Job) -> None:
    from tests.local.test_catalog import CATALOG_READ, _token

    iceberg = _iceberg(job)
    catalog = job.r2.catalog()
    catalog.create_namespace(iceberg["namespace"])
    catalog.create_table(f"{iceberg['namespace']}.default", schema=pa.schema([pa.field("id", pa.int64())]))
    schema = job.dir / "schema.json"
    schema.write_text(json.dumps({"id": "string"}))
    job.configure(iceberg=iceberg, output={"schema_file": str(schema)})
    r = job.cli("doctor", **_env(job))
    lines = [ln for ln in r.stdout.splitlines() if "iceberg" in ln]
    assert r.returncode == 1, r.stdout + r.stderr
    assert any("catalog at" in ln and "answers" in ln for ln in lines), r.stdout
    assert any("may make tables and commit" in ln for ln in lines), r.stdout
    assert any("id is int64 in the table, string in output.schema_file" in ln for ln in lines), r.stdout
    assert not [t for t in catalog.list_tables(iceberg["namespace"]) if "doctor" in t[-1]], "probe dropped"

    reader = _token(job.r2, CATALOG_READ)
    schema.write_text(json.dumps({"id": "int64"}))
    r = job.cli("doctor", **(_env(job) | {"R2_CATALOG_TOKEN": reader}))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "may not write there" in r.stdout and "Workers R2 Data Catalog Write" in r.stdout, r.stdout
    assert reader not in r.stdout + r.stderr


def test_two_workers_committing_to_one_table_over_http_lose_and_double_nothing(
    job: Job, tmp_path: Path
) -> None:
    """Two replicas take pushes for one table and commit every 100 ms: their commits race (the
    catalog's conflict, refresh, retry); every id is in the table once."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.conftest import free_port

    iceberg = _iceberg(job, commit_interval="100ms")
    token = "two-workers-token"
    workers: list[tuple[Job, int]] = []
    for n in range(2):
        own = Job(job.r2, tmp_path / f"w{n}", job.prefix)
        own.dir.mkdir()
        port = free_port()
        own.configure(
            sources=[{"kind": "http", "token": token}],
            server={"listen": f"127.0.0.1:{port}"},
            batch={"max_age": "100ms"},
            worker={"id": f"replica-{n}"},
            iceberg=iceberg,
        )
        workers.append((own, port))
    procs = [own.start(**_env(own)) for own, _ in workers]
    try:
        for _, port in workers:
            wait_for(lambda p=port: readyz(p) == 200, 60, "a worker to be ready")

        def post(i: int) -> int:
            port = workers[i % 2][1]
            body = "".join(json.dumps({"id": i * 100 + k}) + "\n" for k in range(100))
            answer = httpx.post(
                f"http://127.0.0.1:{port}/v1/records",
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"},
                timeout=30,
            )
            return answer.status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(post, range(60))) == {202}
        table_name = f"{iceberg['namespace']}.default"
        late = ""
        try:
            wait_for(
                lambda: _rows_or_zero(job, table_name) >= 6000, 120, "every accepted row to be committed"
            )
        except AssertionError as exc:
            late = f"{exc}: {_rows_or_zero(job, table_name)} rows"
    finally:
        errs = []
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                errs.append(proc.communicate(timeout=60)[1])
            except subprocess.TimeoutExpired:
                proc.kill()
                errs.append(proc.communicate()[1])
    assert not late, late + "\n" + "\n".join(err[-6000:] for err in errs)
    table = job.r2.catalog().load_table(table_name)
    ids = _scan_ids(table)
    assert len(ids) == len(set(ids)) and sorted(ids) == list(range(6000))
    batch_ids = _snapshot_batch_ids(table)
    assert len(batch_ids) == len(set(batch_ids))
    committers = {i for i, err in enumerate(errs) if any(e.get("event") == "committed" for e in logs_of(err))}
    assert committers == {0, 1}, "both workers committed"
    print(
        "CONFLICTS",
        sum(e.get("event") == "iceberg commit conflict; retrying" for err in errs for e in logs_of(err)),
    )


def _rows_or_zero(job: Job, identifier: str) -> int:
    try:
        return int(job.r2.catalog().load_table(identifier).scan().to_arrow().num_rows)
    except Exception:
        return 0


SEEDS = [pytest.param(1), *(pytest.param(n, marks=pytest.mark.slow) for n in range(2, 7))]


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_at_random_moments_commits_every_row_exactly_once(job: Job, seed: int) -> None:
    """Two runs killed after random delays (seeded: the schedule is in the failure), then a run to the
    end: every row once in the table, no batch id in two snapshots, every file added once."""
    import random

    rng = random.Random(seed)
    iceberg = _iceberg(job)
    job.configure(iceberg=iceberg, batch={"max_records": 2000}, upload={"concurrency": 4})
    for f in range(10):
        write_jsonl(job.inbox / f"part-{f}.jsonl", _records(f * 2000, 2000))
    schedule = []
    for _ in range(2):
        delay = rng.uniform(0.5, 4.0)
        proc = job.start("--once", **_env(job))
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        schedule.append(f"killed after {delay:.2f}s (exit {proc.returncode})")
    last = job.run_once(**_env(job))
    assert last.returncode == 0, f"{schedule}\n{last.stderr}"
    assert not list(job.inbox.rglob("*.jsonl")), schedule
    table = _table(job, iceberg["namespace"])
    ids = _scan_ids(table)
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} rows twice; {schedule}"
    assert sorted(ids) == list(range(20_000)), schedule
    batch_ids = _snapshot_batch_ids(table)
    assert len(batch_ids) == len(set(batch_ids)), schedule
    files = table.inspect.files().column("file_path").to_pylist()
    assert len(files) == len(set(files)), schedule


def test_a_million_records_scan_back_exactly_from_dated_keys_under_the_table(
    job: Job, tmp_path: Path
) -> None:
    """About 15 s: the issue's own scale, kept in the default run."""
    iceberg = _iceberg(job)
    job.configure(iceberg=iceberg, output={"partition_by": "at"})
    for f in range(10):
        write_jsonl(job.inbox / f"big-{f}.jsonl", _records(f * 100_000, 100_000))
    r = job.run_once(timeout=900, **_env(job))
    assert r.returncode == 0, r.stderr[-5000:]
    table = _table(job, iceberg["namespace"])
    ids = _scan_ids(table)
    assert len(ids) == 1_000_000 and sorted(ids) == list(range(1_000_000))
    _data_files(job, table, tmp_path)  # dated ingested_NNNN keys under the location, DuckDB and polars


def test_a_dead_workers_uploaded_but_uncommitted_redis_entries_are_committed_by_the_heir(
    job: Job, redis_server: Any
) -> None:
    """SIGKILL after the upload, before the commit, never restarted: the heir finds the object through
    the ledger, commits it (it was in no snapshot) and acks; every entry is in the table once."""
    from tests.integration.test_redis import STREAM, configure, group_state, load, run_worker, stop

    redis = redis_server.client()
    load(redis, 0, 20_000)
    iceberg = _iceberg(job)
    configure(job, redis_server, read_count=2000)
    job.configure(**{**job.config, "iceberg": iceberg})
    dead = run_worker(job, "doomed", "--once", INGEST_CRASH_AT="uploaded", **_env(job))
    dead.communicate(timeout=120)
    assert dead.returncode == -signal.SIGKILL, "uploaded was never reached"
    heir = run_worker(job, "heir", **_env(job))
    try:
        wait_for(lambda: group_state(redis, STREAM) == {"pending": 0, "lag": 0}, 120, "the heir to take over")
    finally:
        err = stop(heir)
    assert "committed an object another worker uploaded" in err, err[-3000:]
    ids = _scan_ids(_table(job, iceberg["namespace"]))
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} rows twice"
    assert sorted(ids) == list(range(20_000))
