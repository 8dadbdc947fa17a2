"""Tables and commits against the real catalog of the local R2 (SeaweedFS's Iceberg REST catalog behind
R2's authentication), read back through the catalog with PyIceberg, and the data files with DuckDB."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.config import IcebergConfig
from ingest.iceberg.catalog import connect
from ingest.iceberg.commits import BATCH_IDS, DoesNotFit, Tables
from ingest.iceberg.schema import conform
from tests.conftest import LocalR2, duck
from tests.iceberg.conftest import _put, _rows


def _scan(tables: Tables, name: str) -> list[int]:
    table = tables.catalog.load_table(f"{tables.namespace}.{name}")
    return sorted(table.scan().to_arrow().column("id").to_pylist())


def test_files_are_committed_once_with_their_batch_ids_and_scan_back(tables: Tables) -> None:
    table = tables.table("events", _rows(range(0)).schema)
    assert [f.name for f in table.spec().fields] == ["at_day"]  # partitioned by day of `at`
    first = [
        _put(table, _rows(range(0, 100)), "1970/01/01", 1),
        _put(table, _rows(range(100, 250), 1), "1970/01/02", 2),
    ]
    assert tables.commit("events", first) == first
    assert _scan(tables, "events") == list(range(250))

    # The same files again (an answer lost, a restart): nothing is added twice.
    assert tables.commit("events", first) == []
    assert tables.commit("events", first, recovering=True) == []
    second = [_put(table, _rows(range(250, 300)), "1970/01/01", 3)]
    assert tables.commit("events", [*first, *second]) == second
    assert _scan(tables, "events") == list(range(300))

    loaded = tables.catalog.load_table(f"{tables.namespace}.events")
    summaries = [s.summary.additional_properties[BATCH_IDS].split() for s in loaded.snapshots() if s.summary]
    batches = [b for ids in summaries for b in ids]
    assert sorted(batches) == sorted(f.batch_id for f in [*first, *second])  # each batch in one snapshot
    assert len(summaries) == 2  # one snapshot per commit, several objects each
    # Every data file is a dated ingested_NNNN key under the table's location, and opens in DuckDB.
    paths = sorted(t.file.file_path for t in loaded.scan().plan_files())
    assert paths == sorted(f.path for f in [*first, *second])
    with loaded.io.new_input(paths[0]).open() as f:
        data = f.read()
    assert duck("SELECT count(*) FROM read_parquet(?)", [_tmp(data)]) == [(100,)]


def _tmp(data: bytes) -> str:
    path = f"/tmp/iceberg-{uuid.uuid4().hex}.parquet"
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def test_a_file_the_table_references_is_found_on_recovery_without_its_snapshot_summary(
    tables: Tables,
) -> None:
    """A batch whose snapshot was expired since (R2's snapshot expiration) is still found by its path."""
    table = tables.table("t", _rows(range(0)).schema)
    f = _put(table, _rows(range(10)), "1970/01/01", 1)
    table.add_files([f.path])  # committed without a batch id in the summary
    assert tables.commit("t", [f], recovering=True) == []
    assert _scan(tables, "t") == list(range(10))


def test_two_writers_committing_to_one_table_at_once_lose_nothing(tables: Tables, local_r2: LocalR2) -> None:
    table = tables.table("shared", _rows(range(0)).schema)
    config = IcebergConfig(
        enabled=True,
        catalog_uri=local_r2.env["R2_CATALOG_URI"],
        warehouse=local_r2.env["R2_WAREHOUSE"],
        token=local_r2.env["R2_CATALOG_TOKEN"],
    )
    writers = [tables, Tables(connect(config), tables.namespace, partition_by="at")]
    files = [
        [
            _put(table, _rows(range(w * 1000 + n * 10, w * 1000 + n * 10 + 10)), "1970/01/01", w * 100 + n)
            for n in range(6)
        ]
        for w in range(2)
    ]
    # Deterministic first: both hold the table as it is now; one commits, then the other (stale) does.
    writers[1].table("shared", _rows(range(0)).schema)
    stale = [_put(table, _rows(range(5000, 5003)), "1970/01/01", 900 + w) for w in range(2)]
    assert writers[0].commit("shared", [stale[0]]) == [stale[0]]
    assert writers[1].commit("shared", [stale[1]]) == [stale[1]]  # a conflict, refreshed and retried
    assert _scan(tables, "shared") == [5000, 5000, 5001, 5001, 5002, 5002]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def write(w: int) -> None:
        try:
            start.wait()
            for f in files[w]:
                writers[w].commit("shared", [f])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    expected = sorted(
        i for w in range(2) for n in range(6) for i in range(w * 1000 + n * 10, w * 1000 + n * 10 + 10)
    )
    # every row once: no lost commit, no duplicate
    assert _scan(tables, "shared") == sorted([*expected, 5000, 5000, 5001, 5001, 5002, 5002])


def test_the_schema_evolves_by_name_and_a_type_that_cannot_fit_is_refused(tables: Tables) -> None:
    small = pa.schema([("id", pa.int32()), ("score", pa.float32())])
    table = tables.table("evolving", small)
    tables.commit(
        "evolving",
        [
            _put(
                table,
                pa.table(
                    {"id": pa.array([1], pa.int32()), "score": pa.array([0.5], pa.float32())}, schema=small
                ),
                "2026/12/05",
                1,
            )
        ],
    )

    # A new field, and int → long, float → double: the table takes them; old rows read as null.
    wide = pa.schema([("id", pa.int64()), ("score", pa.float64()), ("extra", pa.string())])
    table = tables.table("evolving", wide)
    fields = {f.name: str(f.field_type) for f in table.schema().fields}
    assert fields == {"id": "long", "score": "double", "extra": "string"}
    rows = pa.table({"id": [2], "score": [1.5], "extra": ["x"]}, schema=wide)
    tables.commit("evolving", [_put(table, rows, "2026/12/05", 2)])
    read = tables.catalog.load_table(f"{tables.namespace}.evolving").scan().to_arrow().sort_by("id")
    assert read.to_pylist() == [{"id": 1, "score": 0.5, "extra": None}, {"id": 2, "score": 1.5, "extra": "x"}]

    with pytest.raises(DoesNotFit, match="id"):  # a string into a long column: never a failing commit loop
        tables.table("evolving", pa.schema([("id", pa.string())]))


def test_conform_gives_types_every_iceberg_reader_takes_and_refuses_what_would_change(tmp_path: Any) -> None:
    raw = pa.table(
        {
            "u8": pa.array([1, 255], pa.uint8()),
            "u64": pa.array([0, 2**63 - 1], pa.uint64()),
            "ns": pa.array([1_000, 2_000], pa.timestamp("ns", tz="Europe/Paris")),
            "naive": pa.array([1_000_000, 2_000_000], pa.timestamp("ns")),
            "nothing": pa.nulls(2),
            "tags": pa.array([["a"], []], pa.large_list(pa.large_string())),
            "cat": pa.array(["x", "y"]).dictionary_encode(),
        }
    )
    out = conform(raw)
    assert [str(t) for t in out.schema.types] == [
        "int32",
        "int64",
        "timestamp[us, tz=UTC]",
        "timestamp[us]",
        "string",
        "list<item: string>",
        "string",
    ]
    assert out.column("u64").to_pylist() == [0, 2**63 - 1]
    assert out.column("ns").cast(pa.int64()).to_pylist() == [1, 2]  # the same instants, in µs
    path = tmp_path / "c.parquet"
    pq.write_table(out, path)
    assert pl.read_parquet(path).height == 2 and duck(f"SELECT count(*) FROM '{path}'") == [(2,)]

    with pytest.raises(DoesNotFit, match="u64"):
        conform(pa.table({"u64": pa.array([2**63], pa.uint64())}))
    with pytest.raises(DoesNotFit, match="ns"):  # nanoseconds would be cut
        conform(pa.table({"ns": pa.array([1], pa.timestamp("ns"))}))
