"""Batch → Parquet files in the spool: one schema for all chunks, split by day, written off the loop.

Schema: an explicit schema file (field → Arrow type) fixes those fields' types; other fields are
inferred, and types learned from earlier chunks are unified with new ones (int + float → float,
null → the other type). A value that cannot be cast to its field's type sends its record to the dead
letters with the reason, instead of failing the batch.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import tomllib
import uuid
from datetime import UTC, date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pyarrow.parquet as pq

from ingest.config import ConfigError, OutputConfig
from ingest.durable.deadletters import DeadLetter, DeadLetters
from ingest.durable.faults import disk_full_point
from ingest.durable.files import fsync_dir, sha256_of
from ingest.iceberg.schema import iceberg_type, widens
from ingest.layout import DEFAULT_TABLE
from ingest.parsing.types import CELLS, MIXED, TEXT_CELLS, family, shown, text_fits, unify, widen
from ingest.parsing.width import EXTRA, extra_column, set_max_columns
from ingest.pipeline.batch import Batch
from ingest.pipeline.spool import SpooledObject
from ingest.sources.base import Chunk, Ranges, SourceUnit

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
SMALL_PIECE = 256  # rows: a run of chunks this small on average is copied into one piece (see _run)
INGESTED_AT = "_ingested_at"  # Iceberg tables without output.partition_by: partitioned by its day
# The chunks behind a table's rows, in order, with the rows kept of each (None: all of them).
Origin = list[tuple[Chunk, pa.Array | None]]
SPELLING = b"ingest.spelling"  # field metadata: the input's name of a field renamed for its case


def load_schema(path: str) -> pa.Schema | None:
    """Read a schema file: JSON or TOML, `{"field": "arrow type"}`."""
    if not path:
        return None
    p = Path(path)
    try:
        text = p.read_text()
        raw = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"output.schema_file: cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"output.schema_file: {path} must map field names to Arrow type names")
    fields = []
    for name, type_name in raw.items():
        try:
            fields.append(pa.field(name, _arrow_type(str(type_name))))
        except (ValueError, KeyError):
            raise ConfigError(
                f"output.schema_file: field {name!r} has unknown type {type_name!r}; use e.g. int64, double, "
                "string, bool, date32, timestamp[us, tz=UTC]"
            ) from None
    return pa.schema(fields)


def _arrow_type(name: str) -> pa.DataType:
    name = name.strip()
    if name.startswith("timestamp[") and name.endswith("]"):
        unit, _, tz = name[len("timestamp[") : -1].partition(",")
        tz = tz.strip().removeprefix("tz=").strip()
        return pa.timestamp(unit.strip(), tz or None)
    aliases = {"float": "float32", "integer": "int64", "boolean": "bool", "str": "string", "text": "string"}
    return pa.type_for_alias(aliases.get(name, name))


def schema_blob(schema: pa.Schema) -> str:
    """A schema as text for the journal (Arrow IPC, base64): every type, nested ones too."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def load_schema_blob(blob: str | None) -> pa.Schema | None:
    if not blob:
        return None
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(blob)))


class Encoder:
    """Thread-safe: `encode` runs in worker threads; the learned schema is shared under a lock.

    The schema only widens (a new field, int → double, a finer timestamp unit), and it outlives the
    process (`schema`, journaled with each batch, passed back as `learned` at the next start): the
    table keeps one type per field across batches and runs. A batch's own types are unified first,
    so a row's fate never depends on the order of its neighbours.
    """

    def __init__(
        self,
        output: OutputConfig,
        spool_dir: Path,
        dead: DeadLetters,
        learned: dict[str, pa.Schema] | None = None,
        iceberg: bool = False,
    ) -> None:
        self.output = output
        # Files for Iceberg tables: types every Iceberg reader accepts (values that cannot keep their
        # value in them are dead letters), and the ingestion time to partition by when no field is.
        self.iceberg = iceberg
        self.dir = spool_dir / "objects"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dead = dead
        self.explicit = load_schema(output.schema_file)
        set_max_columns(output.max_columns)  # the parsers fold wide blocks by the same limit
        self._schemas = {table: self._with_explicit(s) for table, s in (learned or {}).items()}
        self._lock = threading.Lock()

    def _with_explicit(self, schema: pa.Schema) -> pa.Schema:
        """The schema file wins over anything learned (for every table)."""
        if self.explicit is None:
            return schema
        fixed = {f.name: f for f in self.explicit}
        return pa.schema([fixed.pop(f.name, f) for f in schema] + list(fixed.values()))

    def schema(self, table: str = DEFAULT_TABLE) -> pa.Schema:
        with self._lock:
            return self._known(table)

    def _known(self, table: str) -> pa.Schema:
        """The table's schema so far (the schema file's fields alone for a new table); under the lock."""
        return self._schemas.get(table) or self._with_explicit(pa.schema([]))

    def encode(self, batch: Batch) -> list[SpooledObject]:
        """Parquet files for the batch, fsynced; on failure (disk full) none is left behind. The
        batch's tables are let go of once written, one at a time (`let_go`)."""
        chunks = batch.chunks
        written = self._encode_batch(batch)
        if not batch.chunks:  # written (or nothing to write): this list is the tables' last holder
            let_go(chunks)
        return written

    def _encode_batch(self, batch: Batch) -> list[SpooledObject]:
        # Names are looked at once per group of one schema, not once per chunk: a batch of 20,000
        # small files is 20,000 chunks in a few hundred groups.
        groups = _same_schema_groups(batch.chunks)
        run_names = [group[0].table.column_names for group in groups]
        with self._lock:
            known = self._known(batch.table)
            names = case_twins(known, run_names)
            if names:
                for c in batch.chunks:
                    if any(n in names for n in c.table.column_names):
                        c.table = c.table.rename_columns([names.get(n, n) for n in c.table.column_names])
            overflow = self._overflow(known, run_names)
        if overflow:
            for c in batch.chunks:
                if fold := [n for n in c.table.column_names if n in overflow]:
                    kept = c.table.drop_columns([*fold, EXTRA] if EXTRA in c.table.column_names else fold)
                    c.table = kept.append_column(EXTRA, extra_column(c.table, fold))
        if names or overflow:  # renamed or folded: the groups' schemas changed
            groups = _same_schema_groups(batch.chunks)
        runs = [_run(group) for group in groups]
        with self._lock:
            before = self._schemas.get(batch.table)
            learned = self._learn(self._known(batch.table), [table for table, _ in runs])
            learned = pa.schema([_spelled(f, names) for f in learned])
            if self.iceberg:
                learned = for_iceberg(learned)
            schema = self._schemas[batch.table] = learned
        try:
            return self._encode(batch, runs, schema)
        except BaseException:
            with self._lock:  # a batch that was not written leaves no field in the table's schema
                if self._schemas.get(batch.table) is schema:
                    if before is None:
                        self._schemas.pop(batch.table, None)
                    else:
                        self._schemas[batch.table] = before
            raise

    def _encode(
        self, batch: Batch, runs: list[tuple[pa.Table, list[Chunk]]], schema: pa.Schema
    ) -> list[SpooledObject]:
        tables: list[pa.Table] = []
        days: list[pa.Array] = []
        origins: Origin = []
        for merged, chunks in runs:
            for table, day, origin in self._conform_run(merged, chunks, schema, batch):
                if table.num_rows:
                    tables.append(table)
                    days.append(day)
                    origins += origin
        if not tables:
            batch.chunks = []
            return []
        table = pa.concat_tables(tables)
        every_day = pa.concat_arrays(days)
        by_day = _split_by_day(table, every_day)
        # Several objects: each says which rows of which unit it holds (the ledgers record exactly
        # those; one object in R2 says nothing of the rows in another).
        holds = _holds_by_day(origins, every_day, [d for d, _ in by_day]) if len(by_day) > 1 else {}
        written: list[SpooledObject] = []
        try:
            for day, part in by_day:
                obj = self._write(batch, day, part)
                obj.holds = holds.get(day)
                written.append(obj)
            fsync_dir(self.dir)
        except BaseException:
            for obj in written:
                obj.path.unlink(missing_ok=True)
            raise
        batch.chunks = []  # the source tables go once this frame's references have (see `encode`)
        return written

    # -- schema -----------------------------------------------------------------------------------

    def _conform_run(
        self, merged: pa.Table, chunks: list[Chunk], schema: pa.Schema, batch: Batch
    ) -> list[tuple[pa.Table, pa.Array, Origin]]:
        """A run of one schema cast together; one chunk at a time only when some row is a misfit
        (its dead letter names the chunk's file and line). With each table: the chunks its rows
        come from, in order (and which of their rows, when misfits were left out)."""
        if len(chunks) > 1:
            out, days, bad = self._cast(merged, schema, batch)
            if not bad:
                return [(out, days, [(c, None) for c in chunks])]
        return [self._conform(c, schema, batch) for c in chunks]

    def _conform(self, chunk: Chunk, schema: pa.Schema, batch: Batch) -> tuple[pa.Table, pa.Array, Origin]:
        """Cast a chunk to the schema and date its rows; rows that do not fit → dead letters."""
        table = chunk.table
        out, days, bad = self._cast(table, schema, batch)
        if not bad:
            return out, days, [(chunk, None)]
        handle = chunk.unit.handle
        raw = handle.raw_lines([chunk.line_of(r) for r in bad]) if handle is not None else {}
        self.dead.write(
            [
                DeadLetter(
                    chunk.unit.name,
                    chunk.line_of(r),
                    reason,
                    raw.get(chunk.line_of(r)) or json.dumps(_row(table, r), default=str),
                )
                for r, reason in sorted(bad.items())
            ],
            chunk.unit.origin,
        )
        keep = pa.array([i not in bad for i in range(table.num_rows)])
        return out.filter(keep), days.filter(keep), [(chunk, pc.indices_nonzero(keep))]

    def _cast(
        self, table: pa.Table, schema: pa.Schema, batch: Batch
    ) -> tuple[pa.Table, pa.Array, dict[int, str]]:
        """The table in the schema's types, its rows' days, and its misfits (row → why)."""
        bad: dict[int, str] = {}
        columns = []
        have = dict(zip(table.column_names, table.columns, strict=True))  # one lookup per field
        cells = table.schema.metadata is not None and table.schema.metadata.get(CELLS) == TEXT_CELLS
        for f in schema:
            col = have.get(f.name)
            if col is None:
                columns.append(pa.nulls(table.num_rows, f.type))
                continue
            if col.type != f.type:
                mixed = (table.schema.field(f.name).metadata or {}).get(MIXED) is not None
                col, failures = _conform_column(col, f.type, cells or (mixed and family(f.type) == "number"))
                if failures:
                    original = table.column(f.name)
                    for row in failures:
                        bad.setdefault(
                            row,
                            f"field {f.name!r}: value {_value(original[row])} of type "
                            f"{original.type} does not fit the table's "
                            f"type {f.type} (output.schema_file can set another)",
                        )
            columns.append(col)
        out = pa.table(columns, schema=schema)
        days = self._days(table, batch)  # from the values as read, before any cast to the table's types
        if not pc.all(pc.is_valid(days)).as_py():
            reason = (
                f"field {self.output.partition_by!r} (output.partition_by) is missing or not a date, "
                "time or epoch number; cannot choose a date directory"
            )
            for row in pc.indices_nonzero(pc.invert(pc.is_valid(days))).to_pylist():
                bad.setdefault(row, reason)
        return out, days, bad

    def _overflow(self, known: pa.Schema, names: list[list[str]]) -> set[str]:
        """New fields that would take the table past output.max_columns (they go into EXTRA): the
        first ones in input order get columns, one column is kept for EXTRA. `names`: the columns
        of each run of chunks, in order."""
        have = set(known.names)
        room = self.output.max_columns - len(known) - (0 if EXTRA in have else 1)
        new: dict[str, None] = {}
        for columns in names:
            new.update((n, None) for n in columns if n not in have and n != EXTRA)
        if len(new) <= room + (0 if EXTRA in have else 1):
            return set()
        return set(list(new)[max(room, 0) :])

    def _learn(self, known: pa.Schema, tables: list[pa.Table]) -> pa.Schema:
        """Widen `known` by a batch: a new field takes the batch's unified type (see
        ingest.parsing.types.unify); a known field widens when that holds every value unchanged,
        else keeps its type (misfits: dead letters)."""
        seen: dict[str, dict[pa.DataType, int]] = {}
        for table in tables:
            for f, col in zip(table.schema, table.columns, strict=True):
                counts = seen.setdefault(f.name, {})
                counts[f.type] = counts.get(f.type, 0) + len(col) - col.null_count
        fields = {f.name: f for f in known}
        fixed = set(self.explicit.names) if self.explicit is not None else set()
        for name, counts in seen.items():
            batch_type = unify(counts)
            old = fields.get(name)
            if old is None or pa.types.is_null(old.type):
                fields[name] = pa.field(name, batch_type)
            elif (
                name not in fixed
                and (wider := widen(old.type, batch_type)) is not None
                and (not self.iceberg or widens(old.type, wider))  # what the table can take
            ):
                fields[name] = pa.field(name, wider)
        return pa.schema(list(fields.values()))

    # -- days and files ---------------------------------------------------------------------------

    def _days(self, table: pa.Table, batch: Batch) -> pa.Array:
        name = self.output.partition_by
        if not name:
            return pa.repeat(pa.scalar(batch.closed_at.date(), pa.date32()), table.num_rows)
        if name not in table.column_names:
            return pa.nulls(table.num_rows, pa.date32())
        return utc_days(table.column(name))

    def _write(self, batch: Batch, day: date, table: pa.Table) -> SpooledObject:
        object_id = str(uuid.uuid4())
        path = self.dir / f"{object_id}.parquet"
        tmp = path.with_suffix(".tmp")
        compression = None if self.output.compression == "none" else self.output.compression
        if self.iceberg:
            table = self._for_table(batch, table)
        try:
            disk_full_point("encode", "file")
            pq.write_table(table, tmp, compression=compression, row_group_size=self.output.row_group_size)
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            digest = sha256_of(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # never a half-written file in the spool
            raise
        size = path.stat().st_size
        return SpooledObject(object_id, batch, path, day, table.num_rows, size, digest, table=batch.table)

    def _for_table(self, batch: Batch, table: pa.Table) -> pa.Table:
        """No column that has only been null so far (the Iceberg table gets a field once a value gives
        it a type; readers see null where a file lacks it), and `_ingested_at` when nothing else
        partitions the table."""
        table = table.drop_columns([f.name for f in table.schema if pa.types.is_null(f.type)])
        if not self.output.partition_by and INGESTED_AT not in table.column_names:
            at = pa.scalar(batch.closed_at.astimezone(UTC), pa.timestamp("us", tz="UTC"))
            table = table.append_column(INGESTED_AT, pa.repeat(at, table.num_rows))
        return table


def for_iceberg(schema: pa.Schema) -> pa.Schema:
    """`schema` in types every Iceberg reader accepts (null stays null: see `_for_table`)."""
    return pa.schema(
        [f if pa.types.is_null(f.type) else f.with_type(iceberg_type(f.type)) for f in schema],
        metadata=schema.metadata,
    )


def _conform_column(
    col: pa.ChunkedArray, to: pa.DataType, cells: bool = False
) -> tuple[pa.ChunkedArray | pa.Array, list[int]]:
    """`col` as type `to` and the rows whose value cannot be carried over unchanged: anything
    becomes text (nested values as JSON); a value of another family (a JSON string, a time, a
    boolean into a number column) is never reinterpreted: it is a misfit. Text becomes a time when
    written as one (ISO 8601, as JSON timestamps are recognised); only CSV cells (`cells`: everything
    there is text) become a number or boolean, when written the way that type writes it (`01234` is
    no int64), and so do the numbers a JSON column held among text (`cells` too: see
    types.numbers_as_text)."""
    source, target = family(col.type), family(to)
    as_text = source == "text" and (cells or target == "time")
    if source != target and target != "text" and not as_text:
        return pa.nulls(len(col), to), pc.indices_nonzero(pc.is_valid(col)).to_pylist()
    if pa.types.is_string(col.type) and (fits := text_fits(col, to)) is not None:
        fits = pc.fill_null(fits, True)
        misfit = pc.and_(pc.invert(fits), pc.is_valid(col))
        try:
            cast = pc.if_else(fits, col, None).cast(to)
        except _CAST_ERRORS:
            return _cast_rowwise(col, to)
        return cast, pc.indices_nonzero(pc.fill_null(misfit, False)).to_pylist()
    if pa.types.is_string(to) and family(col.type) == "nested":
        values = [None if v is None else json.dumps(v, default=str) for v in col.to_pylist()]
        return pa.array(values, pa.string()), []
    try:
        return col.cast(to), []
    except _CAST_ERRORS:
        return _cast_rowwise(col, to)


def case_twins(known: pa.Schema, chunks: list[list[str]]) -> dict[str, str]:
    """Field names that differ from another only by case (`id`, `ID`: one column to DuckDB, Spark,
    Iceberg and most SQL engines) → the name they are stored under: the first spelling keeps its
    name, the n-th spelling seen becomes `<spelling>_<n>` (`ID_2`), for good: the schema remembers
    each spelling (field metadata). Only renamed names are in the answer."""
    spellings: dict[str, list[str]] = {}
    stored: dict[str, str] = {}
    taken = {f.name.lower() for f in known}
    for f in known:
        original = (f.metadata or {}).get(SPELLING, f.name.encode()).decode()
        stored[original] = f.name
        spellings.setdefault(original.lower(), []).append(original)
    out: dict[str, str] = {}
    for names in chunks:
        for name in names:
            if name in stored:
                if stored[name] != name:
                    out[name] = stored[name]
                continue
            seen = spellings.setdefault(name.lower(), [])
            seen.append(name)
            new = name
            if len(seen) > 1:
                n = len(seen)
                while (new := f"{name}_{n}").lower() in taken:
                    n += 1
                out[name] = new
            stored[name] = new
            taken.add(new.lower())
    return out


def _spelled(f: pa.Field, renamed: dict[str, str]) -> pa.Field:
    """`f` carrying the spelling it was renamed from (see case_twins)."""
    for original, new in renamed.items():
        if new == f.name and original != new:
            return f.with_metadata({**(f.metadata or {}), SPELLING: original.encode()})
    return f


def _cast_rowwise(col: pa.ChunkedArray, to: pa.DataType) -> tuple[pa.Array, list[int]]:
    """Slow path, only for a column that failed to cast: cast value by value, nulls where it fails."""
    values = []
    failed = []
    for i, v in enumerate(col):  # Arrow scalars: a value Python cannot hold (nanoseconds) still casts
        try:
            values.append(pa.array([v]).cast(to)[0].as_py() if v.is_valid else None)
        except (*_CAST_ERRORS, OverflowError):
            values.append(None)
            failed.append(i)
    return pa.array(values, type=to), failed


def _cast(values: pa.Array, to: pa.DataType) -> pa.Array:
    """Cast; values that do not cast become nulls (value by value only when the whole cast fails)."""
    try:
        return values.cast(to)
    except (*_CAST_ERRORS, OverflowError):
        return _cast_rowwise(pa.chunked_array([values]), to)[0]


def _value(scalar: pa.Scalar) -> str:
    """A value for a dead letter's reason, also one Python cannot hold (a timestamp in nanoseconds)."""
    try:
        return shown(scalar.as_py())
    except (ValueError, OverflowError):
        return shown(pa.array([scalar]).cast(pa.string())[0].as_py())


def _row(table: pa.Table, row: int) -> dict[str, object]:
    rows: list[dict[str, object]] = table.slice(row, 1).to_pylist()
    return rows[0]


def let_go(items: list[Any]) -> None:
    """Drop the references one at a time. Freeing a table's buffers holds the GIL, and a batch of
    1,000 request bodies let go of at once held it 12-17 ms in one go (measured; 25 ms on a busy
    host): the event loop, and every request it was answering, waited that long. Between two drops
    the loop gets its turn."""
    while items:
        items.pop()


def _same_schema_groups(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Consecutive chunks with one schema (e.g. the files of a bundle, parsed together)."""
    groups: list[list[Chunk]] = []
    for chunk in chunks:
        if groups and chunk.table.schema.equals(groups[-1][0].table.schema):
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    return groups


def _run(chunks: list[Chunk]) -> tuple[pa.Table, list[Chunk]]:
    """The chunks' tables as one (cast and dated once, not once per small file); copied into one
    piece when they are small (the files of a bundle, a few rows each): Arrow's casts and Parquet's
    writer pay per piece, and the writer took 2.5× as long over pieces of 10 rows (measured: 200,000
    rows, 0.45 s against 0.17 s)."""
    if len(chunks) == 1:
        return chunks[0].table, chunks
    table = pa.concat_tables([c.table for c in chunks])
    if table.num_rows < SMALL_PIECE * len(chunks):
        table = table.combine_chunks()
    return table, chunks


def _holds_by_day(
    origins: Origin, days: pa.Array, unique: list[date]
) -> dict[date, dict[SourceUnit, Ranges]]:
    """Day → the rows of each unit the day's object holds. `origins`: the chunks behind the rows of
    the concatenated table, in order (with the rows kept of each, when some were misfits)."""
    units: list[SourceUnit] = []
    index: dict[SourceUnit, int] = {}
    which: list[pa.Array] = []
    rows: list[pa.Array] = []
    for chunk, kept in origins:
        n = chunk.table.num_rows
        numbers = pa.array(range(chunk.row0, chunk.row0 + n), pa.int64())
        if kept is not None:
            numbers = numbers.take(kept)
        if chunk.unit not in index:
            index[chunk.unit] = len(units)
            units.append(chunk.unit)
        which.append(pa.repeat(pa.scalar(index[chunk.unit], pa.int32()), len(numbers)))
        rows.append(numbers)
    unit_of, row_of = pa.concat_arrays(which), pa.concat_arrays(rows)
    out: dict[date, dict[SourceUnit, Ranges]] = {}
    for day in unique:
        on_day = pc.equal(days, pa.scalar(day, pa.date32()))
        day_units, day_rows = unit_of.filter(on_day), row_of.filter(on_day)
        held: dict[SourceUnit, Ranges] = {}
        for u in pc.unique(day_units).to_pylist():
            held[units[u]] = _ranges(day_rows.filter(pc.equal(day_units, u)))
        out[day] = held
    return out


def _ranges(rows: pa.Array) -> Ranges:
    """Row numbers as sorted [start, stop) ranges."""
    rows = rows.take(pc.sort_indices(rows))
    n = len(rows)
    if n == 0:
        return []
    steps = pc.subtract(rows.slice(1), rows.slice(0, n - 1))
    breaks = [i + 1 for i in pc.indices_nonzero(pc.not_equal(steps, 1)).to_pylist()]
    firsts = rows.take(pa.array([0, *breaks], pa.int64())).to_pylist()
    lasts = rows.take(pa.array([b - 1 for b in [*breaks, n]], pa.int64())).to_pylist()
    return [(a, b + 1) for a, b in zip(firsts, lasts, strict=True)]


def _split_by_day(table: pa.Table, days: pa.Array) -> list[tuple[date, pa.Table]]:
    unique = sorted(pc.unique(days).to_pylist())
    if len(unique) == 1:  # the usual case: no filter, no copy of the batch
        return [(unique[0], table)]
    return [(day, table.filter(pc.equal(days, pa.scalar(day, pa.date32())))) for day in unique]


# Epoch numbers: the unit is told by the magnitude (documented): up to 1e11 seconds (year 5138),
# then milliseconds up to 1e14, microseconds up to 1e17, else nanoseconds.
_EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
_ZONED = r"(Z|[-+][0-9]{2}:?[0-9]{2})$"
_NUMBER = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"


def utc_days(col: pa.ChunkedArray) -> pa.Array:
    """UTC calendar day of each value (null when it is not a date, a time or an epoch number).

    Timestamps with a zone count in UTC; naive ones and dates are taken as UTC already.
    """
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_date(t):
        return col.cast(pa.date32())
    if pa.types.is_timestamp(t):
        # Arrow stores UTC instants; drop the zone so the day is the UTC day, not the local one.
        naive = col.cast(pa.timestamp(t.unit, t.tz)).cast(pa.int64()).cast(pa.timestamp(t.unit))
        return naive.cast(pa.date32())
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return _epoch_days(col.cast(pa.float64()))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _text_days(col.cast(pa.string()))
    return pa.nulls(len(col), pa.date32())


def _epoch_days(seconds_or_finer: pa.Array) -> pa.Array:
    magnitude = pc.abs(seconds_or_finer)
    per_second = pa.array([1.0] * len(seconds_or_finer))
    for limit, unit in reversed(_EPOCH_UNITS):
        factor = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
        per_second = pc.if_else(pc.less(magnitude, limit), factor, per_second)
    per_second = pc.if_else(pc.greater_equal(magnitude, _EPOCH_UNITS[-1][0]), 1e9, per_second)
    days = pc.floor(pc.divide(pc.divide(seconds_or_finer, per_second), 86400.0))
    valid = pc.and_(pc.is_finite(days), pc.less(pc.abs(days), 2_900_000))  # within date32's years
    return pc.if_else(valid, days, None).cast(pa.int32()).cast(pa.date32())


def _text_days(col: pa.Array) -> pa.Array:
    """ISO text: with a zone, the UTC day of that instant; without one (a date, a naive time), the
    date written."""
    zoned = pc.fill_null(pc.match_substring_regex(col, _ZONED), False)
    instants = _cast(pc.if_else(zoned, col, None), pa.timestamp("ns", "UTC"))
    from_instant = utc_days(instants)
    head = pc.utf8_slice_codeunits(col, 0, 10)
    dated = pc.if_else(pc.match_substring_regex(head, r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), head, None)
    from_text = _cast(dated, pa.date32())
    numeric = pc.fill_null(pc.match_substring_regex(col, _NUMBER), False)  # an epoch written as text
    from_epoch = _epoch_days(_cast(pc.if_else(numeric, col, None), pa.float64()))
    return pc.if_else(zoned, from_instant, pc.if_else(numeric, from_epoch, from_text))
