"""File formats, read with pyarrow's C++ readers in bounded blocks (runs in a worker thread).

JSON lines are cut into blocks of `READ_BLOCK` bytes at line ends, so memory is bounded by the block
size, not the file size, and every block is parsed by `pyarrow.json` (multi-threaded). Only a block
that pyarrow rejects takes the slow path: line by line, good lines kept, bad ones to dead letters.
CSV streams through `pyarrow.csv.open_csv`; Parquet through `ParquetFile.iter_batches`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from ingest.deadletters import DeadLetter

Format = Literal["jsonl", "csv", "parquet"]
READ_BLOCK = 32 << 20
PARQUET_BATCH_ROWS = 256 * 1024
# emit(table, first_line, explicit_lines)
Emit = Callable[[pa.Table, int, list[int] | None], None]
Dead = Callable[[list[DeadLetter]], None]

_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_FORMATS: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


def detect(path: Path, configured: str = "") -> tuple[Format, str | None] | None:
    """(format, compression) from the file name; None when the name says nothing we read."""
    name = path.name.lower()
    compression = None
    for ext, codec in _COMPRESSION.items():
        if name.endswith(ext):
            compression, name = codec, name[: -len(ext)]
            break
    if configured:
        return configured, compression  # type: ignore[return-value]
    if name.endswith(".parquet"):
        return ("parquet", None) if compression is None else None
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt, compression
    return None


def read_file(path: Path, fmt: Format, compression: str | None, source: str, emit: Emit, dead: Dead) -> None:
    """Read `path` to its end, handing Arrow tables to `emit` and unreadable records to `dead`."""
    if fmt == "parquet":
        _read_parquet(path, emit)
        return
    with pa.input_stream(str(path), compression=compression) as stream:
        if fmt == "jsonl":
            _read_jsonl(stream, source, emit, dead)
        else:
            _read_csv(stream, path, compression, source, emit, dead)


def _read_parquet(path: Path, emit: Emit) -> None:
    line = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        emit(pa.Table.from_batches([batch]), line, None)
        line += batch.num_rows


def _read_jsonl(stream: Any, source: str, emit: Emit, dead: Dead) -> None:
    line = 1
    carry = b""
    while True:
        try:
            data = stream.read(READ_BLOCK)
        except (OSError, pa.ArrowException) as exc:
            # Truncated/corrupt compression: keep what was readable, record where it stopped.
            if carry:
                _parse_json_block(carry, line, source, emit, dead)
                line += carry.count(b"\n") + (0 if carry.endswith(b"\n") else 1)
            dead([DeadLetter(source, line, f"unreadable from this line on: {exc}")])
            return
        buf = carry + data if carry else data
        if data:
            cut = buf.rfind(b"\n")
            if cut < 0:  # one line longer than a block: keep reading
                carry = buf
                continue
            block, carry = buf[: cut + 1], buf[cut + 1 :]
        else:
            block, carry = buf, b""
        if block:
            _parse_json_block(block, line, source, emit, dead)
            line += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        if not data:
            return


def _parse_json_block(block: bytes, first_line: int, source: str, emit: Emit, dead: Dead) -> None:
    try:
        table = pjson.read_json(pa.BufferReader(block))
    except pa.ArrowInvalid as exc:
        if "Empty JSON file" in str(exc):
            return
        _parse_json_slowly(block, first_line, source, emit, dead)
        return
    expected = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
    if table.num_rows == expected:
        emit(table, first_line, None)
    else:  # blank lines were skipped: number the rows explicitly
        lines = [first_line + i for i, text in enumerate(block.split(b"\n")) if text.strip()]
        emit(table, first_line, lines[: table.num_rows])


def _parse_json_slowly(block: bytes, first_line: int, source: str, emit: Emit, dead: Dead) -> None:
    """Per-line fallback for a block pyarrow refused: keep every good record, dead-letter the rest."""
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    schema: pa.Schema | None = None
    bad: list[DeadLetter] = []
    for i, raw in enumerate(block.split(b"\n")):
        if not raw.strip():
            continue
        number = first_line + i
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad.append(DeadLetter(source, number, f"invalid UTF-8: {exc}", raw))
            continue
        except ValueError as exc:
            bad.append(DeadLetter(source, number, f"invalid JSON: {exc}", raw))
            continue
        if not isinstance(value, dict):
            bad.append(DeadLetter(source, number, f"not a JSON object: {type(value).__name__}", raw))
            continue
        try:
            row_schema = pa.Table.from_pylist([value]).schema
            schema = row_schema if schema is None else _unify(schema, row_schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as exc:
            bad.append(DeadLetter(source, number, f"type conflicts with earlier lines: {exc}", raw))
            continue
        records.append(value)
        lines.append(number)
    dead(bad)
    if records:
        emit(pa.Table.from_pylist(records, schema=schema), first_line, lines)


def _unify(a: pa.Schema, b: pa.Schema) -> pa.Schema:
    return pa.unify_schemas([a, b], promote_options="permissive")


def _read_csv(stream: Any, path: Path, compression: str | None, source: str, emit: Emit, dead: Dead) -> None:
    invalid: list[DeadLetter] = []

    def on_invalid(row: Any) -> str:
        line = row.number if row.number is not None else None
        reason = f"expected {row.expected_columns} columns, got {row.actual_columns}"
        invalid.append(DeadLetter(source, line, reason, row.text))
        return "skip"

    parse = pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid)
    read = pcsv.ReadOptions(block_size=READ_BLOCK, use_threads=False)
    emitted = 0
    try:
        reader = pcsv.open_csv(stream, read_options=read, parse_options=parse)
        for batch in reader:
            emit(pa.Table.from_batches([batch]), emitted + 2, None)
            emitted += batch.num_rows
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            dead(invalid)
            return
        if "conversion error" not in str(exc).lower() and "In CSV column" not in str(exc):
            dead([*invalid, DeadLetter(source, emitted + 2, f"unreadable from this row on: {exc}")])
            return
        # A later block holds a value the first block's types cannot take: read the rest as text and
        # let the encoder cast (values that do not fit become dead letters there).
        names = reader.schema.names
        read = pcsv.ReadOptions(block_size=READ_BLOCK, use_threads=False, skip_rows_after_names=emitted)
        convert = pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
        with pa.input_stream(str(path), compression=compression) as again:
            for batch in pcsv.open_csv(
                again, read_options=read, parse_options=parse, convert_options=convert
            ):
                emit(pa.Table.from_batches([batch]), emitted + 2, None)
                emitted += batch.num_rows
    dead(invalid)
