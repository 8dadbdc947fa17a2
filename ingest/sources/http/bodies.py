"""Request bodies of the HTTP source: received within a size and a time limit, media type,
decompression within a limit, and records.

A body becomes a *block*: its accepted records as JSON lines, in order, each ending in a newline.
The block is what the segment keeps and what is parsed into rows, both when the request comes in and
after a crash (`jsonlines.parse_lines` gives the same rows for the same bytes), so the rows of a block
always have the same numbers. Malformed lines never reach the block: they are rejected with their
line number in the body. When the block's lines are not the body's, the segment keeps which body
line each one was (`stored`), so dead letters found later name the body's line, restart or not.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import anyio
import pyarrow as pa
from starlette.requests import Request

from ingest.durable.deadletters import DeadLetter
from ingest.parsing.formats import iter_elements
from ingest.parsing.jsonlines import Parsed, parse_joint, parse_lines
from ingest.parsing.nesting import too_deep_reason

Media = Literal["ndjson", "json"]
MEDIA_TYPES: dict[str, Media] = {
    "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson",
    "application/json": "json",
}
ENCODINGS = ("identity", "gzip", "x-gzip", "zstd")
_PIECE = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"
_TRAILER = b"#lines "  # `stored`: the body line of each block line, after the block


class BodyError(Exception):
    """A request that cannot be taken at all: the HTTP status and one line saying why and the fix."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds, for a 503


class Bodies:
    """Bodies as they arrive: at most `limit` bytes (413), whole within `timeout` seconds (408), and
    cut when the worker stops (503): a slow or stalled sender would otherwise hold a connection, its
    memory and a drain for as long as it likes. Nothing of a refused body has been taken."""

    def __init__(self, limit: int, timeout: float, retry_after: int) -> None:
        self.limit = limit
        self.timeout = timeout
        self.retry_after = retry_after
        self._arriving: set[anyio.CancelScope] = set()
        self._cut = False

    def cut(self) -> None:
        """The worker is stopping: bodies still arriving get 503, and so do later ones."""
        self._cut = True
        for scope in self._arriving:
            scope.cancel()

    async def receive(self, request: Request) -> bytes:
        too_big = BodyError(413, f"body over max_request_bytes ({self.limit} bytes); send smaller requests")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise too_big
        pieces: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.timeout) as arriving:
            self._arriving.add(arriving)
            if self._cut:
                arriving.cancel()
            try:
                async for piece in request.stream():
                    size += len(piece)
                    if size > self.limit:
                        raise too_big
                    pieces.append(piece)
            finally:
                self._arriving.discard(arriving)
        if arriving.cancelled_caught:
            if self._cut:
                why = "the worker is stopping; send again to this or another worker"
                raise BodyError(503, why, self.retry_after)
            raise BodyError(
                408,
                f"the body did not arrive within body_timeout ({self.timeout:g}s); "
                "send it faster or in smaller requests",
            )
        return b"".join(pieces)


class ParseBudget:
    """Bytes of bodies being parsed at once, at most `limit` (a body bigger than that alone): a parse
    holds a few times its body (the body, the block, the rows), so concurrent requests stay within a
    bound set by configuration (`batch.max_bytes` / 2), whatever their number. A request that cannot
    start within `wait` seconds gets 503."""

    def __init__(self, limit: int, wait: float, retry_after: int) -> None:
        self.limit = max(limit, 1)
        self.wait = wait
        self.retry_after = retry_after
        self.used = 0
        self._freed = anyio.Event()

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        size = min(size, self.limit)
        with anyio.move_on_after(self.wait):
            while self.used and self.used + size > self.limit:
                await self._freed.wait()
        if self.used and self.used + size > self.limit:
            raise BodyError(503, "too many bodies being parsed at once; send again", self.retry_after)
        self.used += size
        try:
            yield
        finally:
            self.used -= size
            self._freed.set()
            self._freed = anyio.Event()


def media_type(content_type: str | None) -> Media:
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    media = MEDIA_TYPES.get(bare)
    if media is None:
        got = f"Content-Type {bare!r}" if bare else "no Content-Type"
        raise BodyError(
            415, f"{got}: send application/x-ndjson (JSON lines) or application/json (an array of objects)"
        )
    return media


def check_encoding(encoding: str | None) -> str:
    coding = (encoding or "identity").strip().lower()
    if coding not in ENCODINGS:
        raise BodyError(415, f"Content-Encoding {coding!r}: send gzip, zstd or none")
    return coding


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body as sent before compression, refused (413) once it would exceed `limit` bytes: a
    small compressed body cannot make the worker hold gigabytes."""
    if encoding == "identity":
        return body
    too_big = BodyError(413, f"body over max_request_bytes ({limit} bytes) once decompressed")
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(body, limit, too_big)
    pieces: list[bytes] = []
    size = 0
    try:
        with pa.CompressedInputStream(pa.BufferReader(body), "zstd") as stream:
            while piece := stream.read(_PIECE):
                size += len(piece)
                if size > limit:
                    raise too_big
                pieces.append(piece)
    except (OSError, pa.ArrowException) as exc:
        raise BodyError(400, f"body: not valid zstd ({exc})") from None
    return b"".join(pieces)


def _gunzip(body: bytes, limit: int, too_big: BodyError) -> bytes:
    """Every member of a gzip body, one after another (RFC 1952: a gzip stream may hold several, as
    writers that compress a piece at a time send them; only the first was read, and the records in
    the others were dropped without a word), with the zero bytes allowed between them."""
    out = b""
    rest = body
    while True:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflate.decompress(rest, limit + 1 - len(out))
            if len(out) > limit or inflate.unconsumed_tail:
                raise too_big
            out += inflate.flush()
        except zlib.error as exc:
            raise BodyError(400, f"body: not valid gzip ({exc})") from None
        if len(out) > limit:
            raise too_big
        if not inflate.eof:
            raise BodyError(400, "body: gzip stream cut short")
        rest = inflate.unused_data.lstrip(b"\0")
        if not rest:
            return out


@dataclass
class Records:
    """The accepted part of a body, and what was rejected."""

    block: bytes = b""  # accepted records, one JSON line each
    tables: Parsed = field(default_factory=list)  # rows of `block` (lines numbered within it)
    lines: list[int] = field(default_factory=list)  # body line of each line of `block`
    rejected: list[DeadLetter] = field(default_factory=list)  # line = the body's line

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t, _, _ in self.tables)


def records(data: bytes, media: Media, source: str, max_record: int) -> Records:
    """Split a decompressed body into accepted records and rejected lines (blocking: run in a thread).
    A UTF-8 byte order mark before the body is skipped, whatever its media type."""
    data = data.removeprefix(UTF8_BOM)
    if _is_document(data, media):
        return _document(data, source, max_record)
    return _json_lines(data, source, max_record)


def _is_document(data: bytes, media: Media) -> bool:
    """A JSON array or object sent as json (not JSON lines sent as json)."""
    return media == "json" and data.lstrip()[:1] in (b"[", b"{") and not _lines_of_objects(data)


def records_together(bodies: list[tuple[bytes, Media, str]], max_record: int) -> list[Records | Exception]:
    """`records` of each of several decompressed bodies (data, media, source), the same Records or
    the error `records` raises for it: bodies of JSON lines are parsed in one pyarrow call
    (`parse_joint`) when that gives each its own rows exactly; otherwise, and any other body, alone."""
    datas = [data.removeprefix(UTF8_BOM) for data, _, _ in bodies]
    lines = [
        i for i, (data, (_, media, _)) in enumerate(zip(datas, bodies, strict=True)) if _lines(data, media)
    ]
    together = parse_joint([datas[i] for i in lines], max_record) if len(lines) > 1 else None
    out: list[Records | Exception] = []
    joint = dict(zip(lines, together, strict=True)) if together is not None else {}
    for i, (data, media, source) in enumerate(bodies):
        if (table := joint.get(i)) is not None:
            out.append(Records(datas[i], [(table, 1, None)], list(range(1, table.num_rows + 1))))
            continue
        try:
            out.append(records(data, media, source, max_record))
        except Exception as exc:  # this body's answer (e.g. a BodyError), not its neighbours'
            out.append(exc)
    return out


def _lines(data: bytes, media: Media) -> bool:
    """A body `records` reads as JSON lines, whole lines only (not a JSON document)."""
    return data.endswith(b"\n") and not _is_document(data, media)


def consecutive(lines: list[int]) -> bool:
    """The block's lines are the body's lines 1..n: nothing was left out, nothing shares a line."""
    return lines == list(range(1, len(lines) + 1))


def stored(recs: Records) -> bytes:
    """What the segment keeps of a request: its block and, when the body's lines are not the
    block's (lines rejected or blank, or a JSON document's elements), one more line saying which
    body line each block line was. A block read again after a restart then numbers its rows, and
    so its dead letters, as it did the first time. The common case stores the block alone."""
    if consecutive(recs.lines):
        return recs.block
    return recs.block + _TRAILER + json.dumps(_runs(recs.lines), separators=(",", ":")).encode() + b"\n"


def stored_records(data: bytes, lines: int, source: str, max_record: int) -> Records:
    """A stored block's records again (after a restart), numbered with its body's lines; `lines`:
    the block's record lines (its journaled count). A block holds only lines that parsed when it
    was accepted."""
    block, numbers = data, list(range(1, lines + 1))
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1  # the last line: the line numbers, if any
    if data.startswith(_TRAILER, cut):  # a record line is a JSON object: never this
        block, numbers = data[:cut], _expand(json.loads(data[cut + len(_TRAILER) :]))
    if len(numbers) != lines or block.count(b"\n") != lines:
        raise pa.ArrowInvalid(f"{source}: a stored block does not hold its {lines} journaled lines")
    tables, dead = parse_lines(block, source, max_record)
    if dead:  # cannot happen for a block written by `records`; never drop rows silently
        raise pa.ArrowInvalid(f"{source}: a stored block no longer parses: {dead[0].reason}")
    return Records(block, tables, numbers)


def _runs(lines: list[int]) -> list[tuple[int, int, int]]:
    """`lines` as (first, count, step) runs: a body with one bad line is two runs."""
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(lines):
        step = lines[i + 1] - lines[i] if i + 1 < len(lines) else 1
        j = i + 1
        while j < len(lines) and lines[j] - lines[j - 1] == step:
            j += 1
        runs.append((lines[i], j - i, step))
        i = j
    return runs


def _expand(runs: list[list[int]]) -> list[int]:
    return [first + k * step for first, count, step in runs for k in range(count)]


def _lines_of_objects(data: bytes) -> bool:
    """JSON lines sent as application/json: a first line that is a whole object, and more lines."""
    first, newline, rest = data.lstrip().partition(b"\n")
    if not newline or not rest.strip():
        return False
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _json_lines(data: bytes, source: str, max_record: int) -> Records:
    count = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    rejected: list[DeadLetter] = []
    tables, dead = parse_lines(data, source, max_record, count)  # (its lines counted once)
    if not dead and sum(t.num_rows for t, _, _ in tables) == count:  # the common case: all good
        block = data if data.endswith(b"\n") or not data else data + b"\n"
        if block is not data:
            tables, dead = parse_lines(block, source, max_record)
        if not dead:
            return Records(block, tables, list(range(1, count + 1)))
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    numbered = list(range(1, len(raw) + 1))
    # Keep the good lines only, and parse exactly those bytes (what the segment will hold). A line
    # that parsed among its neighbours but not in the smaller block (rare: a type that only fitted
    # beside them) is rejected too, until the block parses whole.
    rejected += dead
    bad = {d.line for d in dead}
    keep = [n for n in numbered if n not in bad and raw[n - 1].strip()]
    while True:
        block = b"".join(raw[n - 1] + b"\n" for n in keep)
        tables, dead = parse_lines(block, source, max_record)
        if not dead:
            rejected.sort(key=lambda d: d.line or 0)
            return Records(block, tables, keep, rejected)
        gone = {d.line for d in dead}
        rejected += [DeadLetter(source, keep[(d.line or 1) - 1], d.reason, d.raw) for d in dead]
        keep = [n for i, n in enumerate(keep, 1) if i not in gone]


def _document(data: bytes, source: str, max_record: int) -> Records:
    """A JSON array of objects (or one object): each object becomes one line of the block, its own
    text with line breaks (whitespace between tokens) made spaces. Elements are decoded one at a time
    and let go (only their text is kept), so an array costs about what the same JSON lines cost. An
    element that is not UTF-8 or not an object is rejected with the line it starts on; an array
    nested too deep to parse, or not JSON, is refused whole (400)."""
    text = data.decode("utf-8", "surrogateescape")  # bytes that are not UTF-8 stay, marked
    block = bytearray()
    where: list[int] = []
    rejected: list[DeadLetter] = []
    try:
        for n, (value, line, start, end) in enumerate(iter_elements(text), 1):
            piece = text[start:end]
            try:
                raw = piece.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = piece.encode("utf-8", "surrogateescape")
                reason = f"element {n} is not UTF-8 (byte {exc.start}); send UTF-8 text"
                rejected.append(DeadLetter(source, line, reason, bad))
                continue
            if not isinstance(value, dict):
                reason = f"element {n} is not a JSON object: {type(value).__name__}"
                rejected.append(DeadLetter(source, line, reason, raw))
                continue
            if len(raw) > max_record:
                reason = (
                    f"record is {len(raw)} bytes, over batch.max_record_bytes ({max_record}); "
                    "raise it or split the record"
                )
                rejected.append(DeadLetter(source, line, reason, raw))
                continue
            if b"\n" in raw or b"\r" in raw:  # only whitespace: a JSON string holds no raw line break
                raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
            block += raw
            block += b"\n"
            where.append(line)
    except RecursionError:
        raise BodyError(400, f"body: {too_deep_reason()}; nothing was accepted") from None
    except json.JSONDecodeError as exc:
        raise BodyError(
            400,
            f"body: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; nothing was accepted",
        ) from None
    except ValueError as exc:  # a number no double holds, a JavaScript constant
        raise BodyError(400, f"body: not JSON we can store: {exc}; nothing was accepted") from None
    del text
    out = _json_lines(bytes(block), source, max_record)
    del block
    # Lines of the block are numbered 1..n; say which line of the body each element started on.
    for d in out.rejected:
        rejected.append(DeadLetter(source, where[(d.line or 1) - 1], d.reason, d.raw))
    rejected.sort(key=lambda d: d.line or 0)
    return Records(out.block, out.tables, [where[n - 1] for n in out.lines], rejected)
