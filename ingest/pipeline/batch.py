"""Batcher: gathers chunks (possibly from many files) until max_records, max_bytes or max_age.

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

    def add(self, chunk: Chunk) -> None:
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
        self.nbytes += chunk.table.nbytes


class Batcher:
    def __init__(self, config: BatchConfig, on_unit_read: Callable[[SourceUnit], Awaitable[None]]) -> None:
        self.config = config
        self.on_unit_read = on_unit_read
        self.current: Batch | None = None

    async def run(
        self, items: MemoryObjectReceiveStream[Item], batches: MemoryObjectSendStream[Batch]
    ) -> None:
        async with items, batches:
            while True:
                timeout = math.inf
                if self.current is not None:
                    timeout = self.current.opened + self.config.max_age - anyio.current_time()
                item: Item | None = None
                with anyio.move_on_after(max(0.0, timeout)):
                    try:
                        item = await items.receive()
                    except anyio.EndOfStream:
                        break
                if item is None:  # max_age reached
                    await self._flush(batches)
                elif isinstance(item, UnitRead):
                    item.unit.read_done = True
                    await self.on_unit_read(item.unit)
                else:
                    metrics.RECORDS_READ.labels(item.unit.origin).inc(item.table.num_rows)
                    for full in self._add(item):
                        await batches.send(full)
            await self._flush(batches)

    def _add(self, chunk: Chunk) -> list[Batch]:
        """Add rows, splitting the chunk where a batch reaches max_records or max_bytes."""
        full: list[Batch] = []
        while chunk.table.num_rows:
            if self.current is None:
                self.current = Batch(opened=anyio.current_time())
            batch = self.current
            room = self.config.max_records - batch.records
            row_bytes = max(1, chunk.table.nbytes // chunk.table.num_rows)
            room = min(room, max(1, (self.config.max_bytes - batch.nbytes) // row_bytes))
            part = chunk if chunk.table.num_rows <= room else chunk.slice(0, room)
            batch.add(part)
            chunk = chunk.slice(part.table.num_rows) if part is not chunk else chunk.slice(0, 0)
            if batch.records >= self.config.max_records or batch.nbytes >= self.config.max_bytes:
                full.append(self._close())
        return full

    def _close(self) -> Batch:
        batch, self.current = self.current, None
        assert batch is not None
        batch.closed_at = datetime.now(UTC)
        return batch

    async def _flush(self, batches: MemoryObjectSendStream[Batch]) -> None:
        if self.current is not None and self.current.records:
            await batches.send(self._close())
        self.current = None
