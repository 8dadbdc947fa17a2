from __future__ import annotations

import anyio
import pyarrow as pa
import pytest

from ingest.config import BatchConfig
from ingest.pipeline.batch import Batch, Batcher
from ingest.sources.base import Chunk, Item, SourceUnit, UnitRead


async def _noop() -> None:
    return None


def _unit(name: str) -> SourceUnit:
    return SourceUnit(name, _noop)


def _chunk(unit: SourceUnit, start: int, n: int) -> Chunk:
    return Chunk(pa.table({"id": pa.array(range(start, start + n), pa.int64())}), unit, first_line=1)


async def _run(config: BatchConfig, items: list[Item | float]) -> tuple[list[Batch], list[SourceUnit]]:
    read: list[SourceUnit] = []

    async def on_read(unit: SourceUnit) -> None:
        read.append(unit)

    batcher = Batcher(config, on_read)
    send, recv = anyio.create_memory_object_stream[Item](10)
    bsend, brecv = anyio.create_memory_object_stream[Batch](10)
    out: list[Batch] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run, recv, bsend)
        async with send:
            for item in items:
                if isinstance(item, float):
                    await anyio.sleep(item)
                else:
                    await send.send(item)
        async with brecv:
            out = [b async for b in brecv]
    return out, read


@pytest.mark.anyio
async def test_max_records_splits_chunks_and_batches_span_files() -> None:
    a, b = _unit("a"), _unit("b")
    batches, read = await _run(
        BatchConfig(max_records=250), [_chunk(a, 0, 200), UnitRead(a), _chunk(b, 200, 200), UnitRead(b)]
    )
    assert [x.records for x in batches] == [250, 150]
    assert [[u.name for u in x.units] for x in batches] == [["a", "b"], ["b"]]
    ids = [i for x in batches for c in x.chunks for i in c.table.column("id").to_pylist()]
    assert ids == list(range(400))
    assert batches[1].chunks[0].first_line == 51  # line numbers follow a split chunk
    assert (a.pending_batches, b.pending_batches) == (1, 2)
    assert read == [a, b] and a.read_done and b.read_done


@pytest.mark.anyio
async def test_max_bytes_closes_a_batch() -> None:
    u = _unit("u")
    batches, _ = await _run(BatchConfig(max_bytes=8 * 100), [_chunk(u, 0, 250)])
    assert [x.records for x in batches] == [100, 100, 50]


@pytest.mark.anyio
async def test_max_age_closes_a_batch_without_more_input() -> None:
    u = _unit("u")
    batches, _ = await _run(BatchConfig(max_age=0.2), [_chunk(u, 0, 5), 0.5, _chunk(u, 5, 5)])
    assert [x.records for x in batches] == [5, 5]
