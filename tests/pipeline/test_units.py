"""The unit book against a real spool (journal in SQLite): a unit is acknowledged only once it is read
to its end and no batch holding its rows is still waiting for R2, and then forgotten."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from ingest.daemon.health import Stats
from ingest.pipeline.batch import Batch
from ingest.pipeline.spool import Spool
from ingest.pipeline.units import UnitBook
from ingest.sources.base import SourceUnit, UnitHandle
from ingest.sources.reader import FileRead


def _unit(
    acks: list[str], name: str = "a.jsonl", fingerprint: str = "7:10:1", answer: bool = True
) -> SourceUnit:
    async def ack() -> bool:
        acks.append(name)
        return answer

    return SourceUnit(
        name=name, handle=UnitHandle(ack), id=f"file:{name}", fingerprint=fingerprint, path=f"/in/{name}"
    )


async def _until(done: Callable[[], bool]) -> None:
    """Background journal commits (row counts, forgetting) run in threads: wait for their effect."""
    for _ in range(1000):
        if done():
            return
        await anyio.sleep(0.01)
    raise AssertionError("not done within 10 s")


@pytest.fixture
def book(tmp_path: Path) -> Iterator[UnitBook]:
    spool = Spool(tmp_path, "w", 10**9)
    yield UnitBook(spool, Stats())
    spool.close()


@pytest.mark.anyio
async def test_a_unit_is_acknowledged_once_read_and_uploaded_then_forgotten(book: UnitBook) -> None:
    spool, acks = book.spool, list[str]()
    async with anyio.create_task_group() as tg:
        book.tg = tg
        (unit,) = await book.open([_unit(acks)])
        assert [u.id for u in spool.journal.units()] == ["file:a.jsonl"]  # journaled before it is read
        batch = Batch()
        unit.pending_batches, unit.next_row = 1, 3
        batch.units.append(unit)
        await book.read(unit)
        await _until(lambda: [u.total for u in spool.journal.units()] == [3])  # its row count
        assert acks == [] and "rows in 1 batch(es) not yet uploaded" in book.unacknowledged().values()
        book.batch_done(batch)  # its only batch is in R2
        await _until(lambda: not spool.journal.units())
    assert acks == ["a.jsonl"]
    assert book.unacknowledged() == {} and spool.journal.units() == []


@pytest.mark.anyio
async def test_a_failed_batch_or_a_grown_file_is_never_acknowledged(book: UnitBook) -> None:
    spool, acks = book.spool, list[str]()
    async with anyio.create_task_group() as tg:
        book.tg = tg
        failed, grown = await book.open([_unit(acks, "f.jsonl"), _unit(acks, "g.jsonl", answer=False)])
        batch = Batch(failed=True)
        for unit in (failed, grown):
            unit.pending_batches, unit.next_row = 1, 2
            await book.read(unit)
        batch.units.append(failed)
        book.batch_done(batch)
        await _until(lambda: all(u.total == 2 for u in spool.journal.units()))
        grown.pending_batches = 0
        book.maybe_ack(grown)
        await _until(lambda: grown.total is None)
    assert acks == ["g.jsonl"]  # asked once; it answered that the file changed after it was read
    why = book.unacknowledged()
    assert why["/in/f.jsonl"] == "rows in an object that was not uploaded"
    assert why["/in/g.jsonl"] == "not read to its end" and grown.total is None


@pytest.mark.anyio
async def test_a_unit_from_the_journal_is_opened_again_as_itself_and_a_replaced_file_anew(
    book: UnitBook,
) -> None:
    acks: list[str] = []
    known = _unit([], fingerprint="7:10:1")
    known.handle, known.skip = None, [(0, 5)]  # as recovered: not opened yet, rows 0–5 already spooled
    replaced = _unit([], "r.jsonl", fingerprint="8:10:1")
    book.by_id = {known.id: known, replaced.id: replaced}
    assert book.unacknowledged()["/in/a.jsonl"] == "in the journal, but not opened by its source in this run"
    same, other = await book.open([_unit(acks, fingerprint="7:20:2"), _unit(acks, "r.jsonl", "9:10:1")])
    assert same is known and same.handle is not None and same.skip == [(0, 5)]  # grown: the rest is read
    assert other is not replaced and other.skip == []  # another inode: read whole
    assert book.known("file:") == [same, other]


@pytest.mark.anyio
async def test_a_file_reopened_in_the_run_that_read_part_of_it_goes_on_from_its_read_position(
    book: UnitBook,
) -> None:
    """A file that changed after it was read (a writer still appending) is opened again with a fresh
    handle: the read goes on from the byte where the last one stopped, its rows numbered after the
    rows already taken (the position lives in the source's handle, not in the unit)."""
    first = FileRead(_noop, position=(4096, 101))
    unit = SourceUnit("a.jsonl", first, id="file:a.jsonl", fingerprint="7:4096:1")
    unit.next_row = 100
    book.by_id = {unit.id: unit}
    again = FileRead(_noop)
    [same] = await book.open([SourceUnit("a.jsonl", again, id="file:a.jsonl", fingerprint="7:5000:2")])
    assert same is unit and same.handle is again and again.position == (4096, 101) and same.next_row == 100

    # Read to its end before it grew: the rest cannot be found by row, so it is read from the top.
    unit.total = 100
    [same] = await book.open(
        [SourceUnit("a.jsonl", FileRead(_noop), id="file:a.jsonl", fingerprint="7:6000:3")]
    )
    assert isinstance(same.handle, FileRead) and same.handle.position == (0, 1)
    assert same.next_row == 0 and same.skip == [(0, 100)] and same.total is None


async def _noop() -> bool:
    return True
