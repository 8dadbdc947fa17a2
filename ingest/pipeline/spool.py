"""The spool: encoded objects on local disk (fsynced) plus the journal, the durability point.

One spool directory per worker (`<spool.dir>/<worker-id>/`, owned through an flock), holding
`objects/` (Parquet files waiting for upload), `dead-letters/` (the day's dead-letter file, and
`outbox/` for sealed ones waiting for upload) and `journal.db`.

On start, `recover()` turns the journal back into work: spooled objects whose file is intact go back
to the uploader (with the key last attempted, which may already hold them), damaged ones are dropped
so their rows are read from the source again, and every unit remembers which of its rows are
already spooled or uploaded. The spool also carries backpressure: above `spool.max_bytes` of
objects waiting, sources take no new input until it is back under the low-water mark.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from ingest.config import ConfigError
from ingest.durable.commits import GroupCommit
from ingest.durable.deadletters import DeadLetters
from ingest.durable.files import WorkerIdInUse, is_disk_full, lock_worker_id, sha256_of
from ingest.layout import DEFAULT_TABLE
from ingest.logs import get_logger
from ingest.pipeline.batch import Batch
from ingest.pipeline.journal import Journal, ObjectRow, UnitRow
from ingest.sources.base import Ranges, SourceUnit, merge_ranges

log = get_logger("ingest.pipeline.spool")
LOW_WATER = 0.8  # intake resumes below this fraction of spool.max_bytes
T = TypeVar("T")
CONTENT_TYPES = {"data": "application/vnd.apache.parquet", "deadletters": "application/x-ndjson"}


class SpoolError(Exception):
    """The spool cannot be written for a reason waiting will not fix (read-only, I/O error, denied):
    the run ends (exit 1) with this one line."""

    def __init__(self, spool: Path, what: str, exc: BaseException) -> None:
        where = getattr(exc, "filename", None) or spool
        if isinstance(exc, OSError) and exc.errno:
            reason = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
        else:
            reason = str(exc)
        super().__init__(
            f"cannot write the spool ({what}) at {where}: {reason}; fix the disk or its permissions, or "
            "move spool.dir; what was read stays unacknowledged and is read again"
        )


@dataclass(eq=False)
class SpooledObject:
    """One file in the spool waiting for its key and upload. `object_id` is the x-amz-meta-batch-id."""

    object_id: str
    batch: Batch | None  # None for dead letters
    path: Path
    day: date
    records: int
    size: int
    sha256: str = ""
    kind: str = "data"
    key: str | None = None  # last key attempted (after a restart: may already hold this object)
    created: float = field(default_factory=time.time)  # when it was written to the spool
    table: str = DEFAULT_TABLE
    # The rows of each unit this object holds, when its batch became several objects (one per day);
    # None: all of its batch's rows. The ledgers record exactly these before the PUT.
    holds: dict[SourceUnit, Ranges] | None = None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.kind]

    def unit_rows(self) -> dict[SourceUnit, Ranges]:
        """The rows of each unit this object holds."""
        if self.holds is not None:
            return self.holds
        return self.batch.spans if self.batch is not None else {}

    def row(self, state: str = "spooled") -> ObjectRow:
        return ObjectRow(
            self.object_id,
            self.batch.id if self.batch is not None else None,
            self.kind,
            self.path.name,
            self.day.isoformat(),
            self.records,
            self.size,
            self.sha256,
            state,
            self.key,
            self.created,
            self.table,
            None
            if self.holds is None
            else json.dumps([[u.id, a, b] for u, ranges in self.holds.items() for a, b in ranges]),
        )


@dataclass(eq=False)
class _Call:
    """A serial write waiting for its group's commit."""

    what: str
    fn: Callable[[], Any]


@dataclass
class Recovered:
    objects: list[SpooledObject] = field(default_factory=list)  # to upload
    units: dict[str, SourceUnit] = field(default_factory=dict)
    uncommitted: list[SpooledObject] = field(default_factory=list)  # in R2, not known to be committed


class Spool:
    def __init__(self, root: Path, worker_id: str, max_bytes: int, explicit: bool = False) -> None:
        self.root = root
        self.worker_id, self._lock_fd = _lock_worker(root, worker_id, explicit)
        self.dir = root / self.worker_id
        self.objects_dir = self.dir / "objects"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.dead = DeadLetters(self.dir / "dead-letters")
        self.journal = Journal(self.dir / "journal.db")
        self.max_bytes = max_bytes
        self.used = 0
        self.paused = False
        self._room = anyio.Event()
        self._room.set()
        self._commits = GroupCommit(self._commit_group, self._abandoned)  # serial journal writes
        self.retry_initial, self.retry_max = 0.5, 30.0  # backoff while the disk is full
        self.full: str | None = None
        self._queued: set[str] = set()  # dead-letter files this process journaled for upload
        self.on_full: Callable[[str], None] = lambda reason: None
        self.on_room: Callable[[], None] = lambda: None

    def close(self) -> None:
        self.journal.close()
        os.close(self._lock_fd)

    # -- durable writes --------------------------------------------------------------------------

    async def durably(self, what: str, fn: Callable[..., T], *args: Any, serial: bool = True) -> T:
        """Run a journal or spool write in a thread (never on the event loop).

        `serial` ones (the journal's) run one group at a time, in order: calls that arrive while a
        commit is running queue up and go together in the next one (group commit: one transaction
        and one fsync for all, e.g. the units of many small files). On a full disk report it
        (readiness false), back off and try again until there is room; a group rolls back as a whole
        and its writes are single statements or idempotent file steps, so trying again is safe. Any
        other failure to write (EROFS, EIO, EACCES) is a SpoolError."""
        if not serial:
            return await self._retrying(what, partial(fn, *args))
        result: T = await self._commits(_Call(what, partial(fn, *args)))
        return result

    async def _commit_group(self, group: list[_Call]) -> list[Any]:
        what = group[0].what if len(group) == 1 else f"{group[0].what} and {len(group) - 1} more"
        return await self._retrying(what, partial(self._run_group, group))

    def _abandoned(self, call: _Call) -> SpoolError:
        return SpoolError(self.dir, call.what, RuntimeError("commit abandoned"))

    def _run_group(self, group: list[_Call]) -> list[Any]:
        """In the journal thread: every call of the group inside one journal transaction."""
        if len(group) == 1:
            return [group[0].fn()]
        with self.journal.group():
            return [c.fn() for c in group]

    async def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """`fn` in a thread; a full disk is waited out. The usual case (it works) takes no retry
        machinery: tenacity's state for one call is some 36 objects in reference cycles, and at
        hundreds of journal writes a second they were most of what the cyclic GC collected, in
        passes of 13-25 ms that stalled the event loop (measured with HTTP requests)."""
        try:
            result = await anyio.to_thread.run_sync(fn)
        except (OSError, sqlite3.OperationalError) as exc:
            if not disk_full(exc):
                raise SpoolError(self.dir, what, exc) from exc
            result = await self._waiting_out(what, fn, exc)
        if self.full is not None:
            self.full = None
            self.on_room()
            log.info("spool disk has room again", write=what)
        return result

    async def _waiting_out(self, what: str, fn: Callable[[], T], failed: BaseException) -> T:
        """The write failed on a full disk (`failed`): try again with backoff until it works."""
        first: BaseException | None = failed

        def waiting(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.full = f"spool disk full at {self.dir} ({what}); free space or move spool.dir"
            self.on_full(self.full)
            log.error(
                "spool disk full; waiting for space before going on",
                write=what,
                error=str(exc),
                retry_in=round(state.upcoming_sleep, 3),
                spool=str(self.dir),
            )

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(disk_full),  # no stop: a full disk is waited out
                wait=wait_exponential(multiplier=self.retry_initial, max=self.retry_max),
                before_sleep=waiting,
                reraise=True,
            ):
                with attempt:
                    if first is not None:  # the failed try counts as the first attempt
                        raised, first = first, None
                        raise raised
                    result = await anyio.to_thread.run_sync(fn)
        except (OSError, sqlite3.OperationalError) as exc:
            raise SpoolError(self.dir, what, exc) from exc
        return result

    # -- backpressure ------------------------------------------------------------------------------

    def added(self, size: int) -> bool:
        """Count bytes waiting for upload; True when this crossed the high-water mark."""
        self.used += size
        if not self.paused and self.used >= self.max_bytes:
            self.paused = True
            self._room = anyio.Event()
            return True
        return False

    def removed(self, size: int) -> bool:
        """True when this brought the spool back under the low-water mark."""
        self.used = max(0, self.used - size)
        if self.paused and self.used <= self.max_bytes * LOW_WATER:
            self.paused = False
            self._room.set()
            return True
        return False

    async def wait_for_room(self) -> None:
        await self._room.wait()

    def room(self) -> int:
        """Bytes the spool takes before intake pauses."""
        return max(0, self.max_bytes - self.used)

    # -- dead letters --------------------------------------------------------------------------------

    def seal_dead_letters(self) -> list[SpooledObject]:
        """Close the dead-letter files written so far and journal them for upload (blocking).

        Safe to call again after a failure (a full disk): files already sealed but not journaled are
        found in the outbox and journaled then."""
        self.dead.seal()
        return self._journal_outbox()

    def _journal_outbox(self) -> list[SpooledObject]:
        """Journal every sealed dead-letter file not journaled (nor queued by this process) yet."""
        known = {r.file for r in self.journal.objects() if r.kind == "deadletters"} | self._queued
        out = []
        for path, day, lines in self.dead.outbox():
            if path.name in known:
                continue
            obj = SpooledObject(
                path.stem, None, path, day, lines, path.stat().st_size, sha256_of(path), "deadletters"
            )
            self.journal.add_object(obj.row(), dead_letters=lines)
            self._queued.add(path.name)
            out.append(obj)
        return out

    # -- recovery ------------------------------------------------------------------------------------

    def damaged(self) -> list[ObjectRow]:
        """Journaled objects whose file is missing or no longer matches its size and SHA-256; first
        removes files written but never journaled (blocking: run it in a thread)."""
        self._journal_outbox()  # sealed, then the crash came before the journal said so
        rows = self.journal.objects()
        known = {r.file for r in rows if r.kind == "data"}
        for stray in self.objects_dir.iterdir():
            if stray.name not in known:  # written, but the crash came before the journal said so
                stray.unlink(missing_ok=True)
        out = []
        for r in rows:
            if r.state == "uploaded":  # in R2 already; its file is gone
                continue
            path = self._path(r)
            if not path.is_file() or path.stat().st_size != r.size or sha256_of(path) != r.sha256:
                out.append(r)
        return out

    def drop(self, damaged: ObjectRow) -> None:
        """Forget a damaged object (and the rest of its batch): its rows will be read again."""
        log.error(
            "spooled file damaged or missing; its rows will be read from the source again",
            path=str(self._path(damaged)),
        )
        if damaged.batch_id is None:
            self.journal.drop_object(damaged.id)
            self._path(damaged).unlink(missing_ok=True)
            return
        for r in self.journal.objects():
            if r.batch_id == damaged.batch_id:
                self._path(r).unlink(missing_ok=True)
        self.journal.drop_batch(damaged.batch_id)

    def forget_uploaded(self, row: ObjectRow, key: str, commit: bool = False) -> None:
        """A damaged object that the store turned out to hold already (the crash came after the PUT);
        `commit`: still to be committed to its Iceberg table (`recover` returns it as uncommitted)."""
        self.journal.uploaded(row.id, key, commit and row.kind == "data")
        self._path(row).unlink(missing_ok=True)

    def recover(self, undecided: set[str] | None = None) -> Recovered:
        """Rebuild pending work from the journal (after `damaged()` was dealt with; blocking).

        `undecided` objects (damaged, and the store could not be asked whether it holds them) are not
        uploaded, and the units whose rows they hold are not acknowledged in this run.
        """
        undecided = undecided or set()
        out = Recovered()
        units = {u.id: _unit(u) for u in self._live_units()}
        by_batch: dict[str, list[SourceUnit]] = defaultdict(list)
        spans: dict[str, dict[SourceUnit, Ranges]] = defaultdict(dict)
        skips: dict[str, Ranges] = defaultdict(list)
        for batch_id, unit_id, start, stop in self.journal.spans():
            if unit_id in units:
                skips[unit_id].append((start, stop))
                if units[unit_id] not in by_batch[batch_id]:
                    by_batch[batch_id].append(units[unit_id])
                spans[batch_id].setdefault(units[unit_id], []).append((start, stop))
        for unit_id, ranges in skips.items():
            units[unit_id].skip = merge_ranges(ranges)
        batches: dict[str, Batch] = {}
        for r in self.journal.objects():
            if r.id in undecided:
                for unit in by_batch.get(r.batch_id or "", []):
                    unit.failed = True
                continue
            batch = None
            if r.batch_id is not None:
                batch = batches.get(r.batch_id)
                if batch is None:
                    batch = Batch(
                        id=r.batch_id, units=by_batch[r.batch_id], spans=spans[r.batch_id], table=r.table
                    )
                    batches[r.batch_id] = batch
                    for unit in batch.units:
                        unit.pending_batches += 1
                batch.pending_objects += 1
            obj = SpooledObject(
                r.id, batch, self._path(r), date.fromisoformat(r.day), r.records, r.size, r.sha256, r.kind
            )
            obj.key, obj.created, obj.table = r.key, r.created, r.table
            if r.holds is not None:
                obj.holds = {}
                for unit_id, a, b in json.loads(r.holds):
                    if unit_id in units:
                        obj.holds.setdefault(units[unit_id], []).append((a, b))
            (out.uncommitted if r.state == "uploaded" else out.objects).append(obj)
        out.units = units
        return out

    def _live_units(self) -> list[UnitRow]:
        """Units still to acknowledge; a unit whose file is gone was acknowledged just before a crash."""
        live = []
        for u in self.journal.units():
            if u.path is not None and not os.path.exists(u.path):
                self.journal.forget_unit(u.id)
            else:
                live.append(u)
        return live

    def _path(self, r: ObjectRow) -> Path:
        return (self.objects_dir if r.kind == "data" else self.dead.outbox_dir) / r.file


def _unit(u: UnitRow) -> SourceUnit:
    return SourceUnit(name=u.name, id=u.id, fingerprint=u.fingerprint, total=u.total)


def _lock_worker(root: Path, worker_id: str, explicit: bool) -> tuple[str, int]:
    try:
        return lock_worker_id(root, worker_id, explicit)
    except WorkerIdInUse:
        raise ConfigError(
            f"worker.id: {worker_id!r} is in use by another running worker with spool.dir {root}; "
            "give each worker its own id"
        ) from None


def disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from a file write, or SQLite's SQLITE_FULL."""
    if isinstance(exc, sqlite3.OperationalError):
        return "disk is full" in str(exc) or "disk full" in str(exc)
    return is_disk_full(exc)
