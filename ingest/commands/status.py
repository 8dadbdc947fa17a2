"""`ingest status`: what each worker's spool holds, read from its journal (safe while it runs).

Answers the on-call questions: is anything stuck locally (backlog: objects, bytes, age of the
oldest), when did an upload last succeed, how many records were dead-lettered today, and is the
worker that owns the spool running right now.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ingest.durable.deadletters import DeadLetters
from ingest.messages import count
from ingest.pipeline.journal import Journal


@dataclass(frozen=True)
class WorkerStatus:
    worker: str
    spool: str
    running: bool
    backlog_objects: int
    backlog_bytes: int
    oldest_seconds: float | None  # age of the oldest object waiting for upload
    unacknowledged_units: int
    last_upload_at: float | None
    last_upload_key: str | None
    dead_letters_today: int
    unreadable: list[dict[str, object]]  # input that could not be read: {input, reason, since}
    awaiting_commit: int = 0  # objects in R2 whose Iceberg commit is not done yet

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def spool_status(root: Path) -> list[WorkerStatus]:
    if not root.is_dir():
        return []
    today = datetime.now(UTC).date().isoformat()
    out = []
    for db in sorted(root.glob("*/journal.db")):
        worker = db.parent.name
        try:
            journal = Journal(db, readonly=True)
        except sqlite3.Error:
            continue
        try:
            backlog = journal.backlog()
            last_at = journal.meta("last_upload_at")
            last_key = journal.meta("last_upload_key")
            dead_today = journal.dead_letters_on(today)
            unreadable = [{"input": i, "reason": r, "since": t} for i, r, t in journal.problems()]
        finally:
            journal.close()
        dead_today += DeadLetters(db.parent / "dead-letters").today()
        out.append(
            WorkerStatus(
                worker=worker,
                spool=str(db.parent),
                running=_locked(root / f"{worker}.lock"),
                backlog_objects=backlog.objects,
                backlog_bytes=backlog.bytes,
                oldest_seconds=None if backlog.oldest is None else max(0.0, time.time() - backlog.oldest),
                unacknowledged_units=backlog.units,
                last_upload_at=float(last_at) if last_at else None,
                last_upload_key=last_key,
                dead_letters_today=dead_today,
                unreadable=unreadable,
                awaiting_commit=backlog.uncommitted,
            )
        )
    return out


def _locked(lock: Path) -> bool:
    """True when a live worker holds the spool's lock."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def describe(st: WorkerStatus) -> list[str]:
    """Human lines for one worker."""
    state = "running" if st.running else "not running"
    lines = [f"worker {st.worker} ({state}), spool {st.spool}"]
    if st.backlog_objects:
        age = _age(st.oldest_seconds or 0.0)
        lines.append(
            f"  backlog: {count(st.backlog_objects, 'object')}, {st.backlog_bytes / 1e6:.1f} MB waiting for "
            f"upload, oldest {age}"
        )
    else:
        lines.append("  backlog: empty")
    if st.awaiting_commit:
        lines.append(f"  uploaded, awaiting their Iceberg commit: {count(st.awaiting_commit, 'object')}")
    if st.unacknowledged_units:
        lines.append(f"  source units not yet acknowledged: {st.unacknowledged_units}")
    if st.last_upload_at is not None:
        when = datetime.fromtimestamp(st.last_upload_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        ago = _age(max(0.0, time.time() - st.last_upload_at))
        lines.append(f"  last upload: {when} ({ago} ago), {st.last_upload_key}")
    else:
        lines.append("  last upload: never")
    lines.append(f"  dead letters today: {st.dead_letters_today}")
    if st.unreadable:
        lines.append(f"  unreadable input (kept, tried again): {len(st.unreadable)}")
        lines += [f"    {p['input']}: {p['reason']}" for p in st.unreadable[:10]]
    return lines


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
