"""What every source hands the pipeline: chunks of Arrow rows tied to a unit that is acknowledged later.

A *unit* is what a source can acknowledge as a whole (a claimed file, a stream offset range). The
pipeline acknowledges it only once every row read from it is inside an uploaded object, and once the
source has said it read the unit to its end.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio
import pyarrow as pa
from anyio.streams.memory import MemoryObjectSendStream

from ingest.layout import DEFAULT_TABLE


class AckError(Exception):
    """A unit's acknowledgement (delete, move, remote delete) failed; the unit is acknowledged again
    at the next start, so nothing is lost, but it stays where it is until then."""


class SourceError(Exception):
    """A source cannot go on (its input is gone, or cannot be taken as configured): one line saying
    what happened and what to do; the run ends with exit 1, nothing it took is lost."""


# Ids of units that cannot be read again (standard input): after a crash, their spooled rows are
# uploaded and the unit is then acknowledged; nothing can re-read the rest.
UNREPEATABLE = "once:"

Ack = Callable[[], Awaitable[bool | None]]  # False: not acknowledged (the unit changed; read again)
# Acknowledges many units of one source at once: per unit what `ack` returns, or the AckError it raises.
AckMany = Callable[[list["SourceUnit"]], Awaitable[list[bool | AckError | None]]]
Ranges = list[tuple[int, int]]  # sorted, non-overlapping [start, stop) row ranges


@dataclass(frozen=True)
class RequestRow:
    """An answered request that carried an Idempotency-Key: a retry gets `answer` again (HTTP source)."""

    key: str
    hash: str  # of what was sent: the same key with another body is refused
    answer: str  # the JSON body of the first answer
    units: str  # space-separated ids of the units (blocks) holding its records
    created: float


class Gather(Protocol):
    async def before_upload(self, key: str, object_id: str, spans: list[tuple[SourceUnit, Ranges]]) -> None:
        """Called before each PUT of an object, with the rows of every unit of this source it holds."""
        ...


@dataclass(eq=False)
class UnitHandle:
    """How the pipeline reaches a unit's source, and where that source keeps its own state of the
    unit (a file's read position, a read's entry ids): a source subclasses it; the pipeline calls
    only what is here."""

    ack: Ack  # runs once every row of the unit is in R2
    ack_many: AckMany | None = None  # acknowledges many units of one source in one go (small files)
    # The source journaled the unit's row count when it opened it (HTTP blocks, Redis reads): the
    # pipeline does not journal it again once the unit is read.
    counted: bool = False
    problem: str | None = None  # the last read failed: never acknowledged; read again later
    # Records every unit of an object before its PUT in one go (the queue ledger: one record per
    # object, not one per unit); used instead of `before_upload` when set.
    gather: Gather | None = None

    async def gave_up(self) -> None:
        """Rows of the unit are in an object that could not be uploaded (refused, or retries ran
        out): it stays unacknowledged; a source whose input can be delivered again hands it back."""

    def expired(self) -> bool:
        """The unit's input was handed back to its source (a queue lease ran out): an object holding
        only such rows is not uploaded but dropped, since the input will be delivered again."""
        return False

    async def before_upload(self, key: str, object_id: str, rows: Ranges) -> None:
        """Called before each PUT of an object holding these rows of the unit (the Redis ledger)."""

    def raw_lines(self, lines: list[int]) -> dict[int, bytes]:
        """Line number → its raw text, for dead letters of rows that failed after parsing."""
        return {}

    def read_fingerprint(self) -> str | None:
        """What the unit looked like when its last byte was read, if the source knows (a file)."""
        return None

    def read_again(self) -> None:
        """The next read starts at the top (see SourceUnit.read_again)."""

    def go_on_from(self, earlier: UnitHandle) -> None:
        """The unit is opened again in the run that read part of it: take over where that read is."""


@dataclass(eq=False)
class SourceUnit:
    """One acknowledgeable piece of input; `name` appears in logs and dead letters.

    Rows are numbered in the order the source reads them (deterministic for a given file), so after a
    crash the rows already in spooled or uploaded batches (`skip`, from the journal) are not sent again.
    """

    name: str
    handle: UnitHandle | None = None  # None until a source has opened the unit in this run
    id: str = ""  # journal identity, stable across restarts
    fingerprint: str = ""  # what the unit looked like when first opened (e.g. inode:size:mtime)
    path: str | None = None  # the local file holding it, if any (gone = acknowledged)
    origin: str = ""  # the configured source it came from (its `name`), for metrics
    table: str = DEFAULT_TABLE  # every row of a unit goes to one table
    skip: Ranges = field(default_factory=list)
    total: int | None = None  # rows in the unit, once read to its end
    next_row: int = 0
    pending_batches: int = 0  # open or in-flight batches holding rows of this unit
    read_done: bool = False
    failed: bool = False  # a batch holding its rows could not be uploaded: never ack
    acked: bool = False

    def read_again(self) -> None:
        """Read from the top next time, skipping every row already taken (parsing is deterministic):
        for input that cannot continue from a byte offset, or after a read that failed midway."""
        if self.next_row:
            self.skip = merge_ranges([*self.skip, (0, self.next_row)])
        self.next_row = 0
        if self.handle is not None:
            self.handle.read_again()

    @property
    def ackable(self) -> bool:
        return (
            self.handle is not None
            and self.read_done
            and self.pending_batches == 0
            and not self.failed
            and not self.acked
        )

    @property
    def fully_covered(self) -> bool:
        """Every row is already in a spooled or uploaded batch: nothing to read again."""
        return self.total is not None and _covered(self.skip, 0, self.total) == self.total

    def chunks(
        self, table: pa.Table, first_line: int, lines: list[int] | None, nbytes: int = -1
    ) -> list[Chunk]:
        """The next rows read from this unit, minus those already in journaled batches (`nbytes`:
        the table's Arrow bytes, if measured already)."""
        start, n = self.next_row, table.num_rows
        self.next_row += n
        whole = Chunk(table, self, first_line, lines, row0=start, nbytes=nbytes)
        if not self.skip or _covered(self.skip, start, start + n) == 0:
            return [whole] if n else []
        out: list[Chunk] = []
        pos, stop = start, start + n
        for a, b in [*self.skip, (stop, stop)]:
            a, b = min(max(a, start), stop), min(max(b, start), stop)
            if a > pos:
                out.append(whole.slice(pos - start, a - pos))
            pos = max(pos, b)
        return out


def merge_ranges(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _covered(ranges: Ranges, start: int, stop: int) -> int:
    return sum(max(0, min(b, stop) - max(a, start)) for a, b in ranges)


@dataclass(eq=False)
class Chunk:
    """Rows read from one unit. `first_line` numbers the first row (1-based) for dead letters."""

    table: pa.Table
    unit: SourceUnit
    first_line: int = 1
    lines: list[int] | None = None  # explicit line per row when rows are not consecutive
    row0: int = 0  # the unit's row number of the first row (see SourceUnit)
    # The rows' Arrow bytes if measured where they were made (-1: the batcher measures them). Small
    # files parsed together are slices of one table, measured once for all of them: pyarrow's
    # measure lets go of the GIL, and once a file it held up the batcher on the event loop.
    nbytes: int = -1

    def line_of(self, row: int) -> int:
        return self.lines[row] if self.lines is not None else self.first_line + row

    def slice(self, offset: int, length: int | None = None) -> Chunk:
        table = self.table.slice(offset, length)
        row0 = self.row0 + offset
        share = -1 if self.nbytes < 0 else self.nbytes * table.num_rows // max(1, self.table.num_rows)
        if self.lines is not None:
            end = len(self.lines) if length is None else offset + length
            return Chunk(table, self.unit, lines=self.lines[offset:end], row0=row0, nbytes=share)
        return Chunk(table, self.unit, first_line=self.first_line + offset, row0=row0, nbytes=share)


@dataclass(eq=False)
class UnitRead:
    """Sent after the last chunk of a unit: nothing more will come from it (unless `unit.handle.problem`
    is set: then the read failed and the unit must not be acknowledged)."""

    unit: SourceUnit


# A bundle: the chunks and ends of many small files, sent at once (one send, not two per file).
Item = Chunk | UnitRead | list[Chunk | UnitRead]


class Units(Protocol):
    """What the pipeline offers sources: unit bookkeeping across restarts, and backpressure."""

    async def open_unit(self, unit: SourceUnit) -> SourceUnit:
        """Register a unit before reading it; returns the unit to read into (skip ranges filled in)."""
        ...

    async def open_units(self, units: list[SourceUnit]) -> list[SourceUnit]:
        """`open_unit` for many (one journal commit), in order."""
        ...

    async def wait_for_room(self) -> None:
        """Return when the spool is below its high-water mark (sources take no new input until then)."""
        ...

    def room(self) -> float:
        """Bytes the spool takes before intake pauses (math.inf: no bound): a source taking input in
        bulk takes no more than this at once, so the pause holds near the mark too."""
        ...

    def known_units(self, prefix: str) -> list[SourceUnit]:
        """Units found in the journal at start whose id starts with `prefix` (see Pipeline)."""
        ...

    def resumed(self, prefix: str) -> None:
        """A source whose class sets `resumes_first = prefix` says it has opened again the journaled
        units it could (or has ended): until then, the objects recovered with them wait."""
        ...

    async def in_r2(self, key: str, object_id: str) -> bool:
        """Whether `key` holds the object with this id (a HEAD and its batch-id metadata)."""
        ...

    def source_problem(self, kind: str, reason: str | None) -> None:
        """A source cannot reach its input (`reason`), or can again (None): readiness says so."""
        ...

    def intake_blocked(self) -> str | None:
        """Why new input must wait now (spool over its high-water mark, disk full), or None."""
        ...

    async def note(self, unit: SourceUnit) -> None:
        """Journal what the source now says of a unit it opened (its fingerprint): e.g. a queue unit
        whose leases were handed back, so that the next start knows."""
        ...

    async def accept(self, units: list[SourceUnit], requests: list[RequestRow]) -> None:
        """Journal units whose rows the source keeps itself (row counts known), with request answers,
        in one transaction (HTTP blocks; see sources/http/source.py)."""
        ...

    async def request(self, key: str) -> RequestRow | None:
        """The answer journaled for an Idempotency-Key, if any (read without blocking the loop)."""
        ...

    async def forget_requests(self, before: float) -> None:
        """Drop Idempotency-Key answers older than `before` (Unix time)."""
        ...

    def disk_full(self, reason: str) -> None:
        """A source's own spool write (e.g. a landing copy) waits for disk space: readiness says so."""
        ...

    def disk_room(self) -> None:
        """That write went through."""
        ...


class FreshUnits:
    """Units with no journal behind them: every unit is read whole, never any backpressure."""

    async def open_unit(self, unit: SourceUnit) -> SourceUnit:
        return unit

    async def open_units(self, units: list[SourceUnit]) -> list[SourceUnit]:
        return units

    async def wait_for_room(self) -> None:
        return None

    def room(self) -> float:
        return math.inf

    def known_units(self, prefix: str) -> list[SourceUnit]:
        return []

    def resumed(self, prefix: str) -> None:
        return None

    async def in_r2(self, key: str, object_id: str) -> bool:
        return False

    def source_problem(self, kind: str, reason: str | None) -> None:
        return None

    def intake_blocked(self) -> str | None:
        return None

    async def note(self, unit: SourceUnit) -> None:
        return None

    async def accept(self, units: list[SourceUnit], requests: list[RequestRow]) -> None:
        return None

    async def request(self, key: str) -> RequestRow | None:
        return None

    async def forget_requests(self, before: float) -> None:
        return None

    def disk_full(self, reason: str) -> None:
        return None

    def disk_room(self) -> None:
        return None


@runtime_checkable
class Starting(Protocol):
    """A source that needs time before it takes input (the HTTP source reads accepted requests
    again first): the worker is not ready, for probes and systemd, until `taking` is set."""

    taking: anyio.Event


class Source(Protocol):
    """A source runs until its input is exhausted (`once`) or it is cancelled (daemon)."""

    name: str

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None: ...

    def stop(self) -> None:
        """Take nothing new; finish the units already taken (so none is left half-read), then return."""
        ...

    def pending(self) -> list[str]:
        """Where unacknowledged input is kept, for the end-of-run report."""
        ...

    def problems(self) -> dict[str, str]:
        """Input this source could not take (path or name → reason), for the report and status."""
        ...
