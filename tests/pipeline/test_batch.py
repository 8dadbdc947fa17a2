from __future__ import annotations

import anyio
import pyarrow as pa
import pytest

from ingest.config import BatchConfig
from ingest.pipeline.batch import CHUNK_COST, HALVE_FROM, HOLD, Batch, Batcher
from ingest.sources.base import Chunk, Item, SourceUnit, UnitHandle, UnitRead


async def _noop() -> None:
    return None


def _unit(name: str) -> SourceUnit:
    return SourceUnit(name, UnitHandle(_noop))


def _chunk(unit: SourceUnit, start: int, n: int) -> Chunk:
    return Chunk(pa.table({"id": pa.array(range(start, start + n), pa.int64())}), unit, first_line=1)


async def _run(
    config: BatchConfig, items: list[Item | float], halve_from: int = HALVE_FROM
) -> tuple[list[Batch], list[SourceUnit]]:
    read: list[SourceUnit] = []

    async def on_read(unit: SourceUnit) -> None:
        read.append(unit)

    batcher = Batcher(config, on_read, halve_from)
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
    batches, _ = await _run(BatchConfig(max_bytes=8 * 100 + CHUNK_COST), [_chunk(u, 0, 250)])
    assert [x.records for x in batches] == [100, 100, 50]


@pytest.mark.anyio
async def test_a_chunk_measured_where_it_was_made_counts_that_size_and_its_slices_their_share() -> None:
    """Small files parsed together are slices of one table, measured once (Chunk.nbytes): the batcher
    takes that size, not its own measure of each slice, and splits by it."""
    u = _unit("u")
    chunk = _chunk(u, 0, 250)
    chunk.nbytes = 250 * 100  # said to weigh 100 bytes a row (its own measure: 8)
    batches, _ = await _run(BatchConfig(max_bytes=100 * 100 + CHUNK_COST), [chunk])
    assert [x.records for x in batches] == [100, 100, 50]
    assert [x.nbytes for x in batches] == [100 * 100 + CHUNK_COST] * 2 + [50 * 100 + CHUNK_COST]
    assert [c.nbytes for x in batches for c in x.chunks] == [10_000, 10_000, 5_000]
    assert [i for x in batches for i in _ids(x)] == list(range(250))


@pytest.mark.anyio
async def test_a_chunk_counts_what_it_costs_besides_its_rows() -> None:
    """Tiny files: each chunk's slice and objects weigh more than its rows' Arrow bytes, and count
    against max_bytes, so a batch of them is bounded by the memory it really holds."""
    units = [_unit(f"f{n}") for n in range(100)]
    items: list[Item | float] = [_chunk(u, n * 10, 10) for n, u in enumerate(units)]  # 80 bytes of rows each
    batches, _ = await _run(BatchConfig(max_bytes=10 * (80 + CHUNK_COST)), items)
    assert [len(x.chunks) for x in batches] == [10] * 10  # 8,000 bytes of rows would have been one batch
    assert [i for x in batches for i in _ids(x)] == list(range(1000))


@pytest.mark.anyio
async def test_max_age_closes_a_batch_without_more_input() -> None:
    u = _unit("u")
    batches, _ = await _run(BatchConfig(max_age=0.2), [_chunk(u, 0, 5), 0.5, _chunk(u, 5, 5)])
    assert [x.records for x in batches] == [5, 5]


def _table_unit(name: str, table: str) -> SourceUnit:
    return SourceUnit(name, UnitHandle(_noop), table=table)


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
    items: list[Item | float] = [_chunk(u, 0, 100) for u in units]  # 800 bytes of rows each
    each = 800 + CHUNK_COST
    batches, _ = anyio.run(_run, BatchConfig(max_bytes=2 * each + each // 2, max_age=60.0), items)
    assert [x.records for x in batches][:2] == [100, 100]  # sent before the end of input
    assert sorted(x.table for x in batches) == ["t0", "t1", "t2", "t3"]


def test_max_age_closes_only_the_old_table_batch() -> None:
    a, b = _table_unit("a", "clicks"), _table_unit("b", "orders")
    items: list[Item | float] = [_chunk(a, 0, 1), 0.15, _chunk(b, 0, 1), 0.1, _chunk(a, 1, 1)]
    batches, _ = anyio.run(_run, BatchConfig(max_age=0.2), items)
    assert (batches[0].table, batches[0].records) == ("clicks", 1)  # by age, while orders stayed open
    assert sorted((x.table, x.records) for x in batches) == [("clicks", 1), ("clicks", 1), ("orders", 1)]


def _ids(batch: Batch) -> list[int]:
    return [i for c in batch.chunks for i in c.table.column("id").to_pylist()]


@pytest.mark.anyio
async def test_a_big_last_batch_goes_as_two_halves_in_order_and_its_units_count_both() -> None:
    """The end of the input with one batch left: two encoders share it (two objects, rows in order)."""
    a, b = _unit("a"), _unit("b")
    items: list[Item | float] = [_chunk(a, 0, 150), UnitRead(a), _chunk(b, 150, 50), UnitRead(b)]
    batches, _ = await _run(BatchConfig(max_records=100), items, halve_from=0)
    assert [x.records for x in batches] == [100, 50, 50]  # the first went whole when b's rows came
    assert [_ids(x) for x in batches] == [list(range(100)), list(range(100, 150)), list(range(150, 200))]
    assert [[u.name for u in x.units] for x in batches] == [["a"], ["a"], ["b"]]
    assert (a.pending_batches, b.pending_batches) == (2, 1)  # the whole last batch no longer counts
    assert batches[2].chunks[0].first_line == 1  # b's lines, not shifted by the cut
    assert len({x.id for x in batches}) == 3


@pytest.mark.anyio
async def test_a_last_batch_halves_at_its_unit_row_where_the_rows_divide() -> None:
    u = _unit("u")
    batches, _ = await _run(BatchConfig(max_records=1000), [_chunk(u, 0, 601), UnitRead(u)], halve_from=0)
    assert [x.records for x in batches] == [300, 301]
    assert [x.spans[u] for x in batches] == [[(0, 300)], [(300, 601)]]
    assert batches[1].chunks[0].first_line == 301
    assert u.pending_batches == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("config", "rows", "halve_from"),
    [
        (BatchConfig(max_records=1000), 499, 0),  # under half the limits
        (BatchConfig(max_records=1000), 1000, 8 * 1000 + CHUNK_COST + 1),  # under halve_from bytes
    ],
)
async def test_a_last_batch_under_half_the_limits_or_under_halve_from_goes_whole(
    config: BatchConfig, rows: int, halve_from: int
) -> None:
    u = _unit("u")
    batches, _ = await _run(config, [_chunk(u, 0, rows), UnitRead(u)], halve_from=halve_from)
    assert [x.records for x in batches] == [rows]
    assert u.pending_batches == 1


@pytest.mark.anyio
async def test_two_batches_left_at_the_end_go_whole() -> None:
    """Two batches already fill the two encoders: no halves."""
    a, b = _table_unit("a", "clicks"), _table_unit("b", "orders")
    items: list[Item | float] = [_chunk(a, 0, 80), _chunk(b, 0, 80)]
    batches, _ = await _run(BatchConfig(max_records=100, max_age=60.0), items, halve_from=0)
    assert sorted((x.table, x.records) for x in batches) == [("clicks", 80), ("orders", 80)]


@pytest.mark.anyio
async def test_a_full_batch_goes_whole_after_the_hold_when_the_input_goes_on_without_rows() -> None:
    """A daemon: the batch is full and nothing more comes yet; it is not kept waiting for the end."""
    u = _unit("u")
    batcher = Batcher(BatchConfig(max_records=100, max_age=60.0), lambda unit: _noop(), halve_from=0)
    send, recv = anyio.create_memory_object_stream[Item](10)
    bsend, brecv = anyio.create_memory_object_stream[Batch](10)
    async with anyio.create_task_group() as tg, send, brecv:
        tg.start_soon(batcher.run, recv, bsend)
        started = anyio.current_time()
        await send.send(_chunk(u, 0, 100))
        with anyio.fail_after(5):
            first = await brecv.receive()
        assert first.records == 100 and anyio.current_time() - started >= HOLD * 0.9
        await send.send(_chunk(u, 100, 100))  # full again, then the input ends: halves
        await send.aclose()
        rest = [b async for b in brecv]
    assert [x.records for x in rest] == [50, 50]
    assert [i for x in [first, *rest] for i in _ids(x)] == list(range(200))
