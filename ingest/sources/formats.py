"""File formats, read with pyarrow's C++ readers in bounded blocks (runs in a worker thread).

JSON lines are cut into blocks of `READ_BLOCK` bytes at line ends, so memory is bounded by the block
size, not the file size, and every block is parsed by `pyarrow.json` (multi-threaded). Only a block
that pyarrow rejects takes the slow path: line by line, good lines kept, bad ones to dead letters.
CSV streams through `pyarrow.csv.open_csv`; Parquet through `ParquetFile.iter_batches`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from ingest.deadletters import MAX_RAW, DeadLetter

Format = Literal["jsonl", "csv", "parquet"]
READ_BLOCK = 32 << 20
PARQUET_BATCH_ROWS = 256 * 1024
DEFAULT_MAX_RECORD = 8 << 20
COMPRESSED_PIECE = 64 << 10
# emit(table, first_line, explicit_lines)
Emit = Callable[[pa.Table, int, list[int] | None], None]
Dead = Callable[[list[DeadLetter]], None]
Position = tuple[int, int]  # (byte offset, line number) where a resumable read continues

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


def resumable(fmt: Format, compression: str | None) -> bool:
    """Whether a read can continue from a byte offset (plain JSON lines); others are read again from
    the start, skipping the rows already taken."""
    return fmt == "jsonl" and compression is None


def read_file(
    path: Path,
    fmt: Format,
    compression: str | None,
    source: str,
    emit: Emit,
    dead: Dead,
    max_record: int = DEFAULT_MAX_RECORD,
    start: Position = (0, 1),
    settled: Callable[[], bool] = lambda: True,
) -> Position:
    """Read `path` to its end, handing Arrow tables to `emit` and unreadable records to `dead`.

    For plain JSON lines, reading starts at `start` (byte offset, line number) and returns where it
    stopped: a last line without its newline is parsed only when `settled()` says the file is done
    growing; otherwise it is left for the next read.
    """
    if fmt == "parquet":
        _read_parquet(path, emit)
        return (0, 1)
    with pa.input_stream(str(path), compression=compression) as stream:
        if fmt == "jsonl":
            piece = READ_BLOCK if compression is None else COMPRESSED_PIECE
            if start[0]:
                stream.seek(start[0])
            reader = _JsonLines(source, emit, dead, max_record, piece)
            offset, line = reader.read(stream, start[1], settled)
            return start[0] + offset, line
        _read_csv(stream, path, compression, source, emit, dead)
        return (0, 1)


def _read_parquet(path: Path, emit: Emit) -> None:
    line = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        emit(pa.Table.from_batches([batch]), line, None)
        line += batch.num_rows


@dataclass
class _JsonLines:
    source: str
    emit: Emit
    dead: Dead
    max_record: int
    piece: int = READ_BLOCK  # read size; small for compressed input

    def read(self, stream: Any, line: int = 1, settled: Callable[[], bool] = lambda: True) -> Position:
        """Parse to the end of `stream`; returns (bytes consumed, next line number). At the end, a
        last line without its newline is parsed only if `settled()`: a writer may still finish it."""
        carry = b""
        consumed = 0  # bytes read from the stream, including `carry`
        while True:
            data, error = self._read_block(stream)
            consumed += len(data)
            buf = carry + data if carry else data
            if error is not None:
                # Truncated/corrupt compression: keep every whole line read, say where it stopped.
                cut = buf.rfind(b"\n") + 1
                if cut:
                    self.block(buf[:cut], line)
                    line += buf.count(b"\n", 0, cut)
                reason = f"unreadable from this line on: {error}"
                self.dead([DeadLetter(self.source, line, reason, buf[cut : cut + MAX_RAW] or None)])
                return consumed, line
            if data:
                cut = buf.rfind(b"\n")
                if cut < 0:  # one line longer than a block: keep reading, up to max_record
                    if len(buf) > self.max_record:
                        carry, skipped = self._skip_long_line(stream, buf, line)
                        consumed += skipped
                        line += 1
                    else:
                        carry = buf
                    continue
                block, carry = buf[: cut + 1], buf[cut + 1 :]
            elif buf and settled():
                block, carry = buf, b""
            else:  # the end, or a last line still being written: leave it for the next read
                block, carry = b"", buf
            if block:
                self.block(block, line)
                line += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
            if not data:
                return consumed - len(carry), line

    def _read_block(self, stream: Any) -> tuple[bytes, Exception | None]:
        """Up to READ_BLOCK bytes; compressed input is read in small pieces so that a truncated
        stream loses at most one piece of what could still be decompressed."""
        pieces: list[bytes] = []
        size = 0
        try:
            while size < READ_BLOCK:
                piece = stream.read(min(self.piece, READ_BLOCK - size))
                if not piece:
                    break
                pieces.append(piece)
                size += len(piece)
        except (OSError, pa.ArrowException) as exc:
            return b"".join(pieces), exc
        return b"".join(pieces), None

    def _too_long(self, size: int, line: int, raw: bytes) -> None:
        reason = (
            f"record is {size} bytes, over batch.max_record_bytes ({self.max_record}); "
            "raise it or split the record"
        )
        self.dead([DeadLetter(self.source, line, reason, raw)])

    def _skip_long_line(self, stream: Any, head: bytes, line: int) -> tuple[bytes, int]:
        """Dead-letter a line over max_record without holding it in memory; returns what follows it
        and how many bytes were read from the stream."""
        size, rest, nread = len(head), b"", 0
        while data := stream.read(READ_BLOCK):
            nread += len(data)
            cut = data.find(b"\n")
            if cut >= 0:
                size, rest = size + cut, data[cut + 1 :]
                break
            size += len(data)
        self._too_long(size, line, head[:MAX_RAW])
        return rest, nread

    def block(self, block: bytes, first_line: int) -> None:
        long = _long_line(block, self.max_record)
        if long is not None:  # parse around it
            a, b = long
            self.block(block[:a], first_line)
            line = first_line + block.count(b"\n", 0, a)
            self._too_long(b - a, line, block[a : min(b, a + MAX_RAW)])
            self.block(block[b + 1 :], line + 1)
            return
        try:
            table = pjson.read_json(pa.BufferReader(block))
        except pa.ArrowInvalid as exc:
            if "Empty JSON file" in str(exc):
                return
            _parse_json_slowly(block, first_line, self.source, self.emit, self.dead)
            return
        expected = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        if table.num_rows == expected:
            self.emit(table, first_line, None)
        else:  # blank lines were skipped: number the rows explicitly
            lines = [first_line + i for i, text in enumerate(block.split(b"\n")) if text.strip()]
            self.emit(table, first_line, lines[: table.num_rows])


def _long_line(block: bytes, limit: int) -> tuple[int, int] | None:
    """(start, end) of the first line longer than `limit`, or None.

    Cheap: a line longer than `limit` contains a whole aligned window of limit/2 bytes with no
    newline, so only len/(limit/2) windows are searched, not every line.
    """
    if len(block) <= limit:
        return None
    step = max(1, limit // 2)
    s = 0
    while s < len(block):
        if block.find(b"\n", s, s + step) < 0:
            start = block.rfind(b"\n", 0, s) + 1
            end = block.find(b"\n", s)
            end = len(block) if end < 0 else end
            if end - start > limit:
                return start, end
            s = end + 1
        else:
            s += step
    return None


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
    skipped: list[int] = []  # line numbers of ragged rows, which pyarrow leaves out

    def on_invalid(row: Any) -> str:
        line = row.number if row.number is not None else None
        reason = f"expected {row.expected_columns} columns, got {row.actual_columns}"
        invalid.append(DeadLetter(source, line, reason, row.text))
        if line is not None:
            skipped.append(line)
        return "skip"

    emitted = 0

    def send(batch: pa.RecordBatch) -> None:
        nonlocal emitted
        lines = _csv_lines(emitted, batch.num_rows, skipped) if skipped else None
        emit(pa.Table.from_batches([batch]), emitted + 2, lines)
        emitted += batch.num_rows

    parse = pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid)
    read = pcsv.ReadOptions(block_size=READ_BLOCK, use_threads=False)
    try:
        reader = pcsv.open_csv(stream, read_options=read, parse_options=parse)
        for batch in reader:
            send(batch)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            dead(invalid)
            return
        if "conversion error" not in str(exc).lower() and "In CSV column" not in str(exc):
            dead([*invalid, DeadLetter(source, emitted + 2, f"unreadable from this row on: {exc}")])
            return
        # A later block holds a value the first block's types cannot take: read the file again as
        # text, skipping the rows already sent, and let the encoder cast (misfits become dead letters).
        names = reader.schema.names
        already, emitted = emitted, 0
        invalid.clear()
        skipped.clear()
        convert = pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
        with pa.input_stream(str(path), compression=compression) as again:
            for batch in pcsv.open_csv(
                again, read_options=read, parse_options=parse, convert_options=convert
            ):
                if emitted + batch.num_rows <= already:
                    emitted += batch.num_rows
                    continue
                if emitted < already:
                    batch, emitted = batch.slice(already - emitted), already
                send(batch)
    dead(invalid)


def _csv_lines(first: int, n: int, skipped: list[int]) -> list[int]:
    """Line numbers of good rows `first`..`first+n` (0-based among good rows), around skipped lines.

    Good rows fill the gaps between skipped lines (sorted), so this walks gaps, not lines.
    """
    out: list[int] = []
    good, line = 0, 2
    for s in [*skipped, 1 << 62]:
        gap = s - line  # lines line..s-1 are good rows
        if good + gap > first:
            lo = max(first - good, 0)
            take = min(gap - lo, n - len(out))
            out.extend(range(line + lo, line + lo + take))
            if len(out) == n:
                return out
        good += gap
        line = s + 1
    return out
