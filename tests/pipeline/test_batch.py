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


def _table_unit(name: str, table: str) -> SourceUnit:
    return SourceUnit(name, _noop, table=table)


def test_batches_never_mix_tables_and_each_closes_on_its_own() -> None:
    a, b = _table_unit("a", "clicks"), _table_unit("b", "orders")
    items: list[Item | float] = [_chunk(a, 0, 3), _chunk(b, 0, 2), _chunk(a, 3, 3), UnitRead(a), UnitRead(b)]
    batches, _ = anyio.run(_run, BatchConfig(max_records=5, max_age=60.0), items)
    assert (batches[0].table, batches[0].records) == ("clicks", 5)  # full: sent at once
    assert sorted((x.table, x.records) for x in batches) == [("clicks", 1), ("clicks", 5), ("orders", 2)]
    for batch in batches:
        assert {c.unit.table for c in batch.chunks} == {batch.table}


def test_tables_share_the_memory_bound() -> None:
    """max_bytes holds for all open batches together: the biggest is sent first."""
    units = [_table_unit(f"u{n}", f"t{n}") for n in range(4)]
    items: list[Item | float] = [_chunk(u, 0, 100) for u in units]  # 800 bytes each
    batches, _ = anyio.run(_run, BatchConfig(max_bytes=2000, max_age=60.0), items)
    assert [x.records for x in batches][:2] == [100, 100]  # sent before the end of input
    assert sorted(x.table for x in batches) == ["t0", "t1", "t2", "t3"]


def test_max_age_closes_only_the_old_table_batch() -> None:
    a, b = _table_unit("a", "clicks"), _table_unit("b", "orders")
    items: list[Item | float] = [_chunk(a, 0, 1), 0.15, _chunk(b, 0, 1), 0.1, _chunk(a, 1, 1)]
    batches, _ = anyio.run(_run, BatchConfig(max_age=0.2), items)
    assert (batches[0].table, batches[0].records) == ("clicks", 1)  # by age, while orders stayed open
    assert sorted((x.table, x.records) for x in batches) == [("clicks", 1), ("clicks", 1), ("orders", 1)]
