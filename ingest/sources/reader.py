"""Sources whose units are local files (directory, landing): discovery finds files, readers parse them.

Parsing runs in a worker thread (pyarrow's C++ readers); each chunk waits for spool room before it is
sent, so a full spool pauses reading instead of growing memory.

A file that cannot be read (permissions, vanished, an I/O error midway, not the format its name says)
is never acknowledged: it keeps its claim, is reported once through `problems()` and is read again
later, continuing after the rows already taken.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
import pyarrow as pa
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.config import SourceConfig
from ingest.deadletters import DeadLetters
from ingest.logs import get_logger
from ingest.sources.base import Item, SourceUnit, UnitRead, Units
from ingest.sources.formats import detect, raw_lines, read_file, resumable

log = get_logger("ingest.sources.reader")
READERS = 2  # files parsed at once; pyarrow also uses threads inside each
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")  # files still being written
READ_ERRORS = (OSError, pa.ArrowException)


async def read_unit(
    path: Path,
    name: Path,
    configured_format: str,
    unit: SourceUnit,
    units: Units,
    send: MemoryObjectSendStream[Item],
    dead: DeadLetters,
    max_record_bytes: int,
    settled: Callable[[], bool] = lambda: True,
) -> None:
    """Read `path` (whose format `name` tells) into `send`, from where `unit` stopped.

    Raises what reading raised (OSError, ArrowException); the unit is then set to be read again
    from its top, skipping the rows already sent.
    """
    detected = detect(name, configured_format)
    assert detected is not None
    fmt, compression = detected

    def emit(table: pa.Table, first_line: int, lines: list[int] | None) -> None:
        for chunk in unit.chunks(table, first_line, lines):
            anyio.from_thread.run(units.wait_for_room)
            anyio.from_thread.run(send.send, chunk)

    if fmt != "parquet":
        unit.raw_lines = partial(raw_lines, path, compression)

    def work() -> None:
        if not resumable(fmt, compression):
            unit.read_again()
        try:
            unit.position = read_file(
                path,
                fmt,
                compression,
                unit.name,
                emit,
                partial(dead.write, origin=unit.origin),
                max_record_bytes,
                unit.position,
                settled,
            )
        except BaseException:
            unit.read_again()
            raise

    await anyio.to_thread.run_sync(work)


def describe_read_error(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        code = errno.errorcode.get(exc.errno or 0, "")
        text = exc.strerror or str(exc)
        return f"{code}: {text}" if code else text
    return f"not readable as its format: {exc}"


class FileSource:
    """Base of the file sources: `_discover` sends local files, READERS tasks read them.

    Subclasses set `config`, `dead`, `max_record_bytes` and `_units` in `__init__` and say how to find
    files (`_discover`, which also resends a previous run's unacknowledged ones) and what unit a file is
    (`_unit`, with the name whose extension gives the format). `_read` may hold a unit open (a file
    still growing) by returning False; the subclass then sends the file again later.
    """

    config: SourceConfig
    dead: DeadLetters
    max_record_bytes: int
    _units: Units
    _discovery: anyio.CancelScope | None = None  # made in run(): a scope needs a running loop
    _stopped = False
    _problems: dict[str, str]
    _failed: dict[Path, float]  # claimed files whose read failed → when (anyio clock)

    async def _discover(self, files: MemoryObjectSendStream[Path], once: bool) -> None:
        raise NotImplementedError

    def _unit(self, path: Path) -> tuple[SourceUnit, Path]:
        raise NotImplementedError

    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    def _problem(self, where: Path | str, reason: str) -> None:
        """Input that could not be taken: logged once per reason, reported until it is solved."""
        key = str(where)
        if self._problems.get(key) != reason:
            log.error("cannot read input; it is kept and tried again", path=key, reason=reason)
        self._problems[key] = reason

    def _solved(self, where: Path | str) -> None:
        if self._problems.pop(str(where), None) is not None:
            log.info("input readable again", path=str(where))

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None:
        self._units = units
        files_send, files_recv = anyio.create_memory_object_stream[Path](READERS)
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

    async def _read(
        self, path: Path, name: Path, unit: SourceUnit, send: MemoryObjectSendStream[Item]
    ) -> bool:
        """Read the unit; True when it is read to its end (False: the subclass sends it again)."""
        await read_unit(
            path, name, self.config.format, unit, self._units, send, self.dead, self.max_record_bytes
        )
        return True

    async def _reader(
        self, files: MemoryObjectReceiveStream[Path], send: MemoryObjectSendStream[Item]
    ) -> None:
        async with files, send:
            async for path in files:
                try:
                    described, name = await anyio.to_thread.run_sync(self._unit, path)
                except OSError as exc:
                    self._failed[path] = anyio.current_time()
                    self._problem(path, describe_read_error(exc))
                    continue
                unit = await self._units.open_unit(described)
                if not unit.fully_covered:  # else: every row is already spooled or uploaded
                    try:
                        done = await self._read(path, name, unit, send)
                    except READ_ERRORS as exc:
                        unit.read_error = describe_read_error(exc)
                        self._failed[path] = anyio.current_time()
                        self._problem(path, unit.read_error)
                        continue
                    if not done:
                        continue
                unit.read_error = None
                self._failed.pop(path, None)
                self._solved(path)
                await send.send(UnitRead(unit))
