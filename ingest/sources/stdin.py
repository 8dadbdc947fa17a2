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
from functools import partial
from typing import BinaryIO

import anyio
import anyio.from_thread
import anyio.to_thread
import pyarrow as pa
from anyio.streams.memory import MemoryObjectSendStream

from ingest.config import SourceConfig
from ingest.durable.deadletters import DeadLetters
from ingest.messages import one_line
from ingest.parsing.formats import read_stream
from ingest.sources.base import UNREPEATABLE, Item, SourceUnit, UnitHandle, UnitRead, Units

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
                handle=UnitHandle(_done),
                id=f"{UNREPEATABLE}stdin:{uuid.uuid4().hex}",
                fingerprint=NAME,
                origin=NAME,
                table=self.config.default_table,
            )
            unit = await units.open_unit(unit)

            def emit(table: pa.Table, first_line: int, lines: list[int] | None, nbytes: int = -1, /) -> None:
                for chunk in unit.chunks(table, first_line, lines, nbytes):
                    anyio.from_thread.run(units.wait_for_room)
                    anyio.from_thread.run(send.send, chunk)

            def read() -> None:
                fmt = self.config.format or "jsonl"
                dead = lambda letters: self.dead.write(letters, NAME)  # noqa: E731
                streamed = partial(self.dead.write_stream, origin=NAME)
                read_stream(self.stream, fmt, NAME, emit, dead, self.max_record_bytes, dead_stream=streamed)

            try:
                await anyio.to_thread.run_sync(read)
            except (OSError, pa.ArrowException, ValueError) as exc:  # (UnicodeError is a ValueError)
                # What was read is uploaded; the rest cannot be kept (a pipe is read once): it is
                # read to its end and counted, so the run can say how much was not ingested.
                rest = await anyio.to_thread.run_sync(_lines_left, self.stream)
                self._read_error = (
                    f"could not be read to its end ({one_line(str(exc))}): the {unit.next_row} rows "
                    f"before the failure are ingested; the rest ({rest} more lines) is not, and a pipe "
                    "cannot be kept: fix the input and send those rows again"
                )
            await send.send(UnitRead(unit))

    def stop(self) -> None:
        """Standard input is read to its end (or until the second signal): nothing to stop early."""

    def pending(self) -> list[str]:
        return []

    def problems(self) -> dict[str, str]:
        return {}

    def lost(self) -> dict[str, str]:
        """Input that was not ingested and cannot be taken again (what is past a read failure)."""
        return {"standard input": self._read_error} if self._read_error else {}


def _lines_left(stream: BinaryIO) -> int:
    lines = 0
    try:
        while piece := stream.read(1 << 20):
            lines += piece.count(b"\n")
    except OSError:
        pass
    return lines
