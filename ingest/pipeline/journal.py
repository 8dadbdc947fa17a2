"""The journal: a small SQLite database (WAL, synchronous=FULL) next to the spooled files.

It records what a crash must not forget:
- `units`: source units opened (a claimed file, identified by path + inode + size + mtime), and their
  row count once read to the end;
- `spans`: which row ranges of which unit each spooled batch holds (kept until the unit is
  acknowledged, so a restart never sends those rows again);
- `objects`: spooled files not yet known to be in R2, with size, SHA-256, and the key being attempted.
  A row is deleted once the object is uploaded (with Iceberg on: once its snapshot is committed).
Every change is one committed transaction, or part of a group committed at once (writes that queued
up while the previous commit ran: one fsync for all of them). Written from one thread at a time (see
Spool.durably), read by `ingest status` in other processes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path

from ingest.config import ConfigError
from ingest.durable.faults import disk_full_point, journal_delay
from ingest.layout import DEFAULT_TABLE
from ingest.sources.base import RequestRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, fingerprint TEXT NOT NULL, path TEXT, total INTEGER
);
CREATE TABLE IF NOT EXISTS spans (
    batch_id TEXT NOT NULL, unit_id TEXT NOT NULL, start INTEGER NOT NULL, stop INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_unit ON spans (unit_id);
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, batch_id TEXT, kind TEXT NOT NULL, file TEXT NOT NULL, day TEXT NOT NULL,
    records INTEGER NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    state TEXT NOT NULL, key TEXT, created REAL NOT NULL, tbl TEXT NOT NULL DEFAULT 'default', holds TEXT
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS daily (day TEXT PRIMARY KEY, dead_letters INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS problems (input TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY, hash TEXT NOT NULL, answer TEXT NOT NULL, units TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
"""


@dataclass(frozen=True)
class UnitRow:
    id: str
    name: str
    fingerprint: str
    path: str | None
    total: int | None


@dataclass(frozen=True)
class ObjectRow:
    id: str
    batch_id: str | None  # None for dead-letter files
    kind: str  # "data" | "deadletters"
    file: str  # name inside the spool directory for its kind
    day: str  # ISO date of the key's date directory
    records: int
    size: int
    sha256: str
    # "spooled" | "uploading" (a key was attempted; it may already hold the object) | "uploaded" (in
    # R2, its Iceberg commit not yet known to be done; its spooled file is gone)
    state: str
    key: str | None
    created: float
    table: str = DEFAULT_TABLE
    # The rows of each unit the object holds (JSON [[unit id, start, stop], ...]) when its batch was
    # split into several objects (one per day); None: every row of its batch.
    holds: str | None = None


@dataclass(frozen=True)
class Backlog:
    objects: int
    bytes: int
    oldest: float | None
    units: int
    uncommitted: int = 0  # in R2, waiting for their Iceberg commit


class Journal:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self._grouped = False
        if readonly:
            # Any one thread at a time (callers serialise): WAL lets it read while the writer commits.
            self.db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            require_sqlite(self.db)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(objects)")}
            if "tbl" not in columns:  # a journal from before tables
                self.db.execute("ALTER TABLE objects ADD COLUMN tbl TEXT NOT NULL DEFAULT 'default'")
            if "holds" not in columns:  # a journal from before objects said their rows
                self.db.execute("ALTER TABLE objects ADD COLUMN holds TEXT")
        # A journal read by `ingest status` may be older than this version (no `holds` yet).
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(objects)")}
        self._object_columns = (
            _OBJECT_COLUMNS if "holds" in columns else _OBJECT_COLUMNS.removesuffix(", holds")
        )

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def group(self) -> Iterator[None]:
        """Every write inside is part of one transaction, committed (one fsync) at the end or not at
        all: group commit for writes queued together (see Spool.durably)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._grouped = True
            try:
                yield
            finally:
                self._grouped = False

    def _tx(self, point: str, statements: Iterable[tuple[str, tuple[object, ...]]]) -> None:
        """One committed transaction (or part of the group's); a full disk raises
        sqlite3.OperationalError and changes nothing (the caller waits for space and calls again)."""
        disk_full_point(point)
        if self._grouped:
            for sql, args in statements:
                self.db.execute(sql, args)
            journal_delay()
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                self.db.execute(sql, args)
            journal_delay()

    # -- units -----------------------------------------------------------------------------------

    def add_unit(
        self, unit_id: str, name: str, fingerprint: str, path: str | None, total: int | None = None
    ) -> None:
        """A unit opened (`total`: its row count, when known before it is read)."""
        self.add_units([UnitRow(unit_id, name, fingerprint, path, total)])

    def add_units(self, units: list[UnitRow]) -> None:
        """Units opened, in one transaction (e.g. a bundle of small files)."""
        rows, ids = _as_json([astuple(u) for u in units]), _as_json([u.id for u in units])
        self._tx("add_unit", [(_INSERT_UNITS, (rows,)), (_DELETE_SPANS_OF, (ids,))])

    def unit_read(self, unit_id: str, total: int, fingerprint: str) -> None:
        """Read to its end: its row count, and what the file looked like then (a later change means
        rows were appended after that read)."""
        self.units_read([(unit_id, total, fingerprint)])

    def units_read(self, units: list[tuple[str, int, str]]) -> None:
        """`unit_read` for many (id, total, fingerprint), in one transaction."""
        self._tx("unit_read", [(_UNITS_READ, (_as_json(units),))])

    def forget_unit(self, unit_id: str) -> None:
        """After the unit is acknowledged: nothing about it is needed any more."""
        self.forget_units([unit_id])

    def forget_units(self, unit_ids: list[str]) -> None:
        ids = (_as_json(unit_ids),)
        self._tx("forget_unit", [(_DELETE_SPANS_OF, ids), ("DELETE FROM units WHERE id IN " + _IDS, ids)])

    def accept(self, units: list[UnitRow], requests: list[RequestRow]) -> None:
        """Units a source wrote down itself (HTTP blocks, rows known), and the request's answer for
        its Idempotency-Key, in one transaction: either a retry finds both, or neither was answered."""
        self._tx(
            "accept",
            [
                (_INSERT_UNITS, (_as_json([astuple(u) for u in units]),)),  # (UnitRow: column order)
                *(("INSERT OR REPLACE INTO requests VALUES (?,?,?,?,?)", astuple(r)) for r in requests),
            ],
        )

    def request(self, key: str) -> RequestRow | None:
        row = self.db.execute(
            "SELECT key, hash, answer, units, created FROM requests WHERE key = ?", (key,)
        ).fetchone()
        return RequestRow(*row) if row else None

    def prune_requests(self, before: float) -> None:
        """Forget Idempotency-Key answers older than the window."""
        self._tx("prune_requests", [("DELETE FROM requests WHERE created < ?", (before,))])

    def units(self) -> list[UnitRow]:
        rows = self.db.execute("SELECT id, name, fingerprint, path, total FROM units").fetchall()
        return [UnitRow(*r) for r in rows]

    def spans(self) -> list[tuple[str, str, int, int]]:
        """(batch_id, unit_id, start, stop) for every journaled batch."""
        return list(self.db.execute("SELECT batch_id, unit_id, start, stop FROM spans ORDER BY start"))

    # -- batches and objects -----------------------------------------------------------------------

    def spooled(
        self,
        batch_id: str,
        spans: list[tuple[str, int, int]],
        objects: list[ObjectRow],
        schema: str | None = None,
        table: str = DEFAULT_TABLE,
    ) -> None:
        """A batch is in the spool: its files (fsynced), the rows they hold and (when it widened) the
        table's schema they were written with, in one transaction."""
        self._tx(
            "spooled",
            [
                (_INSERT_SPANS, (batch_id, _as_json(spans))),  # (a batch of small files: 10,000 spans)
                *((_INSERT_OBJECT, _object_values(o)) for o in objects),
                *(
                    [("INSERT OR REPLACE INTO meta VALUES (?, ?)", (schema_key(table), schema))]
                    if schema
                    else []
                ),
            ],
        )

    def add_object(self, obj: ObjectRow, dead_letters: int = 0) -> None:
        """A file to upload; for a sealed dead-letter file, its letters are counted for its day in the
        same transaction (so a retry neither loses nor doubles the count)."""
        count = (
            "INSERT INTO daily VALUES (?, ?) ON CONFLICT(day) "
            "DO UPDATE SET dead_letters = dead_letters + excluded.dead_letters",
            (obj.day, dead_letters),
        )
        self._tx("add_object", [(_INSERT_OBJECT, _object_values(obj)), *([count] if dead_letters else [])])

    def attempting(self, object_id: str, key: str) -> None:
        self._tx("attempting", [("UPDATE objects SET state='uploading', key=? WHERE id=?", (key, object_id))])

    def uploaded(self, object_id: str, key: str, commit: bool = False) -> None:
        """In R2 at `key`. `commit`: it still has to be committed to its Iceberg table, so its row is
        kept (state `uploaded`) until `committed`."""
        now = str(time.time())
        done = (
            ("UPDATE objects SET state='uploaded', key=? WHERE id=?", (key, object_id))
            if commit
            else ("DELETE FROM objects WHERE id = ?", (object_id,))
        )
        self._tx(
            "uploaded",
            [
                done,
                ("INSERT OR REPLACE INTO meta VALUES ('last_upload_at', ?)", (now,)),
                ("INSERT OR REPLACE INTO meta VALUES ('last_upload_key', ?)", (key,)),
            ],
        )

    def committed(self, object_ids: list[str]) -> None:
        """In a committed Iceberg snapshot: nothing about these objects is needed any more."""
        self._tx("committed", [("DELETE FROM objects WHERE id = ?", (i,)) for i in object_ids])

    def drop_batch(self, batch_id: str) -> None:
        """Forget a batch whose spooled file is damaged: its rows will be read from the source again."""
        self._tx(
            "drop_batch",
            [
                ("DELETE FROM spans WHERE batch_id = ?", (batch_id,)),
                ("DELETE FROM objects WHERE batch_id = ?", (batch_id,)),
            ],
        )

    def drop_object(self, object_id: str) -> None:
        self._tx("drop_object", [("DELETE FROM objects WHERE id = ?", (object_id,))])

    def objects(self) -> list[ObjectRow]:
        rows = self.db.execute(f"SELECT {self._object_columns} FROM objects ORDER BY created").fetchall()
        return [ObjectRow(*r) for r in rows]

    # -- dead letters and status ---------------------------------------------------------------------

    def dead_letters_on(self, day: str) -> int:
        row = self.db.execute("SELECT dead_letters FROM daily WHERE day = ?", (day,)).fetchone()
        return int(row[0]) if row else 0

    def set_problems(self, problems: dict[str, str]) -> None:
        """Input that could not be read right now (path → reason), for `ingest status`."""
        known = dict(self.db.execute("SELECT input, since FROM problems").fetchall())
        now = time.time()
        self._tx(
            "set_problems",
            [
                ("DELETE FROM problems", ()),
                *(
                    ("INSERT INTO problems VALUES (?,?,?)", (where, why, known.get(where, now)))
                    for where, why in problems.items()
                ),
            ],
        )

    def problems(self) -> list[tuple[str, str, float]]:
        try:
            rows = self.db.execute("SELECT input, reason, since FROM problems ORDER BY input").fetchall()
        except sqlite3.OperationalError:  # a journal written before this table existed
            return []
        return [(str(a), str(b), float(c)) for a, b, c in rows]

    def schemas(self) -> dict[str, str]:
        """Every table's learned schema (table → blob)."""
        rows = self.db.execute("SELECT name, value FROM meta WHERE name = 'schema' OR name LIKE 'schema:%'")
        return {(n.partition(":")[2] or DEFAULT_TABLE): str(v) for n, v in rows}

    def meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def backlog(self) -> Backlog:
        n, size, oldest = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM objects WHERE state != 'uploaded'"
        ).fetchone()
        (units,) = self.db.execute("SELECT COUNT(*) FROM units").fetchone()
        (uncommitted,) = self.db.execute("SELECT COUNT(*) FROM objects WHERE state = 'uploaded'").fetchone()
        return Backlog(int(n), int(size), oldest, int(units), int(uncommitted))


def schema_key(table: str) -> str:
    """The meta row holding a table's learned schema (`schema` for the default table, as before
    tables existed)."""
    return "schema" if table == DEFAULT_TABLE else f"schema:{table}"


# Many units in one statement, their values as one JSON array: a statement a unit (two, with the
# spans) cost a bundle of 256 small files 13 ms in the worker, most of it this thread waiting for the
# GIL after each statement (measured); one statement waits once.
# (json_extract, not ->>, and an upsert, not UPDATE … FROM: SQLite 3.24 and later, not only 3.38.)
_IDS = "(SELECT value FROM json_each(?))"
_INSERT_UNITS = (
    "INSERT OR REPLACE INTO units (id, name, fingerprint, path, total) SELECT json_extract(value, '$[0]'),"
    " json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'),"
    " json_extract(value, '$[4]') FROM json_each(?) ORDER BY key"
)
_INSERT_SPANS = (
    "INSERT INTO spans (batch_id, unit_id, start, stop) SELECT ?, json_extract(value, '$[0]'),"
    " json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?) ORDER BY key"
)
_DELETE_SPANS_OF = "DELETE FROM spans WHERE unit_id IN " + _IDS
_UNITS_READ = (  # only units still there (an upsert of each with its own name and path)
    "INSERT INTO units (id, name, fingerprint, path, total) SELECT u.id, u.name,"
    " json_extract(r.value, '$[2]'), u.path, json_extract(r.value, '$[1]') FROM json_each(?) AS r"
    " JOIN units AS u ON u.id = json_extract(r.value, '$[0]') WHERE true ORDER BY r.key"
    " ON CONFLICT (id) DO UPDATE SET total = excluded.total, fingerprint = excluded.fingerprint"
)


def require_sqlite(db: sqlite3.Connection, version: tuple[int, ...] = sqlite3.sqlite_version_info) -> None:
    """The journal's statements need SQLite 3.24 (upserts) and its JSON functions: checked once at
    start, so that an old or stripped-down SQLite is one clear line, not "no such function" at the
    first batch."""
    shown = ".".join(map(str, version))
    try:
        db.execute("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')").fetchall()
        works = version >= (3, 24)
    except sqlite3.Error:
        works = False
    if not works:
        raise ConfigError(
            f"the journal needs SQLite 3.24 or later with its JSON functions; this Python's sqlite3 "
            f"module uses SQLite {shown} without them: run the worker with a Python built against a "
            "newer SQLite (Debian 10, Ubuntu 20.04 and later have one), or the Docker image"
        )


_OBJECT_COLUMNS = "id, batch_id, kind, file, day, records, size, sha256, state, key, created, tbl, holds"
_INSERT_OBJECT = f"INSERT OR REPLACE INTO objects ({_OBJECT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"


def _as_json(values: object) -> str:
    """Values for a json_each(?) parameter. Not ASCII-escaped: a str that SQLite could not take
    (a lone surrogate) fails here as it fails as a plain parameter, never stored changed."""
    return json.dumps(values, ensure_ascii=False)


def _object_values(o: ObjectRow) -> tuple[object, ...]:
    return astuple(o)  # ObjectRow's fields are in _OBJECT_COLUMNS order
