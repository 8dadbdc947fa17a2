"""What every source hands the pipeline: chunks of Arrow rows tied to a unit that is acknowledged later.

A *unit* is what a source can acknowledge as a whole (a claimed file, a stream offset range). The
pipeline acknowledges it only once every row read from it is inside an uploaded object, and once the
source has said it read the unit to its end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
from anyio.streams.memory import MemoryObjectSendStream


@dataclass(eq=False)
class SourceUnit:
    """One acknowledgeable piece of input; `name` appears in logs and dead letters."""

    name: str
    ack: Callable[[], Awaitable[None]]
    records: int = 0
    pending_batches: int = 0  # open or in-flight batches holding rows of this unit
    read_done: bool = False
    failed: bool = False  # a batch holding its rows could not be uploaded: never ack
    acked: bool = False

    @property
    def ackable(self) -> bool:
        return self.read_done and self.pending_batches == 0 and not self.failed and not self.acked


@dataclass(eq=False)
class Chunk:
    """Rows read from one unit. `first_line` numbers the first row (1-based) for dead letters."""

    table: pa.Table
    unit: SourceUnit
    first_line: int = 1
    lines: list[int] | None = None  # explicit line per row when rows are not consecutive

    def line_of(self, row: int) -> int:
        return self.lines[row] if self.lines is not None else self.first_line + row

    def slice(self, offset: int, length: int | None = None) -> Chunk:
        table = self.table.slice(offset, length)
        if self.lines is not None:
            end = len(self.lines) if length is None else offset + length
            return Chunk(table, self.unit, lines=self.lines[offset:end])
        return Chunk(table, self.unit, first_line=self.first_line + offset)


@dataclass(eq=False)
class UnitRead:
    """Sent after the last chunk of a unit: nothing more will come from it."""

    unit: SourceUnit


Item = Chunk | UnitRead


class Source(Protocol):
    """A source runs until its input is exhausted (`once`) or it is cancelled (daemon)."""

    name: str

    async def run(self, send: MemoryObjectSendStream[Item], once: bool) -> None: ...

    def stop(self) -> None:
        """Take nothing new; finish the units already taken (so none is left half-read), then return."""
        ...

    def pending(self) -> list[str]:
        """Where unacknowledged input is kept, for the end-of-run report."""
        ...
