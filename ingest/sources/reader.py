"""Sources whose units are local files (directory, landing): discovery finds files, readers parse them.

Parsing runs in a worker thread (pyarrow's C++ readers); each chunk waits for spool room before it is
sent, so a full spool pauses reading instead of growing memory.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
import pyarrow as pa
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.config import SourceConfig
from ingest.deadletters import DeadLetter, DeadLetters
from ingest.sources.base import Item, SourceUnit, UnitRead, Units
from ingest.sources.formats import detect, read_file

READERS = 2  # files parsed at once; pyarrow also uses threads inside each
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")  # files still being written


async def read_unit(
    path: Path,
    name: Path,
    configured_format: str,
    unit: SourceUnit,
    units: Units,
    send: MemoryObjectSendStream[Item],
    dead: DeadLetters,
    max_record_bytes: int,
) -> None:
    """Read `path` (whose format `name` tells) into `send`; unreadable input goes to dead letters."""
    detected = detect(name, configured_format)
    assert detected is not None
    fmt, compression = detected

    def emit(table: pa.Table, first_line: int, lines: list[int] | None) -> None:
        for chunk in unit.chunks(table, first_line, lines):
            anyio.from_thread.run(units.wait_for_room)
            anyio.from_thread.run(send.send, chunk)

    def work() -> None:
        try:
            read_file(path, fmt, compression, unit.name, emit, dead.write, max_record_bytes)
        except (OSError, pa.ArrowException) as exc:
            dead.write([DeadLetter(unit.name, None, f"could not read file: {exc}")])

    await anyio.to_thread.run_sync(work)


class FileSource:
    """Base of the file sources: `_discover` sends complete local files, READERS tasks read them.

    Subclasses set `config`, `dead`, `max_record_bytes` and `_units` in `__init__` and say how to find
    files (`_discover`, which also resends a previous run's unacknowledged ones) and what unit a file is
    (`_unit`, with the name whose extension gives the format).
    """

    config: SourceConfig
    dead: DeadLetters
    max_record_bytes: int
    _units: Units
    _discovery: anyio.CancelScope | None = None  # made in run(): a scope needs a running loop
    _stopped = False

    async def _discover(self, files: MemoryObjectSendStream[Path], once: bool) -> None:
        raise NotImplementedError

    def _unit(self, path: Path) -> tuple[SourceUnit, Path]:
        raise NotImplementedError

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

    def stop(self) -> None:
        """Take no new files; those already found are read to the end."""
        self._stopped = True
        if self._discovery is not None:
            self._discovery.cancel()

    async def _reader(
        self, files: MemoryObjectReceiveStream[Path], send: MemoryObjectSendStream[Item]
    ) -> None:
        async with files, send:
            async for path in files:
                described, name = self._unit(path)
                unit = self._units.open_unit(described)
                if not unit.fully_covered:  # else: every row is already spooled or uploaded
                    await read_unit(
                        path,
                        name,
                        self.config.format,
                        unit,
                        self._units,
                        send,
                        self.dead,
                        self.max_record_bytes,
                    )
                await send.send(UnitRead(unit))
