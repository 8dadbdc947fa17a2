"""Batcher: gathers chunks (possibly from many files) until max_records, max_bytes or max_age.

One batch is open per table: a batch never mixes tables (each has its own schema and keys).

At the end of the input (`--once`, a drain), a big last batch goes as two halves: the pipeline has two
encoders, and one batch would leave one of them, and a core, idle while the run waits for it (measured
on the big-file bench: 0.35 s of encoding, then the upload, on one core at the end of a 5 s run).

A unit counts one pending batch for every batch that holds some of its rows, from the moment its first
chunk joins that batch; the pipeline decrements it when the batch is in R2.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest import metrics
from ingest.config import BatchConfig
from ingest.layout import DEFAULT_TABLE
from ingest.sources.base import Chunk, Item, SourceUnit, UnitRead

# Bytes a chunk costs besides its rows' Arrow bytes, counted against batch.max_bytes: its pyarrow
# slice (table, arrays, their children: 4.6 KB on nine columns with a list and a struct, measured) and
# its Python objects (chunk, unit, handle, paths). A file of 10 records is 2.6 KB of Arrow bytes: not
# counting this, a batch of tiny files held 3-5x max_bytes (1.6 GiB RSS for 100,000 of them).
CHUNK_COST = 8 * 1024
HOLD = 0.05  # seconds a full batch waits for more rows before it goes (see `Batcher.held`)
HALVE_FROM = 16 * 2**20  # bytes: a smaller last batch goes whole (both halves must be worth a thread)


@dataclass(eq=False)
class Batch:
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    chunks: list[Chunk] = field(default_factory=list)
    units: list[SourceUnit] = field(default_factory=list)
    spans: dict[SourceUnit, list[tuple[int, int]]] = field(default_factory=dict)  # unit row ranges
    records: int = 0
    nbytes: int = 0
    opened: float = 0.0  # anyio clock
    closed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    pending_objects: int = 0
    failed: bool = False
    table: str = DEFAULT_TABLE

    def add(self, chunk: Chunk, nbytes: int) -> None:
        unit = chunk.unit
        ranges = self.spans.get(unit)
        if ranges is None:
            self.units.append(unit)
            unit.pending_batches += 1
            ranges = self.spans[unit] = []
        start, stop = chunk.row0, chunk.row0 + chunk.table.num_rows
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], stop)
        else:
            ranges.append((start, stop))
        self.chunks.append(chunk)
        self.records += chunk.table.num_rows
        self.nbytes += nbytes


class Batcher:
    def __init__(
        self,
        config: BatchConfig,
        on_unit_read: Callable[[SourceUnit], Awaitable[None]],
        halve_from: int = HALVE_FROM,
    ) -> None:
        self.config = config
        self.on_unit_read = on_unit_read
        self.halve_from = halve_from
        self.open: dict[str, Batch] = {}  # table → its open batch
        # A full batch with nothing else open waits HOLD seconds for more rows: if the input ends
        # meanwhile, it is the last batch, and it may go as two halves (`_finish`).
        self.held: Batch | None = None
        self.held_until = math.inf

    async def run(
        self, items: MemoryObjectReceiveStream[Item], batches: MemoryObjectSendStream[Batch]
    ) -> None:
        async with items, batches:
            while True:
                timeout = self.held_until
                if self.open:
                    oldest = min(b.opened for b in self.open.values())
                    timeout = min(timeout, oldest + self.config.max_age)
                item: Item | None = None
                with anyio.move_on_after(max(0.0, timeout - anyio.current_time())):
                    try:
                        item = await items.receive()
                    except anyio.EndOfStream:
                        break
                if item is None:  # the held batch's wait or an open batch's max_age is over
                    if anyio.current_time() >= self.held_until:
                        await self._release(batches)
                    await self._flush(batches, anyio.current_time() - self.config.max_age + 1e-3)
                elif isinstance(item, list):
                    for one in item:
                        await self._take(one, batches)
                else:
                    await self._take(item, batches)
            await self._finish(batches)

    async def _take(self, item: Chunk | UnitRead, batches: MemoryObjectSendStream[Batch]) -> None:
        if isinstance(item, UnitRead):
            item.unit.read_done = True
            await self.on_unit_read(item.unit)
            return
        metrics.RECORDS_READ.labels(item.unit.origin).inc(item.table.num_rows)
        await self._release(batches)  # more rows: the held batch was not the last
        full = self._add(item)
        hold = bool(full) and not self.open  # nothing else open: this may be the last batch
        for batch in full[:-1] if hold else full:
            await batches.send(batch)
        if hold:
            self.held, self.held_until = full[-1], anyio.current_time() + HOLD

    async def _release(self, batches: MemoryObjectSendStream[Batch]) -> None:
        held, self.held, self.held_until = self.held, None, math.inf
        if held is not None:
            await batches.send(held)

    async def _finish(self, batches: MemoryObjectSendStream[Batch]) -> None:
        """The end of the input: what is left goes; a last batch alone, of at least half the limits
        and `halve_from` bytes, as two halves (each still a quarter of a full batch at least)."""
        left = [self.held] if self.held is not None else []
        self.held, self.held_until = None, math.inf
        left += [b for b in map(self._close, list(self.open)) if b.records]
        if len(left) == 1 and self._worth_halving(left[0]):
            left = _halves(left[0])
        for batch in left:
            await batches.send(batch)

    def _worth_halving(self, batch: Batch) -> bool:
        half_full = batch.records * 2 >= self.config.max_records or batch.nbytes * 2 >= self.config.max_bytes
        return half_full and batch.nbytes >= self.halve_from and batch.records >= 2

    def _add(self, chunk: Chunk) -> list[Batch]:
        """Add rows, splitting the chunk where a batch reaches max_records or max_bytes."""
        full: list[Batch] = []
        table = chunk.unit.table
        # Once per chunk (it walks every buffer of every column), unless measured where it was made
        # (Chunk.nbytes); its slices count pro rata.
        size = chunk.nbytes if chunk.nbytes >= 0 else chunk.table.nbytes
        row_bytes = max(1, size // max(1, chunk.table.num_rows))
        while chunk.table.num_rows:
            batch = self.open.get(table)
            if batch is None:
                batch = self.open[table] = Batch(opened=anyio.current_time(), table=table)
            room = self.config.max_records - batch.records
            room = min(room, max(1, (self.config.max_bytes - batch.nbytes - CHUNK_COST) // row_bytes))
            part = chunk if chunk.table.num_rows <= room else chunk.slice(0, room)
            batch.add(part, row_bytes * part.table.num_rows + CHUNK_COST)
            chunk = chunk.slice(part.table.num_rows) if part is not chunk else chunk.slice(0, 0)
            if batch.records >= self.config.max_records or batch.nbytes >= self.config.max_bytes:
                full.append(self._close(table))
        # Memory is bounded by batch.max_bytes for all tables together: the biggest batch goes first.
        while len(self.open) > 1 and sum(b.nbytes for b in self.open.values()) >= self.config.max_bytes:
            full.append(self._close(max(self.open, key=lambda t: self.open[t].nbytes)))
        return full

    def _close(self, table: str) -> Batch:
        batch = self.open.pop(table)
        batch.closed_at = datetime.now(UTC)
        return batch

    async def _flush(self, batches: MemoryObjectSendStream[Batch], opened_by: float) -> None:
        """Send every open batch opened at or before `opened_by`."""
        for table in [t for t, b in self.open.items() if b.opened <= opened_by]:
            batch = self._close(table)
            if batch.records:
                await batches.send(batch)


def _halves(batch: Batch) -> list[Batch]:
    """The batch's rows in two batches, in order, in place of it (its units count the two instead)."""
    halves = [Batch(opened=batch.opened, closed_at=batch.closed_at, table=batch.table) for _ in range(2)]
    row_bytes = batch.nbytes / batch.records
    room = batch.records // 2
    for chunk in batch.chunks:
        rows = chunk.table.num_rows
        first = min(rows, room)
        room -= first
        for part, half in ((chunk.slice(0, first), halves[0]), (chunk.slice(first), halves[1])):
            if part.table.num_rows:
                half.add(part, round(row_bytes * part.table.num_rows))
    for unit in batch.units:
        unit.pending_batches -= 1
    return halves
