"""Values arrive unchanged: types never alter what was written, drift does not split a table into
several types, timestamps keep their zone, `.json` documents are read whole, `partition_by` dates
every common time format. Output is checked with DuckDB, a reader this project did not write."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from tests.conftest import duck
from tests.integration.conftest import Job, readable_rows, write_jsonl


def _duck(job: Job, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """Every data object downloaded and opened with DuckDB as one table `t` (union by name)."""
    out = tmp_path / "downloaded"
    out.mkdir(exist_ok=True)
    s3 = job.r2.token_s3()
    for i, key in enumerate(job.keys()):
        (out / f"{i:04d}.parquet").write_bytes(s3.get_object(Bucket=job.r2.bucket, Key=key)["Body"].read())
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{out}/*.parquet', union_by_name=true)")
    return con


def _types(job: Job, tmp_path: Path, column: str) -> set[str]:
    """The DuckDB type of `column` in each data object separately."""
    s3 = job.r2.token_s3()
    types = set()
    for i, key in enumerate(job.keys()):
        path = tmp_path / f"one-{i}.parquet"
        path.write_bytes(s3.get_object(Bucket=job.r2.bucket, Key=key)["Body"].read())
        [row] = duck(f"""DESCRIBE SELECT "{column}" FROM '{path}'""")
        types.add(str(row[1]))
    return types


def test_csv_and_json_values_are_never_changed_by_their_types(job: Job, tmp_path: Path) -> None:
    (job.inbox / "people.csv").write_text(
        "id,zip,phone,price,ok\n1,01234,+15551234,1.5,true\n2,10115,+4930123,20,false\n"
    )
    big = 2**64 - 1
    write_jsonl(job.inbox / "ids.jsonl", [{"id": 3, "h": big, "n": 7}, {"id": 4, "h": 5, "n": 8}])
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr
    con = _duck(job, tmp_path)
    rows = con.execute("SELECT id, zip, phone, price, ok, h, n FROM t ORDER BY id").fetchall()
    assert rows == [
        (1, "01234", "+15551234", 1.5, True, None, None),
        (2, "10115", "+4930123", 20.0, False, None, None),
        (3, None, None, None, None, str(big), 7),
        (4, None, None, None, None, "5", 8),
    ]
    described = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE t)").fetchall())
    assert described["zip"] == "VARCHAR" and described["phone"] == "VARCHAR"
    assert described["n"] == "BIGINT"  # the huge h did not turn its neighbours into doubles


def test_schema_drift_keeps_one_type_per_field_across_runs(job: Job, tmp_path: Path) -> None:
    job.configure()
    write_jsonl(job.inbox / "1.jsonl", [{"v": 1.5}])
    assert job.run_once().returncode == 0
    write_jsonl(job.inbox / "2.jsonl", [{"v": "x"}, {"v": 3}])  # "x" first: must not doom the 3
    r = job.run_once()
    assert r.returncode == 0, r.stderr
    write_jsonl(job.inbox / "3.jsonl", [{"v": 4}])
    assert job.run_once().returncode == 0
    assert _types(job, tmp_path, "v") == {"DOUBLE"}
    assert sorted(v for (v,) in _duck(job, tmp_path).execute("SELECT v FROM t").fetchall()) == [1.5, 3.0, 4.0]
    [letter] = job.dead_letters()
    assert letter["source"] == "2.jsonl" and letter["line"] == 1
    assert "field 'v'" in letter["reason"] and '"x"' in letter["reason"]
    assert json.loads(letter["raw"]) == {"v": "x"}  # the line as it was written


@pytest.mark.parametrize("order", ["as-written", "reversed"])
def test_a_rows_fate_does_not_depend_on_its_neighbours_order(job: Job, tmp_path: Path, order: str) -> None:
    rows: list[dict[str, Any]] = [
        {"id": 1, "v": "x", "w": "a"},
        {"id": 2, "v": 3, "w": "b"},
        {"id": 3, "v": 4, "w": 5},
    ]
    write_jsonl(job.inbox / "a.jsonl", rows if order == "as-written" else rows[::-1])
    job.configure()
    assert job.run_once().returncode == 0
    got = _duck(job, tmp_path).execute("SELECT id, v, w FROM t ORDER BY id").fetchall()
    # Numbers among text become their text, however many numbers there are: every row lands.
    assert got == [(1, "x", "a"), (2, "3", "b"), (3, "4", "5")]
    assert job.dead_letters() == []


def test_timestamps_keep_their_zone_the_same_way_in_every_format(job: Job, tmp_path: Path) -> None:
    write_jsonl(
        job.inbox / "a.jsonl",
        [{"id": 1, "at": "2024-08-02T10:00:00Z", "local": "2024-08-02T10:00:00"}],
    )
    (job.inbox / "b.csv").write_text("id,at,local\n2,2024-08-02T12:00:00+02:00,2024-08-02 11:30:00.250\n")
    job.configure()
    assert job.run_once().returncode == 0
    assert _types(job, tmp_path, "at") == {"TIMESTAMP WITH TIME ZONE"}
    assert _types(job, tmp_path, "local") == {"TIMESTAMP"}
    con = _duck(job, tmp_path)
    con.execute("SET TimeZone = 'UTC'")
    got = con.execute('SELECT id, "at", "local" FROM t ORDER BY id').fetchall()
    assert got == [
        (1, datetime(2024, 8, 2, 10, tzinfo=UTC), datetime(2024, 8, 2, 10)),
        (2, datetime(2024, 8, 2, 10, tzinfo=UTC), datetime(2024, 8, 2, 11, 30, 0, 250000)),
    ]


def _nested(i: int, zone: str) -> dict[str, Any]:
    return {
        "id": i,
        "at": "2024-08-02T12:00:00+02:00",
        "d": {
            "n": i,
            "at": f"2024-08-02T12:00:00{zone}",
            "day": "2024-08-02",
            "local": "2024-08-02T10:00:00",
        },
        "stamps": ["2024-08-02T10:00:00Z", None],
        "events": [{"kind": "x", "at": "2024-08-02T10:00:00.5Z"}],
        "mixed": {"t": "2024-08-02T10:00:00Z" if i % 2 else "2024-08-02T10:00:00"},
    }


def test_nested_timestamps_keep_their_zone_like_top_level_ones_whichever_path_parsed_them(
    job: Job, tmp_path: Path
) -> None:
    # a.jsonl takes pyarrow's reader; b.jsonl's bad line sends its block to the per-line parse. Both
    # are in one batch: their nested fields must come out with one type, and values unchanged.
    write_jsonl(job.inbox / "a.jsonl", [_nested(i, "+02:00") for i in (1, 2, 3)])
    good = "".join(json.dumps(_nested(i, "+02:00")) + "\n" for i in (4, 5))
    (job.inbox / "b.jsonl").write_text(good + '{"id": 6, "d": \n' + json.dumps(_nested(7, "+02:00")) + "\n")
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr
    [letter] = job.dead_letters()
    assert letter["source"] == "b.jsonl" and letter["line"] == 3
    assert sorted(row["id"] for row in readable_rows(job, tmp_path)) == [1, 2, 3, 4, 5, 7]
    con = _duck(job, tmp_path)
    con.execute("SET TimeZone = 'UTC'")
    types = con.execute(
        "SELECT DISTINCT typeof(d.at), typeof(d.day), typeof(d.local), typeof(stamps), "
        'typeof(events[1].at), typeof(mixed.t), typeof("at") FROM t'
    ).fetchall()
    zoned = "TIMESTAMP WITH TIME ZONE"
    assert types == [(zoned, "DATE", "TIMESTAMP", f"{zoned}[]", zoned, "VARCHAR", zoned)]
    got = con.execute(
        'SELECT DISTINCT d.at, d.day, d.local, stamps, events[1].at, "at" = d.at FROM t'
    ).fetchall()
    at = datetime(2024, 8, 2, 10, tzinfo=UTC)
    assert got == [
        (at, date(2024, 8, 2), datetime(2024, 8, 2, 10), [at, None], at.replace(microsecond=500000), True)
    ]
    texts = con.execute("SELECT id, mixed.t FROM t ORDER BY id").fetchall()
    assert texts == [(i, _nested(i, "")["mixed"]["t"]) for i in (1, 2, 3, 4, 5, 7)]
    polars = pl.concat(
        [pl.read_parquet(p) for p in sorted((tmp_path / "downloaded").glob("*.parquet"))], how="diagonal"
    )
    assert polars.schema["d"] == pl.Struct(
        {
            "n": pl.Int64,
            "at": pl.Datetime("ms", "UTC"),
            "day": pl.Date,
            "local": pl.Datetime("ms"),
        }
    )
    assert polars["d"].struct.field("at").to_list() == [at] * 6


def _by_day(job: Job) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key in job.keys():  # noqa: SIM118 (a method of Job, not a dict)
        out.setdefault(key.removeprefix(job.prefix)[:10], []).extend(job.read(key).column("id").to_pylist())
    return {day: sorted(ids) for day, ids in out.items()}


def test_partition_by_dates_epoch_numbers_by_their_magnitude(job: Job) -> None:
    rows: list[dict[str, Any]] = [
        {"id": 1, "ts": 1722556800},  # 2024-08-02 00:00:00 UTC, seconds
        {"id": 2, "ts": 1722643199999},  # 2024-08-02 23:59:59.999, milliseconds
        {"id": 3, "ts": 1722643200.5},  # 2024-08-03, float seconds
        {"id": 4, "ts": 1722556800000000},  # microseconds
        {"id": 5, "ts": 1722643200000000000},  # 2024-08-03, nanoseconds
    ]
    write_jsonl(job.inbox / "epochs.jsonl", rows)
    job.configure(output={"prefix": job.prefix, "partition_by": "ts"})
    r = job.run_once()
    assert r.returncode == 0, r.stderr
    assert _by_day(job) == {"2024/08/02": [1, 2, 4], "2024/08/03": [3, 5]}
    assert job.dead_letters() == []


def test_partition_by_dates_iso_texts_and_dead_letters_name_file_and_line(job: Job) -> None:
    write_jsonl(
        job.inbox / "iso.jsonl",
        [
            {"id": 5, "ts": "2024-08-02T23:30:00.123456789-01:00"},  # 9 digits, 00:30 UTC on the 3rd
            {"id": 6, "ts": "2024-08-02"},  # a date alone, next to zoned times
            {"id": 7, "ts": "2024-08-03T01:00:00+02:00"},  # 23:00 UTC on the 2nd
            {"id": 8, "ts": "soon"},
        ],
    )
    job.configure(output={"prefix": job.prefix, "partition_by": "ts"})
    r = job.run_once()
    assert r.returncode == 0, r.stderr
    assert _by_day(job) == {"2024/08/02": [6, 7], "2024/08/03": [5]}
    [letter] = job.dead_letters()
    assert letter["source"] == "iso.jsonl" and letter["line"] == 4
    assert letter["raw"] == json.dumps({"id": 8, "ts": "soon"})  # the line exactly as written


def test_a_pretty_printed_json_document_is_read_whole_and_a_broken_one_is_kept(job: Job) -> None:
    (job.inbox / "array.json").write_text(json.dumps([{"id": 1}, {"id": 2}, [3], {"id": 4}], indent=2))
    (job.inbox / "object.json").write_text(json.dumps({"id": 5, "nested": {"a": [1, 2]}}, indent=2))
    broken = job.inbox / "broken.json"
    broken.write_text('[\n  {"id": 6},\n  {"id": 7}\n')  # cut off: none of it may be ingested
    job.configure()
    r = job.run_once()
    assert r.returncode == 1 and "broken.json" in r.stderr and "not a valid JSON document" in r.stderr
    assert sorted(int(row["id"]) for row in job.rows()) == [1, 2, 4, 5]
    [letter] = job.dead_letters()
    assert letter["source"] == "array.json" and "element 3" in letter["reason"] and letter["raw"] == "[3]"
    assert list((job.inbox / ".ingest" / "claimed").rglob("*--broken.json"))  # kept, claimed
    assert not (job.inbox / "array.json").exists()
