"""Reading one local file into chunks of a unit (shared by the directory and landing sources).

Parsing runs in a worker thread (pyarrow's C++ readers); each chunk waits for spool room before it is
sent, so a full spool pauses reading instead of growing memory.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
import pyarrow as pa
from anyio.streams.memory import MemoryObjectSendStream

from ingest.deadletters import DeadLetter, DeadLetters
from ingest.sources.base import Item, SourceUnit, Units
from ingest.sources.formats import detect, read_file


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
