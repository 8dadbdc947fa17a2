"""JSON lines: blocks cut at line ends, parsed by pyarrow's C++ reader, and the exact slow path.

Every block is parsed by `pyarrow.json`; only a block that pyarrow rejects (types conflicting between
lines, a number it would change) takes the slow path: line by line, good lines kept as records whose
types never depend on their order, bad ones to dead letters. The same bytes always give the same rows
in the same order (journaled skip ranges and the HTTP source's blocks rely on it after a crash).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pjson

from ingest.durable.deadletters import DeadLetter
from ingest.parsing.nesting import MAX_DEPTH, maybe_too_deep, schema_too_deep, too_deep_reason, value_depth
from ingest.parsing.textfields import (
    TextFields,
    first_line,
    inferred_stamps,
    sampled_stamps,
    settle,
    text_schema,
)
from ingest.parsing.types import (
    column_from_values,
    lossy_doubles,
    numbers_as_text,
    recognise_timestamps,
    temporal_in_part,
)
from ingest.parsing.width import EXTRA, fold, sample, sparse_wide

READ_BLOCK = 32 << 20
DEFAULT_MAX_RECORD = 8 << 20


class Emit(Protocol):
    """emit(table, first_line, explicit_lines, nbytes): `nbytes`, the rows' Arrow bytes when the
    caller measured them already (-1: not measured)."""

    def __call__(
        self, table: pa.Table, first_line: int, lines: list[int] | None, nbytes: int = -1, /
    ) -> None: ...


Dead = Callable[[list[DeadLetter]], None]
Position = tuple[int, int]  # (byte offset, line number) where a resumable read continues

Parsed = list[tuple[pa.Table, int, list[int] | None]]  # what `emit` was given, in order
DeadStream = Callable[[DeadLetter, Iterable[bytes], Callable[[int], str]], None]


class Unreadable(OSError):
    """The input cannot be read past a point (truncated compression, text not in its encoding): it
    is kept and reported, never acknowledged as read."""


def parse_lines(
    block: bytes, source: str, max_record: int = DEFAULT_MAX_RECORD, lines: int | None = None
) -> tuple[Parsed, list[DeadLetter]]:
    """JSON lines held in memory (a request body), parsed exactly as a file's block is: the same
    bytes always give the same rows in the same order (the HTTP source relies on it after a crash).
    `lines`: how many the block holds, if the caller knows (else they are counted)."""
    tables: Parsed = []
    dead: list[DeadLetter] = []
    reader = JsonLines(
        source, lambda t, first, lines, _=-1: tables.append((t, first, lines)), dead.extend, max_record
    )
    reader.block(block, 1, lines)
    return tables, dead


@dataclass
class JsonLines:
    source: str
    emit: Emit
    dead: Dead
    max_record: int
    piece: int = READ_BLOCK  # read size; small for compressed input
    text_fields: TextFields = field(default_factory=set)  # read as text, typed by ingest.parsing.types
    joint: Joint | None = None  # blocks held to be parsed with other files' (see Joint)
    plain: bool = False  # an uncompressed file: read into a reused buffer (`_read_plain`)
    ahead: bool | None = None  # read the next block while parsing (None: when the file is big)
    # A dead letter too big to hold: written piece by piece (DeadLetters.write_stream); the reason
    # is made once its size is known.
    dead_stream: DeadStream | None = None  # None: the pieces are joined and go to `dead`

    def read(self, stream: Any, line: int = 1, settled: Callable[[], bool] = lambda: True) -> Position:
        """Parse to the end of `stream`; returns (bytes consumed, next line number). At the end, a
        last line without its newline is parsed only if `settled()`: a writer may still finish it."""
        if self.plain and self.joint is None:
            return self._read_plain(stream, line, settled)
        return self._read_pieces(stream, line, settled)

    def _read_plain(self, stream: Any, line: int, settled: Callable[[], bool]) -> Position:
        """`read` for an uncompressed file: blocks are read into reused buffers and parsed from
        there, with no copy into Python bytes and no fresh pages per block (measured: a third of the
        reading time went to those). In a file bigger than one block, a helper thread reads the next
        block into the other buffer while this one is parsed: the reader is the critical path of a
        big file. A line longer than the buffer goes on in `_read_pieces`."""
        ahead = self.piece == READ_BLOCK if self.ahead is None else self.ahead
        bufs = [_take_buffer(self.piece) for _ in range(2 if ahead else 1)]
        views = [memoryview(b) for b in bufs]
        helper = ThreadPoolExecutor(1, thread_name_prefix="ingest-read-ahead") if ahead else None
        try:
            i = held = consumed = 0  # `held`: bytes of a partial line kept at the front of a buffer
            n = stream.readinto(views[0][: self.piece])
            while True:
                buf, view = bufs[i], views[i]
                consumed += n
                end = held + n
                if n:
                    cut = buf.rfind(b"\n", 0, end) + 1
                    if not cut:  # no line end in a whole buffer: a very long line
                        carried = bytes(view[:end])
                        offset, line = self._read_pieces(stream, line, settled, carried)
                        return consumed - end + offset, line
                elif end and settled():
                    cut = end
                else:  # the end, or a last line still being written: leave it for the next read
                    return consumed - end, line
                lines = buf.count(b"\n", 0, cut) + (0 if buf[cut - 1] == 10 else 1)
                held = end - cut
                pending = None
                if helper is not None:  # the partial line starts the other buffer, read meanwhile
                    i = 1 - i
                    bufs[i][:held] = buf[cut:end]
                    pending = helper.submit(stream.readinto, views[i][held : self.piece])
                if _long_line(buf, self.max_record, cut) is None:
                    self._block_in_place(view[:cut], line, lines)
                else:
                    self.block_now(bytes(view[:cut]), line, lines)
                line += lines
                if pending is None:  # one buffer: the partial line moves to its front once parsed
                    buf[:held] = buf[cut:end]
                n = pending.result() if pending else stream.readinto(views[i][held : self.piece])
        finally:
            if helper is not None:
                helper.shutdown(wait=True)  # a read still running finishes before its buffer goes
            for view, buf in zip(views, bufs, strict=True):
                view.release()
                _give_back(buf)

    def _block_in_place(self, block: memoryview, first_line: int, lines: int) -> None:
        """Parse whole lines held in the reused buffer: only the usual case is taken here (every line
        one record); anything else goes the exact way (`block_now`) on a copy."""
        try:
            table = _parse(block, self.text_fields)
        except pa.ArrowInvalid:
            table = None
        if table is not None and table.num_rows == lines:
            self.emit(table, first_line, None)
        else:
            self.block_now(bytes(block), first_line, lines)

    def _read_pieces(
        self, stream: Any, line: int, settled: Callable[[], bool], carry: bytes = b""
    ) -> Position:
        consumed = len(carry)  # bytes read from the stream, including `carry`
        while True:
            data, error = self._read_block(stream)
            consumed += len(data)
            buf = carry + data if carry else data
            if error is not None:
                # Truncated/corrupt compression (or text not in its encoding): every whole line read
                # is taken; the file is kept and reported (read again later, skipping those rows).
                cut = buf.rfind(b"\n") + 1
                if cut:
                    self.block(buf[:cut], line)
                    line += buf.count(b"\n", 0, cut)
                raise Unreadable(f"unreadable from line {line} on: {error}") from error
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
                lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
                self.block(block, line, lines)
                line += lines
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

    def _too_long_reason(self, size: int) -> str:
        return (
            f"record is {size} bytes, over batch.max_record_bytes ({self.max_record}); "
            "raise it or split the record (the whole record is kept here)"
        )

    def _too_long(self, size: int, line: int, raw: bytes) -> None:
        self.dead([DeadLetter(self.source, line, self._too_long_reason(size), raw)])

    def _skip_long_line(self, stream: Any, head: bytes, line: int) -> tuple[bytes, int]:
        """Dead-letter a line over max_record whole, streamed into the dead letters without holding
        it in memory; returns what follows it and how many bytes were read from the stream."""
        rest, nread = b"", 0

        def pieces() -> Iterator[bytes]:
            nonlocal rest, nread
            yield head
            while data := stream.read(READ_BLOCK):
                nread += len(data)
                cut = data.find(b"\n")
                if cut >= 0:
                    rest = data[cut + 1 :]
                    yield data[:cut]
                    return
                yield data

        if self.dead_stream is not None:
            self.dead_stream(DeadLetter(self.source, line, ""), pieces(), self._too_long_reason)
        else:
            raw = b"".join(pieces())
            self._too_long(len(raw), line, raw)
        return rest, nread

    def block(self, block: bytes, first_line: int, lines: int | None = None) -> None:
        """Parse a block of whole lines (`lines` of them, if the caller counted already)."""
        if self.joint is not None and self.joint.take(self, block, first_line):
            return
        self.block_now(block, first_line, lines)

    def block_now(self, block: bytes, first_line: int, lines: int | None = None) -> None:
        long = _long_line(block, self.max_record)
        if long is not None:  # parse around it
            a, b = long
            self.block_now(block[:a], first_line)
            line = first_line + block.count(b"\n", 0, a)
            self._too_long(b - a, line, block[a:b])
            self.block_now(block[b + 1 :], line + 1)
            return
        try:
            table = _parse(block, self.text_fields)
        except pa.ArrowInvalid as exc:
            if "Empty JSON file" in str(exc):
                return
            table = None
        if table is None:  # types conflict between lines, or a number the fast reader changes
            _parse_json_slowly(block, first_line, self.source, self.emit, self.dead)
            return
        if lines is None:
            lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        if table.num_rows == lines:
            self.emit(table, first_line, None)
            return
        numbers = _object_lines(block, first_line)
        if numbers is not None and len(numbers) == table.num_rows:  # only blank lines were skipped
            self.emit(table, first_line, numbers)
        else:  # pyarrow read a line as two objects, or one object over lines: not JSON lines
            _parse_json_slowly(block, first_line, self.source, self.emit, self.dead)


def _object_lines(block: bytes, first_line: int) -> list[int] | None:
    """The numbers of the block's lines that are not blank, if each of those starts with `{` and
    ends with `}`; else None. pyarrow's reader also takes two objects on one line, and one object
    over several lines: neither is JSON lines (the per-line path makes them dead letters). No object
    can span lines that all start with `{` and end with `}` (inside one, a line ending `}` is
    followed by `,`, `}` or `]`), so then a row per such line is exactly what pyarrow read, when
    its row count is theirs. Only blocks whose rows are not their line count come here."""
    numbers = []
    for i, text in enumerate(block.split(b"\n")):
        if text := text.strip():
            if text[0] != 123 or text[-1] != 125:  # { and }
                return None
            numbers.append(first_line + i)
    return numbers


def _parse(block: bytes | memoryview, text_fields: TextFields) -> pa.Table | None:
    """pyarrow's reader, with timestamps kept as text (it would drop their zone) and recognised by
    our rules (`text_fields` learns them); None when only a per-line parse keeps every value exact."""
    if not valid_utf8(block) or maybe_too_deep(block):
        return None  # the per-line path dead-letters exactly the lines at fault
    sampled = sample(block)  # (blocks of 64 KiB or more)
    if sparse_wide(block, sampled):
        return None  # the per-line path folds wide lines
    inherited = bool(text_fields)  # learned from earlier blocks of the source
    if not inherited:
        text_fields |= sampled_stamps(sampled)
    while True:
        options = None
        if text_fields:
            schema = text_schema(text_fields)
            options = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
        try:
            table = pjson.read_json(pa.BufferReader(block), parse_options=options)
        except pa.ArrowInvalid:
            if not inherited:
                raise
            # A field the earlier blocks had as a time is something else here (an object, a number):
            # this block's own fields (a set of its own: the source's stays as it is), not a
            # per-line parse of a block pyarrow can read.
            text_fields, inherited = sampled_stamps(sampled), False
            continue
        stamps = inferred_stamps(table.schema)
        if not stamps - text_fields:
            break
        text_fields |= stamps  # parsed again with these as text: pyarrow's inference drops zones
    if lossy_doubles(table) or schema_too_deep(table.schema) or _has_empty_record(table):
        return None
    if options is not None:  # the fields of the explicit schema came first: back to the input's order
        table = settle(block, table, text_fields)
    return recognise_timestamps(table)


def valid_utf8(block: bytes | bytearray | memoryview) -> bool:
    """Whether the whole block is UTF-8 (pyarrow's reader would copy invalid bytes into a string
    column, and no reader could open the object): Arrow's validation, about 15 GB/s."""
    offsets = pa.array([0, len(block)], pa.int32()).buffers()[1]
    try:
        pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(block)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _has_empty_record(table: pa.Table) -> bool:
    """Some row has no field at all (`{}`, or only nulls: the per-line path tells which). Free in
    the usual case: a column without nulls rules every row out."""
    if table.num_columns == 0:
        return bool(table.num_rows > 0)
    if min(c.null_count for c in table.columns) == 0:
        return False
    all_null = pc.is_null(table.column(0))
    for col in table.columns[1:]:
        all_null = pc.and_(all_null, pc.is_null(col))
    found: bool = pc.any(all_null).as_py() is True
    return found


def parse_joint(blocks: list[bytes], max_record: int = DEFAULT_MAX_RECORD) -> list[pa.Table] | None:
    """Several blocks of whole lines (request bodies) in one pyarrow parse, cut back into each
    block's rows: the fixed cost of a parse (the reader's start, the sample, the timestamp rules) is
    paid once, not once per block. None when the cut-back rows might not be exactly what each
    block's own parse gives (`parse_lines`): a block without its last newline or with an over-long
    line, a blank or bad line anywhere, a value only a per-line parse keeps exact, or text that
    starts like a time in some block and stayed text (times in one block, other text or other
    zones in another: alone, that block could be typed), or blocks whose first lines have other
    fields (the joint table has every block's columns for every row: a few blocks of many fields
    each would make it as wide as all of them). The caller parses each block alone.
    A block's rows have the columns it gives values to (not the other blocks' fields, as nulls)."""
    if any(not b.endswith(b"\n") or _long_line(b, max_record) is not None for b in blocks):
        return None
    shapes = [None if (first := first_line(b)) is None else first.keys() for b in blocks]
    if shapes[0] is None or any(shape != shapes[0] for shape in shapes):
        return None  # blocks of other shapes: together, each would carry every other's columns
    counts = [b.count(b"\n") for b in blocks]
    text_fields: TextFields = set()
    try:
        table = _parse(b"".join(blocks), text_fields)
    except pa.ArrowInvalid:
        return None
    if table is None or table.num_rows != sum(counts):
        return None
    parts = list(zip(itertools.accumulate([0, *counts[:-1]]), counts, strict=True))
    if temporal_in_part(table, parts):
        return None
    return [_own_columns(table.slice(offset, n)) for offset, n in parts]


def _own_columns(part: pa.Table) -> pa.Table:
    """A block's rows without the columns only other blocks gave values (all null in its rows)."""
    empty = [c for c, col in zip(part.column_names, part.columns, strict=True) if col.null_count == len(col)]
    return part.drop_columns(empty) if empty else part


@dataclass
class Joint:
    """Whole blocks of many small files, parsed in one pyarrow call and cut back into each file's
    rows: a bundle of small files costs one parse, not one per file.

    Only blocks that end with a newline and hold no over-long line are taken. When the joint parse
    cannot be cut back exactly (a blank line, a bad line, types only a per-line parse keeps exact),
    every block is parsed on its own, as if it had never been held: the rows are the same either way.
    """

    limit: int = READ_BLOCK
    owner: object = None  # whose blocks are taken now (the caller's handle for errors in `flush`)
    held: list[tuple[JsonLines, bytes, int, object]] = field(default_factory=list)
    size: int = 0
    text_fields: TextFields = field(default_factory=set)

    def take(self, reader: JsonLines, block: bytes, first_line: int) -> bool:
        if (
            not block.endswith(b"\n")
            or self.size + len(block) > self.limit
            or _long_line(block, reader.max_record) is not None
        ):
            return False
        self.held.append((reader, block, first_line, self.owner))
        self.size += len(block)
        return True

    def drop(self, owner: object) -> None:
        """Forget what `owner` handed in (its read failed: it is read again from its top)."""
        self.held = [h for h in self.held if h[3] is not owner]
        self.size = sum(len(h[1]) for h in self.held)

    def flush(self) -> dict[object, Exception]:
        """Emit every held block's rows; returns the owners whose blocks failed (e.g. a dead letter
        could not be written), with the error."""
        held, self.held, self.size = self.held, [], 0
        if not held:
            return {}
        counts = [block.count(b"\n") for _, block, _, _ in held]
        try:
            table = _parse(b"".join(block for _, block, _, _ in held), self.text_fields)
        except pa.ArrowInvalid:
            table = None
        if table is not None and table.num_rows == sum(counts):
            # Measured once here, each file's slice counting its share by rows: pyarrow's measure
            # lets go of the GIL, and once a file it held up the batcher (see Chunk.nbytes).
            size, offset = table.nbytes, 0
            for (reader, _, first_line, _), n in zip(held, counts, strict=True):
                reader.emit(table.slice(offset, n), first_line, None, size * n // max(1, table.num_rows))
                offset += n
            return {}
        failed: dict[object, Exception] = {}
        for reader, block, first_line, owner in held:
            if owner in failed:
                continue
            try:
                reader.block_now(block, first_line)
            except Exception as exc:
                failed[owner] = exc
        return failed


def _long_line(block: bytes | bytearray, limit: int, size: int | None = None) -> tuple[int, int] | None:
    """(start, end) of the first line longer than `limit` in `block[:size]`, or None.

    Cheap: a line longer than `limit` contains a whole aligned window of limit/2 bytes with no
    newline, so only len/(limit/2) windows are searched, not every line.
    """
    size = len(block) if size is None else size
    if size <= limit:
        return None
    step = max(1, limit // 2)
    s = 0
    while s < size:
        if block.find(b"\n", s, min(s + step, size)) < 0:
            start = block.rfind(b"\n", 0, s) + 1
            end = block.find(b"\n", s, size)
            end = size if end < 0 else end
            if end - start > limit:
                return start, end
            s = end + 1
        else:
            s += step
    return None


# Read buffers of READ_BLOCK bytes are kept for the next big file (two per reader at a time), so
# their pages are touched once, not once per block; smaller ones are made to the file's size.
_SPARE = 2
_spare: list[bytearray] = []
_spare_lock = threading.Lock()


def _take_buffer(size: int) -> bytearray:
    if size == READ_BLOCK:
        with _spare_lock:
            if _spare:
                return _spare.pop()
    return bytearray(size)


def _give_back(buf: bytearray) -> None:
    if len(buf) == READ_BLOCK:
        with _spare_lock:
            if len(_spare) < _SPARE:
                _spare.append(buf)


def _parse_json_slowly(block: bytes, first_line: int, source: str, emit: Emit, dead: Dead) -> None:
    """Per-line fallback for a block pyarrow refused: keep every good record, dead-letter the rest."""
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    raws: list[bytes] = []
    bad: list[DeadLetter] = []
    for i, raw in enumerate(block.split(b"\n")):
        if not raw.strip():
            continue
        number = first_line + i
        value = _record(raw, source, number, bad)
        if value is not None:
            records.append(value)
            lines.append(number)
            raws.append(raw)
    if records:
        table, misfits = table_from_records(records)
        if misfits:
            bad += [DeadLetter(source, lines[r], why, raws[r]) for r, why in sorted(misfits.items())]
            keep = [r for r in range(len(records)) if r not in misfits]
            table, lines = table.take(keep), [lines[r] for r in keep]
        if table.num_rows:
            emit(table, first_line, lines)
    dead(bad)


def _record(raw: bytes, source: str, line: int, bad: list[DeadLetter]) -> dict[str, Any] | None:
    value, why = parse_record(raw)
    if why is not None:
        bad.append(DeadLetter(source, line, why, raw))
        return None
    return value


class _Unfit(ValueError):
    """A JSON number or constant no column can hold unchanged."""


def _exact_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Unfit(f"number {text} is out of the range of a double; send it as a string")
    return value


def _no_constant(text: str) -> float:
    raise _Unfit(f"{text} is not JSON (JavaScript's constants are not numbers); send null or a string")


DECODER = json.JSONDecoder(parse_float=_exact_float, parse_constant=_no_constant)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_record(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """One JSON line as a record, or why it cannot be one (invalid UTF-8 or JSON, not an object, an
    empty object, nested past MAX_DEPTH, a lone surrogate, a number a double cannot hold)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, (
            f"invalid UTF-8: {exc.reason} at byte {exc.start}; if the input is in another encoding, "
            "set the source's encoding (e.g. cp1252)"
        )
    # A byte order mark opening a line is no part of its JSON (files joined with `cat`, each
    # written with one): the record is read, where it was a dead letter for "Expecting value".
    text = text.removeprefix("\ufeff")
    try:
        value = DECODER.decode(text)
    except _Unfit as exc:
        return None, str(exc)
    except RecursionError:
        return None, too_deep_reason()
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    return value, record_problem(value, raw)


def record_problem(value: Any, raw: bytes = b"") -> str | None:
    """Why a parsed JSON value is no record we can store, or None."""
    if not isinstance(value, dict):
        return f"not a JSON object: {type(value).__name__}"
    if not value:
        return "an empty JSON object: a record with no fields has nothing to store"
    depth = value_depth(value)
    if depth > MAX_DEPTH:
        return too_deep_reason(depth)
    if (not raw or _SURROGATE_ESCAPE.search(raw)) and _lone_surrogate(value):
        return "a lone UTF-16 surrogate (\\ud800-\\udfff without its pair) is no text any reader accepts"
    return None


def _lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def table_from_records(records: list[dict[str, Any]]) -> tuple[pa.Table, dict[int, str]]:
    """Records parsed one by one, as columns whose types never depend on the records' order, and
    the records that do not fit them (index → reason; see ingest.parsing.types)."""
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    kept, extra = fold(records, names)  # past output.max_columns: one JSON text column
    columns, misfits = [], dict[int, str]()
    fields = []
    for name in kept:
        values = [r.get(name) for r in records]
        column, bad = column_from_values(name, values)
        columns.append(column)
        fields.append(pa.field(name, column.type, metadata=numbers_as_text(column, values)))
        for row, why in bad.items():
            misfits.setdefault(row, why)
    if extra:
        columns.append(pa.array(extra, pa.string()))
        fields.append(pa.field(EXTRA, pa.string()))
    return recognise_timestamps(pa.table(columns, schema=pa.schema(fields))), misfits
