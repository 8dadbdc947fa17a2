"""File formats, read with pyarrow's C++ readers in bounded blocks (runs in a worker thread).

JSON lines are cut into blocks of `READ_BLOCK` bytes at line ends, so memory is bounded by the block
size, not the file size, and every block is parsed by `pyarrow.json` (multi-threaded). Only a block
that pyarrow rejects takes the slow path: line by line, good lines kept, bad ones to dead letters.
CSV streams through `pyarrow.csv.open_csv`; Parquet through `ParquetFile.iter_batches`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ingest.deadletters import MAX_RAW, DeadLetter
from ingest.sources.jsonlines import (
    DEFAULT_MAX_RECORD,
    READ_BLOCK,
    Dead,
    Emit,
    Joint,
    JsonLines,
    Position,
    table_from_records,
)
from ingest.sources.types import infer_text

Format = Literal["jsonl", "json", "csv", "parquet"]
PARQUET_BATCH_ROWS = 256 * 1024
COMPRESSED_PIECE = 64 << 10

_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_FORMATS: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}


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
    joint: Joint | None = None,
    text_fields: set[str] | None = None,
) -> Position:
    """Read `path` to its end, handing Arrow tables to `emit` and unreadable records to `dead`
    (plain JSON lines through `joint`, when given: see jsonlines.Joint). `text_fields`: the fields
    known to hold timestamps, kept and learned across the files of one source, so a file's first
    block is not parsed twice to learn them again.

    For plain JSON lines, reading starts at `start` (byte offset, line number) and returns where it
    stopped: a last line without its newline is parsed only when `settled()` says the file is done
    growing; otherwise it is left for the next read.
    """
    if fmt == "parquet":
        _read_parquet(path, emit)
        return (0, 1)
    if fmt == "json" and _is_document(path, compression):
        _read_document(path, compression, source, emit, dead)
        return (0, 1)
    with pa.input_stream(str(path), compression=compression) as stream:
        if fmt in ("jsonl", "json"):
            piece = COMPRESSED_PIECE
            if compression is None:  # a read allocates its whole size first: no more than the file
                piece = min(READ_BLOCK, max(COMPRESSED_PIECE, stream.size() - start[0] + 1))
            if start[0]:
                stream.seek(start[0])
            known = set() if text_fields is None else text_fields
            reader = JsonLines(source, emit, dead, max_record, piece, known, joint, compression is None)
            offset, line = reader.read(stream, start[1], settled)
            return start[0] + offset, line
        _read_csv(stream, _csv_header(path, compression), source, emit, dead)
        return (0, 1)


DOCUMENT_LIMIT = 256 << 20  # a .json document is parsed whole: bigger ones should be JSON lines
DOCUMENT_GROUP = 50_000  # records per emitted table


def _is_document(path: Path, compression: str | None) -> bool:
    """A `.json` file is a JSON document (an array, or one object over several lines) unless its
    first line is a whole JSON value (then it is JSON lines)."""
    with pa.input_stream(str(path), compression=compression) as stream:
        head = stream.read(COMPRESSED_PIECE)
    text = head.lstrip()
    if text.startswith(b"["):
        return True
    first, newline, _ = text.partition(b"\n")
    if not newline and len(head) == COMPRESSED_PIECE:
        return True  # a first line longer than this is no JSON-lines record we would read anyway
    try:
        json.loads(first)
    except ValueError:
        return bool(text)
    return False


def _read_document(path: Path, compression: str | None, source: str, emit: Emit, dead: Dead) -> None:
    """A whole JSON document: its objects become rows, numbered by the line each starts on. A
    document that does not parse is refused whole (never partly ingested): the file is kept."""
    with pa.input_stream(str(path), compression=compression) as stream:
        data = stream.read(DOCUMENT_LIMIT + 1)
    if len(data) > DOCUMENT_LIMIT:
        raise pa.ArrowInvalid(
            f"a JSON document over {DOCUMENT_LIMIT >> 20} MiB; write it as JSON lines (.jsonl) instead"
        )
    try:
        text = data.decode("utf-8")
        elements = _elements(text)
    except UnicodeDecodeError as exc:
        raise pa.ArrowInvalid(f"not UTF-8: {exc}; nothing of it was ingested") from None
    except json.JSONDecodeError as exc:
        raise pa.ArrowInvalid(
            f"not a valid JSON document: {exc.msg} at line {exc.lineno} column {exc.colno}; "
            "nothing of it was ingested"
        ) from None
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    bad: list[DeadLetter] = []
    for n, (value, line) in enumerate(elements, 1):
        if isinstance(value, dict):
            records.append(value)
            lines.append(line)
        else:
            reason = f"element {n} of the document is not a JSON object: {type(value).__name__}"
            bad.append(DeadLetter(source, line, reason, json.dumps(value, ensure_ascii=False)))
    for i in range(0, len(records), DOCUMENT_GROUP):
        group, part = lines[i : i + DOCUMENT_GROUP], records[i : i + DOCUMENT_GROUP]
        table, misfits = table_from_records(part)
        if misfits:
            bad += [DeadLetter(source, group[r], why, json.dumps(part[r])) for r, why in misfits.items()]
            keep = [r for r in range(len(part)) if r not in misfits]
            table, group = table.take(keep), [group[r] for r in keep]
        if table.num_rows:
            emit(table, group[0], group)
    dead(bad)


def _elements(text: str) -> list[tuple[Any, int]]:
    """(value, line it starts on) of each element of a top-level array, or of the one value."""
    decoder = json.JSONDecoder()
    out: list[tuple[Any, int]] = []
    pos, line, counted = _skip_space(text, 0), 1, 0

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    if not text[pos:].startswith("["):
        value, end = decoder.raw_decode(text, pos)
        out.append((value, line_at(pos)))
    else:
        pos = _skip_space(text, pos + 1)
        end = pos + 1 if text.startswith("]", pos) else -1
        while end < 0:
            value, after = decoder.raw_decode(text, pos)
            out.append((value, line_at(pos)))
            pos = _skip_space(text, after)
            if text.startswith("]", pos):
                end = pos + 1
            elif text.startswith(",", pos):
                pos = _skip_space(text, pos + 1)
            else:
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
    if _skip_space(text, end) != len(text):
        raise json.JSONDecodeError("extra data after the document", text, _skip_space(text, end))
    return out


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def raw_lines(path: Path, compression: str | None, wanted: list[int]) -> dict[int, bytes]:
    """The raw text of the given 1-based lines of a text file (for dead letters; at most MAX_RAW
    bytes each), read in one pass that stops after the last one wanted."""
    want, out = set(wanted), dict[int, bytes]()
    if not want:
        return out
    last = max(want)
    with pa.input_stream(str(path), compression=compression) as stream:
        line, carry = 1, b""
        while line <= last:
            data = stream.read(COMPRESSED_PIECE)
            if not data:
                if line in want and carry:
                    out[line] = carry[:MAX_RAW]
                break
            buf = carry + data
            start = 0
            while (end := buf.find(b"\n", start)) >= 0:
                if line in want:
                    out[line] = buf[start:end][:MAX_RAW]
                line += 1
                start = end + 1
                if line > last:
                    break
            carry = buf[start : start + MAX_RAW]  # a line's head is all a dead letter keeps
    return out


def elements(text: str) -> list[tuple[Any, int]]:
    """(value, line it starts on) of each element of a top-level JSON array, or of the one value;
    raises json.JSONDecodeError."""
    return _elements(text)


def _read_parquet(path: Path, emit: Emit) -> None:
    line = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        emit(pa.Table.from_batches([batch]), line, None)
        line += batch.num_rows


def read_stream(raw: BinaryIO, fmt: Format, source: str, emit: Emit, dead: Dead, max_record: int) -> None:
    """Read a stream that cannot be read twice (standard input) to its end: JSON lines or CSV."""
    if fmt == "csv":
        first = raw.readline()
        names = _csv_names(first)
        stream = pa.PythonFile(io.BufferedReader(_Prefixed(first, raw), READ_BLOCK), mode="r")
        _read_csv(stream, names, source, emit, dead)
        return
    if fmt != "jsonl":
        raise ValueError(f"format {fmt!r} cannot be read from a stream; use jsonl or csv")
    JsonLines(source, emit, dead, max_record).read(pa.PythonFile(raw, mode="r"))


class _Prefixed(io.RawIOBase):
    """`head`, then the rest of `rest`: a stream whose first line was already read."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.head:
            n = min(len(view), len(self.head))
            view[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def _csv_names(header: bytes) -> list[str] | None:
    if not header.strip():
        return None
    table = pcsv.read_csv(
        pa.BufferReader(header), convert_options=pcsv.ConvertOptions(strings_can_be_null=False)
    )
    return list(table.schema.names)


def _read_csv(stream: Any, names: list[str] | None, source: str, emit: Emit, dead: Dead) -> None:
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

    def send(table: pa.Table) -> None:
        nonlocal emitted
        lines = _csv_lines(emitted, table.num_rows, skipped) if skipped else None
        emit(infer_text(table), emitted + 2, lines)
        emitted += table.num_rows

    parse = pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid)
    read = pcsv.ReadOptions(block_size=READ_BLOCK, use_threads=False)
    # Every cell is read as text and typed by ingest.sources.types, so `01234` stays `01234`.
    if names is None:
        dead(invalid)
        return
    convert = pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
    try:
        reader = pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            send(pa.Table.from_batches([batch]))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" not in str(exc):
            invalid.append(DeadLetter(source, emitted + 2, f"unreadable from this row on: {exc}"))
    dead(invalid)


def _csv_header(path: Path, compression: str | None) -> list[str] | None:
    """The column names (the header row), read with a small block; None for an empty file."""
    read = pcsv.ReadOptions(block_size=1 << 20, use_threads=False)
    parse = pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda row: "skip")
    with pa.input_stream(str(path), compression=compression) as stream:
        try:
            return list(pcsv.open_csv(stream, read_options=read, parse_options=parse).schema.names)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return None
            raise


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
