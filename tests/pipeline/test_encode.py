from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.config import ConfigError, OutputConfig
from ingest.durable.deadletters import DeadLetters
from ingest.parsing.types import CELLS, TEXT_CELLS
from ingest.pipeline import encode
from ingest.pipeline.batch import Batch
from ingest.pipeline.encode import Encoder, load_schema
from ingest.sources.base import Chunk, SourceUnit, UnitHandle
from tests.conftest import duck


async def _noop() -> None:
    return None


def _batch(*tables: pa.Table) -> Batch:
    b = Batch(closed_at=datetime(2024, 8, 2, 12, tzinfo=UTC))
    unit = SourceUnit("in.jsonl", UnitHandle(_noop))
    line = 1
    for t in tables:
        b.add(Chunk(t, unit, first_line=line), t.nbytes)
        line += t.num_rows
    return b


def _dead(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for f in sorted(tmp_path.glob("dead/*.jsonl")) for x in f.read_text().splitlines()]


def _cells(table: pa.Table) -> pa.Table:
    """A table of CSV cells (text that may take a typed field's type), as the CSV reader marks it."""
    return table.replace_schema_metadata({CELLS: TEXT_CELLS})


def _encoder(tmp_path: Path, **output: object) -> Encoder:
    return Encoder(OutputConfig(**output), tmp_path / "spool", DeadLetters(tmp_path / "dead"))


def test_types_unify_across_files_int_float_and_null(tmp_path: Path) -> None:
    enc = _encoder(tmp_path)
    a = pa.table({"x": pa.array([1, 2], pa.int64()), "y": pa.nulls(2)})
    b = pa.table({"x": pa.array([1.5], pa.float64()), "y": pa.array(["s"]), "z": pa.array([True])})
    [obj] = enc.encode(_batch(a, b))
    out = pq.read_table(obj.path)
    assert out.schema.field("x").type == pa.float64()
    assert out.schema.field("y").type == pa.string()
    assert out.to_pylist() == [
        {"x": 1.0, "y": None, "z": None},
        {"x": 2.0, "y": None, "z": None},
        {"x": 1.5, "y": "s", "z": True},
    ]
    assert obj.records == 3 and obj.day == date(2024, 8, 2)
    assert pq.ParquetFile(obj.path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_a_batch_mixing_numbers_and_text_makes_text_whatever_the_order_and_counts(tmp_path: Path) -> None:
    for order in ((0, 1), (1, 0)):
        enc = _encoder(tmp_path / str(order))
        parts = [pa.table({"n": pa.array([1, 2, 5], pa.int64())}), pa.table({"n": pa.array(["3", "three"])})]
        [obj] = enc.encode(_batch(*(parts[i] for i in order)))
        assert sorted(pq.read_table(obj.path).column("n").to_pylist()) == ["1", "2", "3", "5", "three"]
        assert _dead(tmp_path / str(order)) == []


def test_json_text_never_becomes_a_number_of_a_known_number_field(tmp_path: Path) -> None:
    enc = _encoder(tmp_path)
    enc.encode(_batch(pa.table({"n": pa.array([1], pa.int64())})))
    assert enc.encode(_batch(pa.table({"n": pa.array(["3"])}))) == []  # JSON text "3" is no number
    [letter] = _dead(tmp_path)
    assert (
        "field 'n'" in str(letter["reason"])
        and '"3"' in str(letter["reason"])
        and "int64" in str(letter["reason"])
    )


def test_text_becomes_a_number_only_when_written_as_that_number(tmp_path: Path) -> None:
    enc = _encoder(tmp_path)
    enc.encode(_batch(pa.table({"zip": pa.array([10115], pa.int64())})))
    [obj] = enc.encode(_batch(_cells(pa.table({"zip": pa.array(["01234", "+49", "20095"])}))))
    assert pq.read_table(obj.path).column("zip").to_pylist() == [20095]
    assert sorted(str(d["reason"]).split(":")[1].split()[1] for d in _dead(tmp_path)) == ['"+49"', '"01234"']


def test_a_value_that_does_not_fit_the_tables_known_type_is_a_dead_letter_naming_field_type_value(
    tmp_path: Path,
) -> None:
    enc = _encoder(tmp_path)
    enc.encode(_batch(pa.table({"n": pa.array([1.5], pa.float64())})))  # the table's n is double now
    [obj] = enc.encode(_batch(_cells(pa.table({"n": pa.array(["3", "three", "4"])}))))
    assert pq.read_table(obj.path).column("n").to_pylist() == [3.0, 4.0]
    [letter] = _dead(tmp_path)
    assert letter["source"] == "in.jsonl" and letter["line"] == 2
    assert "field 'n'" in str(letter["reason"]) and '"three"' in str(letter["reason"])
    assert "double" in str(letter["reason"])
    assert json.loads(str(letter["raw"])) == {"n": "three"}  # no source file here: the row as JSON


def test_known_types_widen_and_survive_a_restart(tmp_path: Path) -> None:
    from ingest.pipeline.encode import load_schema_blob, schema_blob

    enc = _encoder(tmp_path)
    [a] = enc.encode(_batch(pa.table({"v": pa.array([1], pa.int64())})))
    assert pq.read_table(a.path).schema.field("v").type == pa.int64()
    [b] = enc.encode(_batch(pa.table({"v": pa.array([2.5])})))  # int → double: widened, not refused
    assert pq.read_table(b.path).column("v").to_pylist() == [2.5]
    learned = load_schema_blob(schema_blob(enc.schema()))
    assert learned is not None
    again = Encoder(OutputConfig(), tmp_path / "spool", DeadLetters(tmp_path / "dead"), {"default": learned})
    [c] = again.encode(_batch(pa.table({"v": pa.array([3], pa.int64())}), pa.table({"v": pa.array(["x"])})))
    assert pq.read_table(c.path).schema.field("v").type == pa.float64()
    assert pq.read_table(c.path).column("v").to_pylist() == [3.0]
    assert [d["reason"] for d in _dead(tmp_path)] == [
        "field 'v': value \"x\" of type string does not fit the table's type double "
        "(output.schema_file can set another)"
    ]


def test_a_table_that_learned_nested_times_as_naive_seconds_keeps_them_after_the_upgrade(
    tmp_path: Path,
) -> None:
    """Before nested timestamps were typed by our rules, pyarrow's inference gave a nested ISO text
    `timestamp[s]` (the instant in UTC, no zone; a date at midnight), and the journal kept that type.
    Batches parsed now (zoned `timestamp[ms, tz=UTC]`, `date32`) go into it with the values the old
    code stored, not dead letters."""
    from ingest.parsing.jsonlines import parse_lines

    old = pa.schema([("d", pa.struct([("at", pa.timestamp("s")), ("day", pa.timestamp("s"))]))])
    enc = Encoder(OutputConfig(), tmp_path / "spool", DeadLetters(tmp_path / "dead"), {"default": old})
    [(table, _, _)], dead = parse_lines(
        b'{"d": {"at": "2024-08-02T12:00:00+02:00", "day": "2024-08-02"}}\n', "s"
    )
    assert dead == [] and table.schema.field("d").type.field("at").type == pa.timestamp("ms", "UTC")
    [obj] = enc.encode(_batch(table))
    out = pq.read_table(obj.path)
    # (Parquet has no seconds: a timestamp[s] column reads back as ms, as the old objects do)
    assert out.schema.field("d").type == pa.struct([("at", pa.timestamp("ms")), ("day", pa.timestamp("ms"))])
    assert out.column("d").to_pylist() == [{"at": datetime(2024, 8, 2, 10), "day": datetime(2024, 8, 2)}]
    assert _dead(tmp_path) == []


def test_explicit_schema_file_fixes_types(tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps({"id": "int32", "at": "timestamp[ms, tz=UTC]", "price": "double"}))
    enc = _encoder(tmp_path, schema_file=str(schema_file), compression="snappy", row_group_size=2)
    t = pa.table(
        {"id": [1, 2, 3], "at": ["2024-08-02T10:00:00Z"] * 3, "price": [1, 2, 3], "extra": ["a"] * 3}
    )
    [obj] = enc.encode(_batch(t))
    f = pq.ParquetFile(obj.path)
    assert f.schema_arrow.field("id").type == pa.int32()
    assert f.schema_arrow.field("at").type == pa.timestamp("ms", "UTC")
    assert f.schema_arrow.field("price").type == pa.float64()
    assert f.metadata.num_row_groups == 2
    assert f.metadata.row_group(0).column(0).compression == "SNAPPY"


def test_bad_schema_file_names_the_field(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"id": "integr"}))
    with pytest.raises(ConfigError, match=r"output.schema_file: field 'id' has unknown type 'integr'"):
        load_schema(str(p))


def test_partition_by_splits_a_batch_by_utc_day(tmp_path: Path) -> None:
    enc = _encoder(tmp_path, partition_by="ts")
    t = pa.table(
        {
            "id": [1, 2, 3, 4],
            "ts": ["2024-08-01T23:59:59Z", "2024-08-02T01:00:00+02:00", "2024-08-02T00:00:00Z", "never"],
        }
    )
    objs = enc.encode(_batch(t))
    assert [(o.day, pq.read_table(o.path).column("id").to_pylist()) for o in objs] == [
        (date(2024, 8, 1), [1, 2]),  # 01:00+02:00 is 23:00 UTC the day before
        (date(2024, 8, 2), [3]),
    ]
    assert len(_dead(tmp_path)) == 1


def test_each_day_object_says_which_rows_of_which_unit_it_holds(tmp_path: Path) -> None:
    """A batch split by day: each object's `holds` names exactly its rows (the ledgers record them);
    a misfit (here a row with no date) is in no object; one object alone says nothing (None)."""
    enc = _encoder(tmp_path, partition_by="ts")
    a, b = SourceUnit("a", UnitHandle(_noop)), SourceUnit("b", UnitHandle(_noop))
    batch = Batch(closed_at=datetime(2024, 8, 2, 12, tzinfo=UTC))
    day = ["2024-08-01T10:00:00Z", "2024-08-02T10:00:00Z"]
    first = pa.table({"id": list(range(6)), "ts": [day[0], day[0], day[1], day[0], "never", day[1]]})
    batch.add(Chunk(first, a, row0=100), first.nbytes)  # rows 100..105 of unit a
    second = pa.table({"id": [6, 7, 8], "ts": [day[1], day[1], day[0]]})
    batch.add(Chunk(second, b, row0=0), second.nbytes)
    third = pa.table({"id": [9, 10], "ts": [day[1], day[1]]})
    batch.add(Chunk(third, a, row0=106), third.nbytes)  # unit a again, later rows
    objs = enc.encode(batch)
    by_day = {o.day: o for o in objs}
    aug1, aug2 = by_day[date(2024, 8, 1)], by_day[date(2024, 8, 2)]
    assert pq.read_table(aug1.path).column("id").to_pylist() == [0, 1, 3, 8]
    assert aug1.holds == {a: [(100, 102), (103, 104)], b: [(2, 3)]}
    assert pq.read_table(aug2.path).column("id").to_pylist() == [2, 5, 6, 7, 9, 10]
    assert aug2.holds == {a: [(102, 103), (105, 108)], b: [(0, 2)]}
    assert aug1.unit_rows() == aug1.holds  # what the ledgers are given
    assert len(_dead(tmp_path)) == 1  # row 104 ("never"): in no object
    [one] = _encoder(tmp_path / "one", partition_by="ts").encode(_batch(pa.table({"ts": [day[0]]})))
    assert one.holds is None and one.unit_rows() == one.batch.spans  # type: ignore[union-attr]


def test_chunks_of_one_schema_are_cast_together_and_a_misfit_names_its_own_file_and_line(
    tmp_path: Path,
) -> None:
    # The schema is learned as int64 from an earlier batch; the second batch's files (one schema,
    # as a bundle of small files gives) hold text: "7" fits, "seven" does not.
    enc = _encoder(tmp_path)
    enc.encode(_batch(pa.table({"n": pa.array([1], pa.int64())})))
    batch = Batch(closed_at=datetime(2024, 8, 2, 12, tzinfo=UTC))
    for name, values in (("a.csv", ["7", "8"]), ("b.csv", ["9", "seven"]), ("c.csv", ["10"])):
        t = _cells(pa.table({"n": pa.array(values)}))
        batch.add(Chunk(t, SourceUnit(name, UnitHandle(_noop)), first_line=1), t.nbytes)
    [obj] = enc.encode(batch)
    assert pq.read_table(obj.path).column("n").to_pylist() == [7, 8, 9, 10]
    [dead] = _dead(tmp_path)
    assert (dead["source"], dead["line"]) == ("b.csv", 2) and "does not fit" in str(dead["reason"])


def test_a_batch_that_fails_to_write_leaves_no_field_in_the_tables_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from ingest.durable import faults

    enc = _encoder(tmp_path)
    enc.encode(_batch(pa.table({"id": pa.array([1], pa.int64())})))
    monkeypatch.setattr(faults, "_full_point", "encode")
    monkeypatch.setattr(faults, "_full_left", 1)
    monkeypatch.setattr(faults, "_full_skip", 0)
    monkeypatch.setattr(faults, "_full_code", errno.EIO)
    with pytest.raises(OSError):
        enc.encode(_batch(pa.table({"id": pa.array([2], pa.int64()), "junk": pa.array(["x"])})))
    assert enc.schema().names == ["id"]  # the failed batch's field is not the table's
    [obj] = enc.encode(_batch(pa.table({"id": pa.array([3], pa.int64())})))
    assert pq.read_table(obj.path).column_names == ["id"]


def test_a_written_batch_lets_go_of_its_tables_and_a_failed_one_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder empties the batch's own list of chunks, one at a time (`let_go`): were it left to
    die with its last holder, 1,000 request bodies would be freed in one go, with the GIL held."""
    import errno

    from ingest.durable import faults

    enc = _encoder(tmp_path)
    batch = _batch(*[pa.table({"id": pa.array([i], pa.int64())}) for i in range(50)])
    chunks = batch.chunks
    [obj] = enc.encode(batch)
    assert chunks == [] and batch.chunks == []
    assert pq.read_table(obj.path).column("id").to_pylist() == list(range(50))

    monkeypatch.setattr(faults, "_full_point", "encode")
    monkeypatch.setattr(faults, "_full_left", 1)
    monkeypatch.setattr(faults, "_full_skip", 0)
    monkeypatch.setattr(faults, "_full_code", errno.ENOSPC)
    kept = _batch(pa.table({"id": pa.array([7], pa.int64())}))
    with pytest.raises(OSError):
        enc.encode(kept)
    assert [c.table.column("id").to_pylist() for c in kept.chunks] == [[7]]  # kept to be written again


def test_let_go_drops_one_reference_at_a_time_the_rest_still_held() -> None:
    """Each object goes while the list still holds the ones after it: the frees are spread over as
    many steps as there are objects (the event loop may run between two), not done in one."""
    seen: list[int] = []

    class Held:
        def __init__(self, items: list[object]) -> None:
            self.items = items

        def __del__(self) -> None:
            seen.append(len(self.items))

    items: list[object] = []
    items.extend(Held(items) for _ in range(5))
    encode.let_go(items)
    assert items == [] and seen == [4, 3, 2, 1, 0]


def test_tiny_chunks_of_one_schema_become_one_piece_and_big_ones_are_not_copied() -> None:
    """The files of a bundle (a few rows each) are copied into one piece before the casts and the
    writer (each pays per piece); chunks of SMALL_PIECE rows or more are concatenated without a copy,
    so a batch of big blocks is never held twice."""
    unit = SourceUnit("in.jsonl", UnitHandle(_noop))
    source = pa.table({"id": list(range(3_000)), "tags": [["a"]] * 3_000, "dev": [{"os": "ios"}] * 3_000})
    tiny = [Chunk(source.slice(i, 3), unit) for i in range(0, 3_000, 3)]
    [(merged, chunks)] = [encode._run(g) for g in encode._same_schema_groups(tiny)]
    assert merged.column("id").num_chunks == 1 and len(chunks) == 1_000
    assert merged.equals(source)
    big = [Chunk(source.slice(i, encode.SMALL_PIECE), unit) for i in range(0, 2_048, encode.SMALL_PIECE)]
    [(kept, _)] = [encode._run(g) for g in encode._same_schema_groups(big)]
    assert kept.column("id").num_chunks == len(big)  # not copied
    values = source.column("id").chunk(0).buffers()[1]
    assert kept.column("id").chunk(0).buffers()[1].address == values.address  # the same memory


def test_thousands_of_tiny_files_keep_every_value_and_a_case_twin_and_a_misfit_name_their_file(
    tmp_path: Path,
) -> None:
    """2,000 files of 3 rows in one batch (as 20,000 small files in an inbox give): the names are
    looked at once per run of one schema, not per file. A file spelling `ID` gets its own column,
    a misfit is a dead letter naming its own file and line, and every other value is written."""
    enc = _encoder(tmp_path)
    enc.encode(_batch(pa.table({"id": pa.array([0], pa.int64())})))  # the table knows id: int64
    batch = Batch(closed_at=datetime(2024, 8, 2, 12, tzinfo=UTC))
    expected = []
    for f in range(2_000):
        rows = [{"id": f * 3 + r, "tags": [f"t{f}"], "dev": {"os": "web", "v": r}} for r in range(3)]
        if f == 700:
            rows = [{"ID": r, "tags": [], "dev": {"os": "ios", "v": r}} for r in range(3)]
        t = pa.Table.from_pylist(rows)
        if f == 1_300:  # a CSV file among them: cells that take int64, and one that does not
            t = _cells(pa.table({"id": ["3900", "seven", "3902"]}))
            rows = [{"id": 3900, "tags": None, "dev": None}, {"id": 3902, "tags": None, "dev": None}]
        batch.add(Chunk(t, SourceUnit(f"f{f:04d}.jsonl", UnitHandle(_noop)), first_line=1), t.nbytes)
        expected += rows
    [obj] = enc.encode(batch)
    out = pq.read_table(obj.path)
    assert out.num_rows == 5_999 and out.column("id").type == pa.int64()
    got = out.to_pylist()
    assert [r["ID_2"] for r in got if r["ID_2"] is not None] == [0, 1, 2]
    assert [(r["id"], r["tags"], r["dev"]) for r in got if r["ID_2"] is None] == [
        (r["id"], r["tags"], r["dev"]) for r in expected if "ID" not in r
    ]
    [dead] = _dead(tmp_path)
    assert (dead["source"], dead["line"]) == ("f1300.jsonl", 2) and "does not fit" in str(dead["reason"])
    # Other readers see the same rows.
    assert duck(f"SELECT count(*), count(ID_2), sum(id) FROM '{obj.path}'") == [
        (5_999, 3, sum(r["id"] for r in expected if "ID" not in r))
    ]
    assert pl.read_parquet(obj.path).height == 5_999
