from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.commands.status import describe, spool_status
from ingest.durable.deadletters import DeadLetter
from ingest.pipeline.spool import Spool, SpooledObject


@pytest.mark.anyio
async def test_status_reads_backlog_last_upload_and_dead_letters_from_the_journal(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = Spool(root, "w1", 10**9)
    day = datetime.now(UTC).date()
    for i, size in enumerate((1000, 2500)):
        path = spool.objects_dir / f"o{i}.parquet"
        path.write_bytes(b"x" * size)
        spool.journal.spooled(f"b{i}", [], [SpooledObject(f"o{i}", None, path, day, 10, size).row()])
    spool.journal.add_unit("file:/in/a.jsonl", "a.jsonl", "1:2:3", "/in/a.jsonl")
    spool.journal.uploaded("o-earlier", "p/2026/01/01/ingested_0001.parquet")
    spool.dead.write([DeadLetter("a.jsonl", 3, "invalid JSON")])
    spool.seal_dead_letters()
    spool.dead.write([DeadLetter("a.jsonl", 9, "invalid JSON")])  # not sealed yet: still counted

    (st,) = spool_status(root)
    assert st.worker == "w1" and st.running
    # Two Parquet files and the sealed dead-letter file wait for upload.
    assert (st.backlog_objects, st.unacknowledged_units) == (3, 1)
    assert 3500 < st.backlog_bytes < 3500 + 200
    assert st.oldest_seconds is not None and st.oldest_seconds < 60
    assert st.last_upload_key == "p/2026/01/01/ingested_0001.parquet"
    assert st.last_upload_at is not None and abs(st.last_upload_at - time.time()) < 60
    assert st.dead_letters_today == 2
    text = "\n".join(describe(st))
    assert "backlog: 3 objects, 0.0 MB waiting for upload, oldest 0s" in text
    assert "dead letters today: 2" in text

    spool.close()
    (st,) = spool_status(root)
    assert not st.running


def test_no_spool_yet_is_an_empty_status(tmp_path: Path) -> None:
    assert spool_status(tmp_path / "nothing") == []
