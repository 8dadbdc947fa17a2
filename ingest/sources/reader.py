"""Sources whose units are local files (directory, landing): discovery finds files, readers parse them.

Parsing runs in a worker thread (pyarrow's C++ readers); each chunk waits for spool room before it is
sent, so a full spool pauses reading instead of growing memory.

A file that cannot be read (permissions, vanished, an I/O error midway, not the format its name says)
is never acknowledged: it keeps its claim, is reported once through `problems()` and is read again
later, continuing after the rows already taken.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
import pyarrow as pa
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.config import SourceConfig
from ingest.durable.deadletters import DeadLetters
from ingest.durable.files import printable
from ingest.logs import get_logger
from ingest.parsing.formats import PLAIN, TextOptions, detect, raw_lines, read_file
from ingest.parsing.jsonlines import Joint
from ingest.parsing.sniff import UTF8, Sniffed, sniff
from ingest.parsing.textfields import TextFields
from ingest.sources.base import Chunk, Item, SourceUnit, UnitHandle, UnitRead, Units

log = get_logger("ingest.sources.reader")
READERS = 1  # tasks reading files: pyarrow parses with every core already; a second reader only added
# GIL and thread contention (measured: 20,000 small files 11 % faster with one, big files the same)
# Small files are taken in bundles: one thread call opens, reads or acknowledges many of them, so a
# directory of many small files is not paid for in thread hops and journal commits per file.
BUNDLE_FILES = 256
BUNDLE_BYTES = 4 << 20  # of small files read in one go (their rows are held until sent)
SMALL_FILE = 256 << 10  # bigger files are read on their own, each chunk sent as soon as it is parsed
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")  # files still being written
READ_ERRORS = (OSError, pa.ArrowException)


@dataclass(eq=False)
class FileRead(UnitHandle):
    """A file's unit: where a resumable read goes on, and how to find a line's raw text again."""

    position: tuple[int, int] = (0, 1)  # (byte offset, line) where a resumable read goes on
    stat: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) when its last byte was read
    lines: Callable[[list[int]], dict[int, bytes]] | None = None  # line number → its raw text

    def raw_lines(self, lines: list[int]) -> dict[int, bytes]:
        return self.lines(lines) if self.lines is not None else {}

    def read_fingerprint(self) -> str | None:
        return None if self.stat is None else ":".join(map(str, self.stat))

    def read_again(self) -> None:
        self.position = (0, 1)

    def go_on_from(self, earlier: UnitHandle) -> None:
        if isinstance(earlier, FileRead):
            self.position = earlier.position


def file_read(unit: SourceUnit) -> FileRead:
    assert isinstance(unit.handle, FileRead), "a file source's unit has a FileRead handle"
    return unit.handle


def read_into(
    path: Path,
    name: Path,
    configured_format: str,
    unit: SourceUnit,
    emit: Callable[[Chunk], None],
    dead: DeadLetters,
    max_record_bytes: int,
    settled: Callable[[], bool] = lambda: True,
    joint: Joint | None = None,
    text_fields: TextFields | None = None,
    options: TextOptions = PLAIN,
) -> None:
    """Read `path` (whose format `name` tells; its compression and text encoding its bytes tell)
    from where `unit` stopped, handing its chunks to `emit` (blocking: runs in a thread; plain JSON
    lines may be held by `joint` until it is flushed).

    Raises what reading raised (OSError, ArrowException); the unit is then set to be read again
    from its top, skipping the rows already sent.
    """
    detected = detect(name, configured_format)
    assert detected is not None
    fmt, named = detected
    found = sniff(path, named, options.encoding) if fmt != "parquet" else Sniffed(None, UTF8, None)
    if (mismatch := found.mismatch()) is not None and unit.name not in _mismatched:
        _mismatched.add(unit.name)
        log.warning("compression told by the file's bytes, not its name", path=unit.name, why=mismatch)
    compression = found.compression
    if found.encoding != options.encoding:
        options = replace(options, encoding=found.encoding)

    def chunks(table: pa.Table, first_line: int, lines: list[int] | None, nbytes: int = -1, /) -> None:
        for chunk in unit.chunks(table, first_line, lines, nbytes):
            emit(chunk)

    handle = file_read(unit)
    if fmt != "parquet":
        handle.lines = partial(raw_lines, path, compression, encoding=found.encoding)
    if not (fmt == "jsonl" and found.plain):  # only then does a byte offset say where to go on
        unit.read_again()
    try:
        handle.position = read_file(
            path,
            fmt,
            compression,
            unit.name,
            chunks,
            partial(dead.write, origin=unit.origin),
            max_record_bytes,
            handle.position,
            settled,
            joint,
            text_fields,
            options,
            partial(dead.write_stream, origin=unit.origin),
        )
    except BaseException:
        unit.read_again()
        raise


_mismatched: set[str] = set()  # inputs whose compression mismatch was logged (once each)


def text_options(config: SourceConfig) -> TextOptions:
    return TextOptions(
        encoding=config.encoding,
        delimiter=config.delimiter,
        quote=config.quote,
        header=config.header,
        columns=tuple(config.columns),
        null_values=tuple(config.null_values),
    )


def describe_read_error(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        code = errno.errorcode.get(exc.errno or 0, "")
        text = exc.strerror or str(exc)
        return f"{code}: {text}" if code else text
    return f"not readable as its format: {exc}"


class FileSource:
    """Base of the file sources: `_discover` sends local files, READERS tasks read them.

    Subclasses set `config`, `dead`, `max_record_bytes`, `_units` and `_text_fields` in `__init__`
    and say how to find files (`_discover`, which also resends a previous run's unacknowledged ones)
    and what unit a file is (`_unit`, with the name whose extension gives the format). `_read_now`
    may hold a unit open (a file still growing) by returning False; the subclass sends it again later.
    """

    config: SourceConfig
    dead: DeadLetters
    max_record_bytes: int
    _units: Units
    _discovery: anyio.CancelScope | None = None  # made in run(): a scope needs a running loop
    _stopped = False
    _problems: dict[str, str]
    _failed: dict[Path, float]  # claimed files whose read failed → when (anyio clock)
    _text_fields: TextFields  # timestamp fields seen so far in this source's JSON lines (formats.read_file)
    # Files sent to the readers and not read yet (→ bytes): discovery counts them against the spool's
    # room, and waits for `_progress` while they fill it.
    _in_hand: dict[Path, int]
    _progress: anyio.Event | None = None

    async def _discover(self, files: MemoryObjectSendStream[Path], once: bool) -> None:
        raise NotImplementedError

    def _unit(self, path: Path) -> tuple[SourceUnit, Path]:
        raise NotImplementedError

    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    def _problem(self, where: Path | str, reason: str) -> None:
        """Input that could not be taken: logged once per reason, reported until it is solved."""
        key = printable(str(where))
        if self._problems.get(key) != reason:
            log.error("cannot read input; it is kept and tried again", path=key, reason=reason)
        self._problems[key] = reason

    def _solved(self, where: Path | str) -> None:
        if self._problems.pop(printable(str(where)), None) is not None:
            log.info("input readable again", path=str(where))

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None:
        self._units = units
        self._in_hand = {}
        files_send, files_recv = anyio.create_memory_object_stream[Path](BUNDLE_FILES)
        async with send, anyio.create_task_group() as tg:
            for _ in range(READERS):
                tg.start_soon(self._reader, files_recv.clone(), send.clone())
            files_recv.close()
            async with files_send:
                self._discovery = anyio.CancelScope()
                if self._stopped:
                    self._discovery.cancel()
                with self._discovery:
                    await self._discover(files_send, once)
                await self._finish_following(files_send)

    async def _finish_following(self, files: MemoryObjectSendStream[Path]) -> None:
        """After discovery ends: files already claimed and still growing are followed to their end."""

    def stop(self) -> None:
        """Take no new files; those already found are read to the end."""
        self._stopped = True
        if self._discovery is not None:
            self._discovery.cancel()

    def _read_now(
        self,
        path: Path,
        name: Path,
        unit: SourceUnit,
        emit: Callable[[Chunk], None],
        joint: Joint | None = None,
    ) -> bool:
        """Read the unit (blocking: runs in a thread); True when it is read to its end (False: the
        subclass sends it again)."""
        self._read_file(path, name, unit, emit, joint)
        return True

    def _read_file(
        self,
        path: Path,
        name: Path,
        unit: SourceUnit,
        emit: Callable[[Chunk], None],
        joint: Joint | None,
        settled: Callable[[], bool] = lambda: True,
    ) -> None:
        """`read_into` with this source's format, dead letters, record limit and timestamp fields."""
        fmt, limit, options = self.config.format, self.max_record_bytes, text_options(self.config)
        read_into(path, name, fmt, unit, emit, self.dead, limit, settled, joint, self._text_fields, options)

    def _size(self, path: Path) -> int:
        return os.stat(path).st_size

    async def _reader(
        self, files: MemoryObjectReceiveStream[Path], send: MemoryObjectSendStream[Item]
    ) -> None:
        async with files, send:
            async for path in files:
                bundle = [path]
                while len(bundle) < BUNDLE_FILES:
                    try:
                        bundle.append(files.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                try:
                    await self._take(bundle, send)
                finally:
                    for path in bundle:
                        self._in_hand.pop(path, None)
                    if self._progress is not None:
                        self._progress.set()

    def _describe(self, paths: list[Path]) -> list[tuple[Path, tuple[SourceUnit, Path, int] | OSError]]:
        out: list[tuple[Path, tuple[SourceUnit, Path, int] | OSError]] = []
        for path in paths:
            try:
                unit, name = self._unit(path)
                out.append((path, (unit, name, self._size(path))))
            except OSError as exc:
                out.append((path, exc))
        return out

    async def _take(self, paths: list[Path], send: MemoryObjectSendStream[Item]) -> None:
        """Open the units of these files (one journal commit), read the small ones together in one
        thread call and the others one by one, streaming their chunks."""
        described: list[tuple[Path, tuple[SourceUnit, Path, int]]] = []
        for path, outcome in await anyio.to_thread.run_sync(self._describe, paths):
            if isinstance(outcome, OSError):
                self._failed[path] = anyio.current_time()
                self._problem(path, describe_read_error(outcome))
            else:
                described.append((path, outcome))
        if not described:
            return
        opened = await self._units.open_units([unit for _, (unit, _, _) in described])
        small: list[tuple[Path, Path, SourceUnit]] = []
        large: list[tuple[Path, Path, SourceUnit]] = []
        held = 0
        for (path, (_, name, size)), unit in zip(described, opened, strict=True):
            if unit.fully_covered:  # every row is already spooled or uploaded
                await self._read_done(path, unit, True, send)
            elif size <= SMALL_FILE and held + size <= BUNDLE_BYTES:
                small.append((path, name, unit))
                held += size
            else:
                large.append((path, name, unit))
        if small:
            bundle: list[Chunk | UnitRead] = []
            for path, unit, chunks, result in await anyio.to_thread.run_sync(self._read_small, small):
                bundle += chunks
                if self._read_end(path, unit, result):
                    bundle.append(UnitRead(unit))
            await self._units.wait_for_room()
            await send.send(bundle)  # held already: one send for all, within BUNDLE_BYTES
        for path, name, unit in large:
            await self._read_done(path, unit, await self._read_streaming(path, name, unit, send), send)

    def _read_small(
        self, files: list[tuple[Path, Path, SourceUnit]]
    ) -> list[tuple[Path, SourceUnit, list[Chunk], bool | Exception]]:
        """Read small files in one go, their JSON lines parsed together (jsonlines.Joint)."""
        joint = Joint(limit=BUNDLE_BYTES, text_fields=self._text_fields)
        out: list[tuple[Path, SourceUnit, list[Chunk], bool | Exception]] = []
        for path, name, unit in files:
            chunks: list[Chunk] = []
            joint.owner = unit
            try:
                outcome: bool | Exception = self._read_now(path, name, unit, chunks.append, joint)
            except READ_ERRORS as exc:
                joint.drop(unit)
                outcome = exc
            out.append((path, unit, chunks, outcome))
        failed = joint.flush()
        for i, (path, unit, chunks, outcome) in enumerate(out):
            error = failed.get(unit)
            if error is not None and not isinstance(outcome, Exception):
                unit.read_again()  # the rows already emitted are skipped when it is read again
                out[i] = (path, unit, chunks, error)
        return out

    async def _read_streaming(
        self, path: Path, name: Path, unit: SourceUnit, send: MemoryObjectSendStream[Item]
    ) -> bool | Exception:
        def emit(chunk: Chunk) -> None:
            anyio.from_thread.run(self._units.wait_for_room)
            anyio.from_thread.run(send.send, chunk)

        try:
            return await anyio.to_thread.run_sync(self._read_now, path, name, unit, emit)
        except READ_ERRORS as exc:
            return exc

    async def _read_done(
        self, path: Path, unit: SourceUnit, outcome: bool | Exception, send: MemoryObjectSendStream[Item]
    ) -> None:
        if self._read_end(path, unit, outcome):
            await send.send(UnitRead(unit))

    def _read_end(self, path: Path, unit: SourceUnit, outcome: bool | Exception) -> bool:
        """Note how a read went; True when the unit is read to its end (a UnitRead follows)."""
        if isinstance(outcome, Exception):
            problem = file_read(unit).problem = describe_read_error(outcome)
            self._failed[path] = anyio.current_time()
            self._problem(path, problem)
            return False
        if not outcome:
            return False
        file_read(unit).problem = None
        self._failed.pop(path, None)
        self._solved(path)
        return True
