"""Batcher: gathers chunks (possibly from many files) until max_records, max_bytes or max_age.

One batch is open per table: a batch never mixes tables (each has its own schema and keys).

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
    def __init__(self, config: BatchConfig, on_unit_read: Callable[[SourceUnit], Awaitable[None]]) -> None:
        self.config = config
        self.on_unit_read = on_unit_read
        self.open: dict[str, Batch] = {}  # table → its open batch

    async def run(
        self, items: MemoryObjectReceiveStream[Item], batches: MemoryObjectSendStream[Batch]
    ) -> None:
        async with items, batches:
            while True:
                timeout = math.inf
                if self.open:
                    oldest = min(b.opened for b in self.open.values())
                    timeout = oldest + self.config.max_age - anyio.current_time()
                item: Item | None = None
                with anyio.move_on_after(max(0.0, timeout)):
                    try:
                        item = await items.receive()
                    except anyio.EndOfStream:
                        break
                if item is None:  # max_age reached
                    await self._flush(batches, anyio.current_time() - self.config.max_age + 1e-3)
                elif isinstance(item, list):
                    for one in item:
                        await self._take(one, batches)
                else:
                    await self._take(item, batches)
            await self._flush(batches)

    async def _take(self, item: Chunk | UnitRead, batches: MemoryObjectSendStream[Batch]) -> None:
        if isinstance(item, UnitRead):
            item.unit.read_done = True
            await self.on_unit_read(item.unit)
        else:
            metrics.RECORDS_READ.labels(item.unit.origin).inc(item.table.num_rows)
            for full in self._add(item):
                await batches.send(full)

    def _add(self, chunk: Chunk) -> list[Batch]:
        """Add rows, splitting the chunk where a batch reaches max_records or max_bytes."""
        full: list[Batch] = []
        table = chunk.unit.table
        # Once per chunk (it walks every buffer of every column); its slices count pro rata.
        row_bytes = max(1, chunk.table.nbytes // max(1, chunk.table.num_rows))
        while chunk.table.num_rows:
            batch = self.open.get(table)
            if batch is None:
                batch = self.open[table] = Batch(opened=anyio.current_time(), table=table)
            room = self.config.max_records - batch.records
            room = min(room, max(1, (self.config.max_bytes - batch.nbytes) // row_bytes))
            part = chunk if chunk.table.num_rows <= room else chunk.slice(0, room)
            batch.add(part, row_bytes * part.table.num_rows)
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

    async def _flush(self, batches: MemoryObjectSendStream[Batch], opened_by: float = math.inf) -> None:
        """Send every open batch opened at or before `opened_by` (all of them by default)."""
        for table in [t for t, b in self.open.items() if b.opened <= opened_by]:
            batch = self._close(table)
            if batch.records:
                await batches.send(batch)
