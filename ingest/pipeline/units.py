"""Source units from open to acknowledged: the bookkeeping behind "acknowledged only once in R2".

A unit (a claimed file, a request's block, a Redis read) is journaled when its source opens it, read to
its end (its row count journaled), counted in every batch that holds its rows, and acknowledged (its
file deleted or moved, its entries XACKed) only once none of those batches is still waiting for R2.
Row counts and acknowledgements are journaled many at a time in the background (`Backlog`): nobody
waits on one commit per file.
"""

from __future__ import annotations

from anyio.abc import TaskGroup

from ingest import metrics
from ingest.daemon.health import Stats
from ingest.durable.commits import Backlog
from ingest.durable.faults import ack_lost, crash_point
from ingest.logs import get_logger
from ingest.pipeline.batch import Batch
from ingest.pipeline.journal import UnitRow
from ingest.pipeline.spool import Spool
from ingest.sources.base import AckError, AckMany, SourceUnit

log = get_logger("ingest.pipeline")


class UnitBook:
    def __init__(self, spool: Spool, stats: Stats) -> None:
        self.spool = spool
        self.journal = spool.journal
        self.stats = stats
        self.by_id: dict[str, SourceUnit] = {}  # id → unit, opened in this run or found in the journal
        self.tg: TaskGroup | None = None  # the run's, for acknowledgements (set when it starts)
        self._ack_errors: dict[str, str] = {}  # unit id → why its acknowledgement failed
        self._reads: Backlog[tuple[SourceUnit, int, str]] = Backlog(self._journal_reads)
        self._forgets: Backlog[SourceUnit] = Backlog(self._forget)
        self._acks: Backlog[SourceUnit] = Backlog(self._ack_many)  # units whose source acks many at once

    async def open(self, units: list[SourceUnit]) -> list[SourceUnit]:
        """Units a source is about to read, journaled (one commit); a unit known from the journal is
        the one returned, with what the source says of it now (skip ranges kept)."""
        opened: list[SourceUnit] = []
        new: list[SourceUnit] = []
        for unit in units:
            known = self.by_id.get(unit.id)
            if known is not None and _same_file(known.fingerprint, unit.fingerprint):
                opened.append(_reopened(known, unit))
                continue
            if known is not None:
                log.warning("source unit replaced since it was journaled; reading all of it", unit=unit.name)
            new.append(unit)
            opened.append(unit)
        if new:
            rows = [UnitRow(u.id, u.name, u.fingerprint, u.path, _counted(u)) for u in new]
            await self.spool.durably("add unit", self.journal.add_units, rows)
        for unit in opened:
            self.by_id[unit.id] = unit
        return opened

    def accepted(self, units: list[SourceUnit]) -> None:
        """Units their source journaled itself, with their row counts (HTTP blocks): opened next."""
        for unit in units:
            self.by_id[unit.id] = unit

    def known(self, prefix: str) -> list[SourceUnit]:
        """Units not yet acknowledged whose id starts with `prefix`."""
        return [u for u in self.by_id.values() if u.id.startswith(prefix)]

    async def read(self, unit: SourceUnit) -> None:
        """A unit read to its end. Its row count is journaled in the background with others
        (`_reads`), so the batcher does not wait on each file's commit; the unit is acknowledged
        only after that commit."""
        self.stats.units_claimed += 1
        counted = _counted(unit) == unit.next_row  # journaled with it
        covered = not unit.next_row and unit.total is not None  # fully covered: keeps its known total
        if counted or covered:
            self.maybe_ack(unit)
            return
        unit.total = unit.next_row
        if unit.handle is not None and (read := unit.handle.read_fingerprint()) is not None:
            unit.fingerprint = read  # what the file looked like when its last byte was read
        unit.read_done = False
        assert self.tg is not None
        self._reads.add((unit, unit.total, unit.fingerprint), self.tg)

    async def _journal_reads(self, reads: list[tuple[SourceUnit, int, str]]) -> None:
        rows = [(unit.id, total, fingerprint) for unit, total, fingerprint in reads]
        await self.spool.durably("journal unit read", self.journal.units_read, rows)
        for unit, total, _ in reads:
            if unit.total == total:  # else read again since (it grew): a later commit finishes it
                unit.read_done = True
                self.maybe_ack(unit)

    def batch_done(self, batch: Batch) -> None:
        for unit in batch.units:
            unit.pending_batches -= 1
            if batch.failed and not unit.failed and unit.handle is not None and self.tg is not None:
                self.tg.start_soon(unit.handle.gave_up)
            unit.failed |= batch.failed
            self.maybe_ack(unit)

    def maybe_ack(self, unit: SourceUnit) -> None:
        if unit.ackable and self.tg is not None:
            unit.acked = True
            if ack_lost():
                return
            if unit.handle is not None and unit.handle.ack_many is not None:
                self._acks.add(unit, self.tg)
            else:
                self.tg.start_soon(self._ack, unit)

    async def _ack(self, unit: SourceUnit) -> None:
        assert unit.handle is not None
        try:
            result: bool | AckError | None = await unit.handle.ack()
        except AckError as exc:
            result = exc
        self._acked(unit, result)

    async def _ack_many(self, units: list[SourceUnit]) -> None:
        groups: dict[AckMany, list[SourceUnit]] = {}
        for unit in units:
            assert unit.handle is not None and unit.handle.ack_many is not None
            groups.setdefault(unit.handle.ack_many, []).append(unit)
        for ack_many, group in groups.items():
            for unit, result in zip(group, await ack_many(group), strict=True):
                self._acked(unit, result)

    def _acked(self, unit: SourceUnit, result: bool | AckError | None) -> None:
        if isinstance(result, AckError):
            log.error("could not acknowledge source unit", unit=unit.name, error=str(result))
            self._ack_errors[unit.id] = str(result)
            return
        if result is False:  # it changed after it was read: the source reads the rest, then acks again
            unit.acked = unit.read_done = False
            unit.total = None
            self.stats.units_claimed -= 1
            return
        crash_point("acked")
        assert self.tg is not None
        self._forgets.add(unit, self.tg)

    async def _forget(self, units: list[SourceUnit]) -> None:
        await self.spool.durably("forget unit", self.journal.forget_units, [u.id for u in units])
        for unit in units:
            self.by_id.pop(unit.id, None)
            self._ack_errors.pop(unit.id, None)
        self.stats.units_acked += len(units)
        metrics.UNITS_ACKED.inc(len(units))

    def unacknowledged(self) -> dict[str, str]:
        """Units not acknowledged (where → why)."""
        return {unit.path or unit.name: self._why_unacked(unit) for unit in self.by_id.values()}

    def _why_unacked(self, unit: SourceUnit) -> str:
        if unit.id in self._ack_errors:
            return f"acknowledgement failed: {self._ack_errors[unit.id]}"
        if unit.handle is not None and unit.handle.problem:
            return f"read failed: {unit.handle.problem}"
        if unit.failed:
            return "rows in an object that was not uploaded"
        if unit.handle is None:
            return "in the journal, but not opened by its source in this run"
        if not unit.read_done:
            return "not read to its end"
        if unit.pending_batches:
            return f"rows in {unit.pending_batches} batch(es) not yet uploaded"
        return "read and uploaded, but never acknowledged"


def _reopened(known: SourceUnit, unit: SourceUnit) -> SourceUnit:
    """A unit found in the journal (or opened before), opened again by its source in this run."""
    if known.fingerprint != unit.fingerprint and known.total is not None:
        # Grown since it was read to its end (a writer kept appending): read the rest.
        known.total = None
        known.read_again()
    if known.handle is not None and unit.handle is not None and known.handle is not unit.handle:
        unit.handle.go_on_from(known.handle)  # e.g. a file's read position, in this run
    known.name, known.handle, known.path = unit.name, unit.handle, unit.path
    known.origin, known.table = unit.origin, unit.table
    return known


def _counted(unit: SourceUnit) -> int | None:
    """The row count its source journals with the unit when it opens it, if it does."""
    return unit.total if unit.handle is not None and unit.handle.counted else None


def _same_file(a: str, b: str) -> bool:
    """Fingerprints are `inode:size:mtime`: the same inode is the same file, grown or not."""
    return a.split(":", 1)[0] == b.split(":", 1)[0]
