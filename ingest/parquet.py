"""Batch → Parquet files in the spool: one schema for all chunks, split by day, written off the loop.

Schema: an explicit schema file (field → Arrow type) fixes those fields' types; other fields are
inferred, and types learned from earlier chunks are unified with new ones (int + float → float,
null → the other type). A value that cannot be cast to its field's type sends its record to the dead
letters with the reason, instead of failing the batch.
"""

from __future__ import annotations

import json
import os
import threading
import tomllib
import uuid
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.batch import Batch
from ingest.config import ConfigError, OutputConfig
from ingest.deadletters import DeadLetter, DeadLetters
from ingest.faults import disk_full_point
from ingest.files import fsync_dir, sha256_of
from ingest.sources.base import Chunk
from ingest.spool import SpooledObject

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


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


class Encoder:
    """Thread-safe: `encode` runs in worker threads; the learned schema is shared under a lock."""

    def __init__(self, output: OutputConfig, spool_dir: Path, dead: DeadLetters) -> None:
        self.output = output
        self.dir = spool_dir / "objects"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dead = dead
        self.explicit = load_schema(output.schema_file)
        self._schema = self.explicit or pa.schema([])
        self._lock = threading.Lock()

    def encode(self, batch: Batch) -> list[SpooledObject]:
        """Parquet files for the batch, fsynced; on failure (disk full) none is left behind."""
        tables: list[pa.Table] = []
        for chunk in batch.chunks:
            table = self._conform(chunk)
            if table.num_rows:
                tables.append(table)
        if not tables:
            batch.chunks = []
            return []
        with self._lock:
            schema = self._schema
        table = pa.concat_tables([_with_schema(t, schema) for t in tables])
        written: list[SpooledObject] = []
        try:
            for day, part in self._by_day(table, batch):
                written.append(self._write(batch, day, part))
            fsync_dir(self.dir)
        except BaseException:
            for obj in written:
                obj.path.unlink(missing_ok=True)
            raise
        batch.chunks = []  # free the source tables
        return written

    # -- schema -----------------------------------------------------------------------------------

    def _conform(self, chunk: Chunk) -> pa.Table:
        """Cast a chunk to the shared schema (learning new fields/promotions); bad rows → dead letters."""
        with self._lock:
            self._schema = self._learn(self._schema, chunk.table.schema)
            schema = self._schema
        table = chunk.table
        bad: dict[int, str] = {}
        columns = []
        for f in schema:
            if f.name not in table.column_names:
                columns.append(pa.nulls(table.num_rows, f.type))
                continue
            col = table.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except _CAST_ERRORS:
                    col, failures = _cast_rowwise(col, f.type)
                    original = table.column(f.name)
                    for row in failures:
                        bad.setdefault(
                            row, f"field {f.name!r}: value {original[row].as_py()!r} is not {f.type}"
                        )
            columns.append(col)
        out = pa.table(columns, schema=schema)
        if bad:
            self.dead.write(
                [
                    DeadLetter(
                        chunk.unit.name, chunk.line_of(r), reason, json.dumps(_row(table, r), default=str)
                    )
                    for r, reason in sorted(bad.items())
                ]
            )
            keep = pa.array([i not in bad for i in range(table.num_rows)])
            out = out.filter(keep)
        return out

    def _learn(self, known: pa.Schema, new: pa.Schema) -> pa.Schema:
        fields = {f.name: f for f in known}
        fixed = set(self.explicit.names) if self.explicit is not None else set()
        for f in new:
            old = fields.get(f.name)
            if old is None:
                fields[f.name] = f.with_nullable(True)
            elif old.type != f.type and f.name not in fixed:
                try:
                    merged = pa.unify_schemas(
                        [pa.schema([old]), pa.schema([f])], promote_options="permissive"
                    )
                    fields[f.name] = merged.field(f.name)
                except _CAST_ERRORS:
                    pass  # incompatible: keep the known type; non-castable values become dead letters
        return pa.schema(list(fields.values()))

    # -- days and files ---------------------------------------------------------------------------

    def _by_day(self, table: pa.Table, batch: Batch) -> list[tuple[date, pa.Table]]:
        field_name = self.output.partition_by
        if not field_name:
            return [(batch.closed_at.date(), table)]
        if field_name in table.column_names:
            days = _days(table.column(field_name))
        else:  # never seen in any record so far: no row can be dated
            days = pa.nulls(table.num_rows, pa.date32())
        valid = pc.is_valid(days)
        if not pc.all(valid).as_py():
            invalid = table.filter(pc.invert(valid))
            self.dead.write(
                [
                    DeadLetter(
                        "partition_by",
                        None,
                        f"field {field_name!r} is missing or not a date/time; cannot choose a date directory",
                        json.dumps(row, default=str),
                    )
                    for row in invalid.to_pylist()
                ]
            )
            table, days = table.filter(valid), days.filter(valid)
        out = []
        for day in sorted(pc.unique(days).to_pylist()):
            out.append((day, table.filter(pc.equal(days, pa.scalar(day, pa.date32())))))
        return out

    def _write(self, batch: Batch, day: date, table: pa.Table) -> SpooledObject:
        object_id = str(uuid.uuid4())
        path = self.dir / f"{object_id}.parquet"
        tmp = path.with_suffix(".tmp")
        compression = None if self.output.compression == "none" else self.output.compression
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
        return SpooledObject(object_id, batch, path, day, table.num_rows, path.stat().st_size, digest)


def _with_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns learned after this chunk was conformed are added as nulls; promotions are cast."""
    if table.schema == schema:
        return table
    cols = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.table(cols, schema=schema)


def _cast_rowwise(col: pa.ChunkedArray, to: pa.DataType) -> tuple[pa.Array, list[int]]:
    """Slow path, only for a column that failed to cast: cast value by value, nulls where it fails."""
    values = []
    failed = []
    for i, v in enumerate(col.to_pylist()):
        try:
            values.append(pa.array([v]).cast(to)[0].as_py() if v is not None else None)
        except (*_CAST_ERRORS, OverflowError):
            values.append(None)
            failed.append(i)
    return pa.array(values, type=to), failed


def _row(table: pa.Table, row: int) -> dict[str, object]:
    rows: list[dict[str, object]] = table.slice(row, 1).to_pylist()
    return rows[0]


def _days(col: pa.ChunkedArray) -> pa.Array:
    """UTC calendar day of each value (null when it is not a date/time)."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        utc = pa.timestamp("us", "UTC")
        try:
            col = col.cast(utc)
        except _CAST_ERRORS:
            col = pa.chunked_array([_cast_rowwise(col, utc)[0]])
        t = col.type
    if pa.types.is_date(t):
        return col.cast(pa.date32()).combine_chunks()
    if pa.types.is_timestamp(t):
        # Arrow stores UTC instants; drop the zone so the day is the UTC day, not the local one.
        naive = col.cast(pa.timestamp("us", t.tz)).cast(pa.int64()).cast(pa.timestamp("us"))
        return naive.cast(pa.date32()).combine_chunks()
    return pa.nulls(len(col), pa.date32())
