"""File formats, read with pyarrow's C++ readers in bounded blocks (runs in a worker thread).

JSON lines are cut into blocks of `READ_BLOCK` bytes at line ends, so memory is bounded by the block
size, not the file size, and every block is parsed by `pyarrow.json` (multi-threaded). Only a block
that pyarrow rejects takes the slow path: line by line, good lines kept, bad ones to dead letters.
CSV streams through `pyarrow.csv.open_csv`; Parquet through `ParquetFile.iter_batches`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ingest.durable.deadletters import DeadLetter
from ingest.messages import one_line
from ingest.parsing.csvrows import HEADER_LIMIT, PIECE, LongRows, first_row_end
from ingest.parsing.jsonlines import (
    DECODER,
    DEFAULT_MAX_RECORD,
    READ_BLOCK,
    Dead,
    DeadStream,
    Emit,
    Joint,
    JsonLines,
    Position,
    Unreadable,
    record_problem,
    table_from_records,
)
from ingest.parsing.nesting import too_deep_reason
from ingest.parsing.sniff import UTF8, open_text
from ingest.parsing.textfields import TextFields
from ingest.parsing.types import infer_text

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


@dataclass(frozen=True)
class TextOptions:
    """How a source's text files are read: their encoding (transcoded to UTF-8 when not UTF-8; a
    byte-order mark wins) and the CSV dialect."""

    encoding: str = UTF8
    delimiter: str = ","
    quote: str = '"'
    header: bool = True  # the first row names the columns; else `columns` do
    columns: tuple[str, ...] = ()
    null_values: tuple[str, ...] = ()  # cells read as null (none by default: an empty cell is "")


PLAIN = TextOptions()


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
    text_fields: TextFields | None = None,
    options: TextOptions = PLAIN,
    dead_stream: DeadStream | None = None,
) -> Position:
    """Read `path` to its end, handing Arrow tables to `emit` and unreadable records to `dead`
    (plain JSON lines through `joint`, when given: see jsonlines.Joint). `text_fields`: the fields
    known to hold timestamps, kept and learned across the files of one source, so a file's first
    block is not parsed twice to learn them again. `compression` and `options.encoding` are what the
    file's bytes are (sniff.py), not what its name says.

    For plain JSON lines, reading starts at `start` (byte offset, line number) and returns where it
    stopped: a last line without its newline is parsed only when `settled()` says the file is done
    growing; otherwise it is left for the next read.
    """
    encoding = options.encoding
    if fmt == "parquet":
        _read_parquet(path, emit)
        return (0, 1)
    if fmt == "json" and _is_document(path, compression, encoding):
        _read_document(path, compression, encoding, source, emit, dead)
        return (0, 1)
    with open_text(path, compression, encoding) as stream:
        if fmt in ("jsonl", "json"):
            piece = COMPRESSED_PIECE
            plain = compression is None and encoding == UTF8
            if plain:  # a read allocates its whole size first: no more than the file
                piece = min(READ_BLOCK, max(COMPRESSED_PIECE, stream.size() - start[0] + 1))
            if start[0]:
                stream.seek(start[0])
            known = set() if text_fields is None else text_fields
            reader = JsonLines(source, emit, dead, max_record, piece, known, joint, plain)
            reader.dead_stream = dead_stream
            offset, line = reader.read(stream, start[1], settled)
            return start[0] + offset, line
        more = partial(stream.read, COMPRESSED_PIECE)
        _read_csv_input(stream, more, source, emit, dead, options, max_record, dead_stream)
        return (0, 1)


DOCUMENT_LIMIT = 256 << 20  # a .json document is parsed whole: bigger ones should be JSON lines
DOCUMENT_GROUP = 50_000  # records per emitted table


def _is_document(path: Path, compression: str | None, encoding: str) -> bool:
    """A `.json` file is a JSON document (an array, or one object over several lines) unless its
    first line is a whole JSON value (then it is JSON lines)."""
    with open_text(path, compression, encoding) as stream:
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


def _read_document(
    path: Path, compression: str | None, encoding: str, source: str, emit: Emit, dead: Dead
) -> None:
    """A whole JSON document: its objects become rows, numbered by the line each starts on. A
    document that does not parse is refused whole (never partly ingested): the file is kept."""
    with open_text(path, compression, encoding) as stream:
        data = stream.read(DOCUMENT_LIMIT + 1)
    if len(data) > DOCUMENT_LIMIT:
        raise pa.ArrowInvalid(
            f"a JSON document over {DOCUMENT_LIMIT >> 20} MiB; write it as JSON lines (.jsonl) instead"
        )
    try:
        text = data.decode("utf-8")
        elements = _elements(text)
    except UnicodeDecodeError as exc:
        raise pa.ArrowInvalid(
            f"not UTF-8 ({exc.reason} at byte {exc.start}); set the source's encoding (e.g. cp1252); "
            "nothing of it was ingested"
        ) from None
    except RecursionError:
        raise pa.ArrowInvalid(f"{too_deep_reason()}; nothing of it was ingested") from None
    except json.JSONDecodeError as exc:
        raise pa.ArrowInvalid(
            f"not a valid JSON document: {exc.msg} at line {exc.lineno} column {exc.colno}; "
            "nothing of it was ingested"
        ) from None
    except ValueError as exc:  # a number no double holds, a JavaScript constant
        raise pa.ArrowInvalid(
            f"not a JSON document we can store: {exc}; nothing of it was ingested"
        ) from None
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    bad: list[DeadLetter] = []
    for n, (value, line) in enumerate(elements, 1):
        problem = record_problem(value)
        if problem is None:
            records.append(value)
            lines.append(line)
        else:
            reason = f"element {n} of the document: {problem}"
            raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
            bad.append(DeadLetter(source, line, reason, raw))
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
    """(value, line it starts on) of each element of a top-level array, or of each top-level value
    (one object, or objects one after another as `jq` prints them)."""
    return [(value, line) for value, line, _, _ in iter_elements(text, sequence=True)]


def iter_elements(text: str, sequence: bool = False) -> Iterator[tuple[Any, int, int, int]]:
    """(value, line it starts on, start, end offsets in `text`) of each element of a top-level JSON
    array, or of the one value (`sequence`: of each of the values that follow one another, like
    `jq`'s pretty-printed output), one at a time: a caller that keeps only the text of each holds one
    value at a time. Raises json.JSONDecodeError (RecursionError past Python's nesting limit)."""
    pos, line, counted = _skip_space(text, 0), 1, 0

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    if not text.startswith("[", pos):
        value, end = DECODER.raw_decode(text, pos)
        yield value, line_at(pos), pos, end
        while sequence and (pos := _skip_space(text, end)) < len(text):
            value, end = DECODER.raw_decode(text, pos)
            yield value, line_at(pos), pos, end
    else:
        pos = _skip_space(text, pos + 1)
        end = pos + 1 if text.startswith("]", pos) else -1
        while end < 0:
            value, after = DECODER.raw_decode(text, pos)
            yield value, line_at(pos), pos, after
            pos = _skip_space(text, after)
            if text.startswith("]", pos):
                end = pos + 1
            elif text.startswith(",", pos):
                pos = _skip_space(text, pos + 1)
            else:
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
    if _skip_space(text, end) != len(text):
        raise json.JSONDecodeError("extra data after the document", text, _skip_space(text, end))


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def raw_lines(
    path: Path, compression: str | None, wanted: list[int], encoding: str = UTF8
) -> dict[int, bytes]:
    """The raw text of the given 1-based lines of a text file (for dead letters), read in one pass
    that stops after the last one wanted; only wanted lines are ever held whole."""
    want, out = set(wanted), dict[int, bytes]()
    if not want:
        return out
    last = max(want)
    with open_text(path, compression, encoding) as stream:
        line, parts = 1, list[bytes]()
        while line <= last:
            data = stream.read(COMPRESSED_PIECE)
            if not data:
                if line in want and parts:
                    out[line] = b"".join(parts)
                break
            start = 0
            while (end := data.find(b"\n", start)) >= 0:
                if line in want:
                    out[line] = b"".join([*parts, data[start:end]])
                parts = []
                line += 1
                start = end + 1
                if line > last:
                    break
            if line in want:
                parts.append(data[start:])
    return out


def _read_parquet(path: Path, emit: Emit) -> None:
    line = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        emit(pa.Table.from_batches([batch]), line, None)
        line += batch.num_rows


def read_stream(
    raw: BinaryIO,
    fmt: Format,
    source: str,
    emit: Emit,
    dead: Dead,
    max_record: int,
    options: TextOptions = PLAIN,
    dead_stream: DeadStream | None = None,
) -> None:
    """Read a stream that cannot be read twice (standard input) to its end: JSON lines or CSV."""
    if fmt == "csv":
        read = getattr(raw, "read1", raw.read)  # what has come, not a whole piece: stdin may be slow
        _read_csv_input(raw, lambda: read(PIECE), source, emit, dead, options, max_record, dead_stream)
        return
    if fmt != "jsonl":
        raise ValueError(f"format {fmt!r} cannot be read from a stream; use jsonl or csv")
    reader = JsonLines(source, emit, dead, max_record)
    reader.dead_stream = dead_stream
    reader.read(pa.PythonFile(raw, mode="r"))


class _Prefixed(io.RawIOBase):
    """`head`, then the rest of `rest`: a stream whose start was already read."""

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


def _csv_names(head: bytes, options: TextOptions) -> list[str] | None:
    """The header row's names (None: no header, an empty input): quoted names may hold the
    delimiter or a newline. Names that are empty or come again are renamed (see
    `unique_names`); a header that is not UTF-8 is an error naming the setting that fixes it."""
    if not head.strip():
        return None
    # latin-1 maps every byte to one character: the row is cut exactly as bytes, then decoded.
    text = io.StringIO(head.decode("latin-1"))
    rows = csv.reader(text, delimiter=options.delimiter, quotechar=options.quote)
    try:
        cells = next(rows, [])
    except csv.Error as exc:
        raise Unreadable(f"the CSV header row cannot be read: {exc}") from None
    names = []
    for cell in cells:
        try:
            names.append(cell.encode("latin-1").decode("utf-8"))
        except UnicodeDecodeError:
            raise Unreadable(
                f"the CSV header is not UTF-8 ({cell.encode('latin-1')!r}); set the source's encoding "
                '(e.g. encoding = "cp1252" for Excel\'s Windows exports)'
            ) from None
    return unique_names(names)


def unique_names(names: list[str]) -> list[str]:
    """Column names a table can have: an empty name becomes `column_<position>`, a name that comes
    again takes the first free `<name>_2`, `<name>_3`, … (names differing only by case are the
    encoder's: see pipeline.encode.case_twins)."""
    taken = set(names)
    out: list[str] = []
    for i, name in enumerate(names, 1):
        if not name.strip():
            name = f"column_{i}"
        if name in out:
            n = 2
            while f"{name}_{n}" in taken:
                n += 1
            name = f"{name}_{n}"
        taken.add(name)
        out.append(name)
    return out


def _read_csv_input(
    raw: Any,
    more: Callable[[], bytes],
    source: str,
    emit: Emit,
    dead: Dead,
    options: TextOptions,
    max_record: int,
    dead_stream: DeadStream | None,
) -> None:
    """CSV from its start (a file or standard input, read once): the header row, found with `more`
    (which reads `raw`), then the rows after it."""
    header = _find_header(more, options)
    stream = io.BufferedReader(_Prefixed(header.rest, raw), PIECE)
    _read_csv(stream, header.names, source, emit, dead, options, max_record, dead_stream, header.lead)


def _read_csv(
    stream: Any,
    names: list[str] | None,
    source: str,
    emit: Emit,
    dead: Dead,
    options: TextOptions,
    max_record: int = DEFAULT_MAX_RECORD,
    dead_stream: DeadStream | None = None,
    lead: int = 0,
) -> None:
    """Stream CSV rows as text columns (typed later by ingest.parsing.types, so `01234` stays
    `01234`). Cells are read as bytes: a row that is not UTF-8 is a dead letter with its bytes, the
    rest land. A row longer than `max_record` is a dead letter too (csvrows.py), streamed into
    `dead_stream` when given. A read that fails midway (truncated compression) raises Unreadable:
    the rows before it are taken, the input is kept. `stream` starts at the first data row, after
    `lead` lines (the header row and any blank lines before it: see `_find_header`)."""
    invalid: list[DeadLetter] = []
    skipped: list[int] = []  # line numbers of ragged or long rows, which pyarrow never sees
    first_line = lead + 1

    def on_long(line: int, pieces: Iterator[bytes]) -> None:
        line += lead
        skipped.append(line)

        def reason(size: int) -> str:
            return (
                f"row of {size} bytes with no end within batch.max_record_bytes ({max_record}); "
                "raise it or split the row"
            )

        if dead_stream is not None:
            dead_stream(DeadLetter(source, line, ""), pieces, reason)
        else:
            data = b"".join(pieces)
            invalid.append(DeadLetter(source, line, reason(len(data)), data))

    limit = max(min(max_record, READ_BLOCK - 2 * PIECE), 1)  # rows pyarrow's block always holds
    stream = pa.PythonFile(
        io.BufferedReader(LongRows(stream, limit, options.quote, on_long), PIECE), mode="r"
    )

    def on_invalid(row: Any) -> str:
        line = row.number + lead if row.number is not None else None
        reason = f"expected {row.expected_columns} columns, got {row.actual_columns}"
        invalid.append(DeadLetter(source, line, reason, row.text))
        if line is not None:
            skipped.append(line)
        return "skip"

    emitted = 0

    def send(table: pa.Table) -> None:
        nonlocal emitted
        n = table.num_rows
        lines = _csv_lines(emitted, n, sorted(skipped), first_line) if skipped else None
        table, bad = _as_text(table, options.delimiter.encode())
        if bad:
            numbers = lines or list(range(emitted + first_line, emitted + first_line + n))
            invalid.extend(
                DeadLetter(source, numbers[r], reason, raw) for r, (reason, raw) in sorted(bad.items())
            )
            keep = [r for r in range(n) if r not in bad]
            table, lines = table.take(keep), [numbers[r] for r in keep]
        if table.num_rows:
            emit(infer_text(table), (lines or [emitted + first_line])[0], lines)
        emitted += n

    if names is None:
        dead(invalid)
        return
    parse = pcsv.ParseOptions(
        delimiter=options.delimiter,
        quote_char=options.quote,
        newlines_in_values=True,
        invalid_row_handler=on_invalid,
    )
    read = pcsv.ReadOptions(block_size=READ_BLOCK, use_threads=False, column_names=names)
    convert = pcsv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.binary()),
        strings_can_be_null=bool(options.null_values),
        null_values=list(options.null_values),
        quoted_strings_can_be_null=False,
    )
    try:
        reader = pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            send(pa.Table.from_batches([batch]))
    except (OSError, pa.ArrowInvalid) as exc:
        if "Empty CSV file" not in str(exc):
            dead(invalid)
            raise Unreadable(f"unreadable from row {emitted + 1} on: {one_line(str(exc))}") from exc
    dead(invalid)


def _as_text(table: pa.Table, delimiter: bytes) -> tuple[pa.Table, dict[int, tuple[str, bytes]]]:
    """Binary cells as text; rows with a cell that is not UTF-8 → (reason, the row's bytes)."""
    columns, bad = [], dict[int, tuple[str, bytes]]()
    for name, col in zip(table.column_names, table.columns, strict=True):
        try:
            columns.append(col.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values = col.to_pylist()
        text: list[str | None] = []
        for r, v in enumerate(values):
            try:
                text.append(None if v is None else v.decode("utf-8"))
            except UnicodeDecodeError as exc:
                text.append(None)
                reason = (
                    f"column {name!r} is not UTF-8 ({exc.reason} at byte {exc.start}); if the file is "
                    "in another encoding, set the source's encoding (e.g. cp1252)"
                )
                bad.setdefault(r, (reason, b""))
        columns.append(pa.array(text, pa.string()))
    if bad:
        cells = [c.to_pylist() for c in table.columns]
        for r, (reason, _) in bad.items():
            raw = delimiter.join(b"" if col[r] is None else col[r] for col in cells)
            bad[r] = (reason, raw)
    return pa.table(columns, names=table.column_names), bad


@dataclass
class _Header:
    names: list[str] | None  # None: the input is empty (or blank)
    lead: int  # lines before the first data row: the header row and blank lines before it
    rest: bytes  # bytes read past the header row


def _find_header(more: Callable[[], bytes], options: TextOptions) -> _Header:
    """The column names (the header row, or the configured ones), reading from the input's start
    with `more` (b"": the end). The header row is the first row that is not blank: a blank first
    line taken for it made every row of a file vanish (an empty header is an empty input). A quoted
    name may hold a newline; rows may end with CR alone (old Mac files)."""
    if not options.header:
        return _Header(list(options.columns), 0, b"")
    quote = options.quote.encode()
    data, blank, newline, end, eof = b"", 0, b"", 0, False
    while True:
        if not newline:  # (a CR at the very end may be the first half of CRLF)
            if b"\n" in data:
                newline = b"\n"
            elif b"\r" in data[:-1] or (eof and b"\r" in data):
                newline = b"\r"
        if newline:
            start = 0
            while (nl := data.find(newline, start)) >= 0 and not data[start:nl].strip():
                start, blank = nl + 1, blank + 1
            data = data[start:]
            if end := first_row_end(data, quote, newline):
                break
        if eof:
            break
        if len(data) >= HEADER_LIMIT:
            raise Unreadable(f"the CSV header row has no end within {HEADER_LIMIT >> 20} MiB")
        piece = more()
        eof = not piece
        data += piece
    row = data[:end] if end else data
    lines = row.count(newline) if newline else 0
    return _Header(_csv_names(row, options), blank + lines, data[len(row) :])


def _csv_lines(first: int, n: int, skipped: list[int], first_line: int = 2) -> list[int]:
    """Line numbers of good rows `first`..`first+n` (0-based among good rows), around skipped lines.

    Good rows fill the gaps between skipped lines (sorted), so this walks gaps, not lines.
    """
    out: list[int] = []
    good, line = 0, first_line
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
