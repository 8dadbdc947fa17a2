"""Recovery from the journal, without a store: what comes back, what is dropped, what is skipped."""

from __future__ import annotations

import gc
import sqlite3
from datetime import date
from pathlib import Path

import anyio
import pytest

from ingest.config import ConfigError
from ingest.durable.files import sha256_of
from ingest.pipeline.batch import Batch
from ingest.pipeline.journal import Journal
from ingest.pipeline.spool import Spool, SpooledObject
from ingest.sources.base import SourceUnit, UnitHandle

DAY = date(2026, 11, 23)


async def _noop() -> None:
    return None


def _spool_object(spool: Spool, name: str, batch: str, body: bytes) -> SpooledObject:
    path = spool.objects_dir / f"{name}.parquet"
    path.write_bytes(body)
    return SpooledObject(name, Batch(id=batch), path, DAY, 5, len(body), sha256_of(path))


@pytest.mark.anyio
async def test_recovery_resumes_intact_objects_drops_damaged_ones_and_skips_covered_rows(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, "w", 10**9)
    a_file = tmp_path / "a.jsonl"
    a_file.write_text("x")
    gone = tmp_path / "gone.jsonl"  # acknowledged just before the crash
    j = spool.journal
    j.add_unit("file:a", "a.jsonl", "1:1:1", str(a_file))
    j.add_unit("file:gone", "gone.jsonl", "2:2:2", str(gone))
    j.unit_read("file:a", 300, "1:2:3")
    good = _spool_object(spool, "good", "b1", b"intact")
    bad = _spool_object(spool, "bad", "b2", b"will be damaged")
    j.spooled("b1", [("file:a", 0, 100)], [good.row()])
    j.spooled("b2", [("file:a", 100, 200)], [bad.row()])
    j.spooled("b3", [("file:a", 200, 250)], [])  # every row a dead letter: covered, nothing to upload
    j.attempting("good", "p/2026/11/23/ingested_0007.parquet")
    bad.path.write_bytes(b"damaged")
    (spool.objects_dir / "orphan.parquet").write_bytes(b"written, never journaled")

    damaged = spool.damaged()
    assert [r.id for r in damaged] == ["bad"]
    spool.drop(damaged[0])  # (the pipeline first asks the store: this one was never attempted)
    rec = spool.recover()

    assert [o.object_id for o in rec.objects] == ["good"]
    assert rec.objects[0].key == "p/2026/11/23/ingested_0007.parquet"  # looked for there first
    assert sorted(p.name for p in spool.objects_dir.iterdir()) == ["good.parquet"]
    assert set(rec.units) == {"file:a"}  # the acknowledged one is forgotten
    unit = rec.units["file:a"]
    assert unit.skip == [(0, 100), (200, 250)]  # b2's rows are read again
    assert unit.total == 300 and not unit.fully_covered
    assert unit.pending_batches == 1 and rec.objects[0].batch is not None
    assert rec.objects[0].batch.units == [unit]
    assert [u.id for u in j.units()] == ["file:a"]
    spool.close()


@pytest.mark.anyio
async def test_backpressure_pauses_at_the_high_water_mark_and_resumes_below_the_low(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "w", 1000)
    assert not spool.added(600)
    assert spool.added(500) and spool.paused  # 1100 >= 1000
    assert not spool.removed(200)  # 900: still above 80 %
    assert spool.removed(200) and not spool.paused  # 700
    with anyio.fail_after(5):  # fails instead of hanging if the room never opens
        await spool.wait_for_room()
    spool.close()


@pytest.mark.anyio
async def test_a_second_worker_gets_its_own_spool_and_an_explicit_id_in_use_is_an_error(
    tmp_path: Path,
) -> None:
    first = Spool(tmp_path, "host", 10)
    second = Spool(tmp_path, "host", 10)
    assert (first.worker_id, second.worker_id) == ("host", "host.2")
    with pytest.raises(ConfigError, match=r"worker\.id: 'host' is in use by another running worker"):
        Spool(tmp_path, "host", 10, explicit=True)
    first.close()
    second.close()


@pytest.mark.anyio
async def test_writes_that_queue_up_are_committed_together_in_order(tmp_path: Path) -> None:
    """Group commit: 300 units opened at once (many small files) take far fewer transactions (fsyncs)
    than writes, every caller gets its own result only once its group is committed, in call order."""
    spool = Spool(tmp_path, "w", 10**9)
    transactions: list[str] = []
    spool.journal.db.set_trace_callback(lambda sql: transactions.append(sql) if sql == "COMMIT" else None)
    order: list[int] = []

    async def open_unit(i: int) -> None:
        await spool.durably("add unit", spool.journal.add_unit, f"file:{i}", f"{i}.jsonl", "1:1:1", None)
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(open_unit, i)
    assert sorted(order) == list(range(300))
    assert {u.id for u in spool.journal.units()} == {f"file:{i}" for i in range(300)}
    assert 1 <= len(transactions) <= 30, len(transactions)  # not 300
    spool.close()


def test_an_object_uploaded_but_not_yet_committed_comes_back_as_uncommitted_with_its_key(
    tmp_path: Path,
) -> None:
    """Iceberg: `uploaded` keeps the object's row (its spooled file gone), `recover` returns it to be
    committed, not uploaded, and its unit still waits for it; `committed` forgets it."""
    spool = Spool(tmp_path, "w", 10**9)
    source = tmp_path / "a.jsonl"
    source.write_text("x")
    j = spool.journal
    j.add_unit("file:a", "a.jsonl", "1:1:1", str(source))
    j.unit_read("file:a", 10, "1:1:1")
    obj = _spool_object(spool, "o1", "b1", b"parquet")
    j.spooled("b1", [("file:a", 0, 10)], [obj.row()])
    key = "s3://ingest-catalog/ns/t/data/2026/11/23/ingested_0001.parquet"
    j.uploaded("o1", key, commit=True)
    obj.path.unlink()

    assert spool.damaged() == []  # its file is gone on purpose
    assert j.backlog().objects == 0 and j.backlog().uncommitted == 1  # waits for its commit, not an upload
    rec = spool.recover()
    assert rec.objects == []
    (again,) = rec.uncommitted
    assert again.object_id == "o1" and again.key == key and again.batch is not None
    assert rec.units["file:a"].pending_batches == 1  # acknowledged only after the commit
    j.committed(["o1"])
    assert spool.recover().uncommitted == []
    spool.close()


def test_the_rows_each_day_object_holds_come_back_from_the_journal_and_an_old_journal_opens(
    tmp_path: Path,
) -> None:
    """Objects of a batch split by day come back each with its own rows (the ledger records them at
    the upload after a restart); a journal written before `holds` existed gains the column."""
    old = tmp_path / "old"
    old.mkdir()
    db = sqlite3.connect(old / "journal.db")
    db.execute(
        "CREATE TABLE objects (id TEXT PRIMARY KEY, batch_id TEXT, kind TEXT NOT NULL, file TEXT NOT NULL, "
        "day TEXT NOT NULL, records INTEGER NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, "
        "state TEXT NOT NULL, key TEXT, created REAL NOT NULL, tbl TEXT NOT NULL DEFAULT 'default')"
    )
    db.execute(
        "INSERT INTO objects VALUES "
        "('o0', 'b0', 'data', 'o0.parquet', '2026-11-23', 1, 1, '', 'spooled', NULL, 0, 'default')"
    )
    db.commit()
    db.close()
    assert [r.holds for r in Journal(old / "journal.db", readonly=True).objects()] == [None]  # as it is
    assert [r.holds for r in Journal(old / "journal.db").objects()] == [None]  # migrated

    spool = Spool(tmp_path / "spool", "w", 10**9)
    source = tmp_path / "a.jsonl"
    source.write_text("x")
    j = spool.journal
    j.add_unit("file:a", "a.jsonl", "1:1:1", str(source))
    j.unit_read("file:a", 10, "1:1:1")
    first = _spool_object(spool, "o1", "b1", b"day one")
    second = _spool_object(spool, "o2", "b1", b"day two")
    unit = SourceUnit("a.jsonl", UnitHandle(_noop), id="file:a")
    first.holds = {unit: [(0, 3), (7, 10)]}
    second.holds = {unit: [(3, 7)]}
    j.spooled("b1", [("file:a", 0, 10)], [first.row(), second.row()])
    rec = spool.recover()
    back = {o.object_id: o for o in rec.objects}
    again = rec.units["file:a"]
    assert back["o1"].holds == {again: [(0, 3), (7, 10)]} and back["o2"].holds == {again: [(3, 7)]}
    assert back["o1"].unit_rows() == {again: [(0, 3), (7, 10)]}
    assert back["o1"].batch is back["o2"].batch and again.pending_batches == 1
    spool.close()


@pytest.mark.anyio
async def test_writes_that_work_leave_no_reference_cycles_for_the_collector(tmp_path: Path) -> None:
    """A write that works takes no retry machinery: tenacity's state was some 36 objects in
    reference cycles per journal write, most of what the cyclic GC collected in an HTTP run, in
    passes that stalled the event loop 13-25 ms."""
    spool = Spool(tmp_path, "w", 10**9)
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            await spool.durably("parallel write", lambda: None, serial=False)
            await spool.durably("journal write", lambda: None)
        cyclic = gc.collect()
    finally:
        gc.enable()
        spool.close()
    assert cyclic < 100  # 200 writes: 7,000 and more before
