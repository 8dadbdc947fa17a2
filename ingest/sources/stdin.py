"""Standard input: `cat events.jsonl | ingest run --once --source stdin`, read to EOF (JSON lines or CSV).

A pipe cannot be read twice, so the input is one unit that is never read again (its id starts with
`UNREPEATABLE`). What a run that is killed keeps: rows already in R2, and rows in spooled objects
(the next run on the same spool uploads them). Rows that were still in memory are gone, and the
sender cannot tell which: send the input again only through a source that can tell (a file in a
watched directory, or the HTTP source with an Idempotency-Key).
"""

from __future__ import annotations

import sys
import uuid
from typing import BinaryIO

import anyio
import anyio.from_thread
import anyio.to_thread
import pyarrow as pa
from anyio.streams.memory import MemoryObjectSendStream

from ingest.config import SourceConfig
from ingest.deadletters import DeadLetters
from ingest.sources.base import UNREPEATABLE, Item, SourceUnit, UnitRead, Units
from ingest.sources.formats import read_stream

NAME = "stdin"


async def _done() -> bool:
    return True


class StdinSource:
    def __init__(
        self, config: SourceConfig, dead: DeadLetters, max_record_bytes: int, stream: BinaryIO | None = None
    ) -> None:
        self.config = config
        self.name = NAME
        self.dead = dead
        self.max_record_bytes = max_record_bytes
        self.stream = stream if stream is not None else sys.stdin.buffer
        self._read_error: str | None = None

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None:
        async with send:
            unit = SourceUnit(
                name=NAME,
                ack=_done,
                id=f"{UNREPEATABLE}stdin:{uuid.uuid4().hex}",
                fingerprint=NAME,
                origin=NAME,
                table=self.config.default_table,
            )
            unit = await units.open_unit(unit)

            def emit(table: pa.Table, first_line: int, lines: list[int] | None) -> None:
                for chunk in unit.chunks(table, first_line, lines):
                    anyio.from_thread.run(units.wait_for_room)
                    anyio.from_thread.run(send.send, chunk)

            def read() -> None:
                fmt = self.config.format or "jsonl"
                dead = lambda letters: self.dead.write(letters, NAME)  # noqa: E731
                read_stream(self.stream, fmt, NAME, emit, dead, self.max_record_bytes)

            try:
                await anyio.to_thread.run_sync(read)
            except (OSError, pa.ArrowException) as exc:
                # What was read is kept and uploaded; the rest of the input never arrived.
                unit.read_error = self._read_error = f"standard input could not be read to its end: {exc}"
            await send.send(UnitRead(unit))

    def stop(self) -> None:
        """Standard input is read to its end (or until the second signal): nothing to stop early."""

    def pending(self) -> list[str]:
        return []

    def problems(self) -> dict[str, str]:
        return {NAME: self._read_error} if self._read_error else {}
