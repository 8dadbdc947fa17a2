"""The journal's many-row writes (one statement each, their values as JSON): what goes in comes out."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ingest.config import ConfigError
from ingest.pipeline.journal import Journal, UnitRow, require_sqlite

AWKWARD = [
    'quote " and backslash \\ and newline \n and tab \t',
    "ünïcødé 日本語 🙂",
    "123",  # text that looks like a number stays text
    "[1, 2]",  # and like JSON
    "x" * 5000,
    "",
]


def units_of(journal: Journal) -> dict[str, UnitRow]:
    return {u.id: u for u in journal.units()}


def test_many_units_and_spans_round_trip_exactly(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    rows = [
        UnitRow(
            f"file:{i}:{text}",
            text,
            f"fp-{text}",
            None if i % 2 else f"/in/{text}",
            [None, 2**53 + 1, 0][i % 3],
        )
        for i, text in enumerate(AWKWARD * 50)
    ]
    journal.add_units(rows)
    assert units_of(journal) == {r.id: r for r in rows}
    stored = journal.db.execute("SELECT DISTINCT typeof(fingerprint), typeof(name) FROM units").fetchall()
    assert stored == [("text", "text")]

    spans = [(r.id, 2**40 + i, 2**40 + i + 10) for i, r in enumerate(rows)]
    journal.spooled("batch-1", spans, [])
    assert sorted(journal.spans()) == sorted(("batch-1", u, a, b) for u, a, b in spans)

    read = [(r.id, 2**53 + 3, "after:" + r.fingerprint) for r in rows[:100]]
    journal.units_read(read)
    after = units_of(journal)
    for unit_id, total, fp in read:
        assert (after[unit_id].total, after[unit_id].fingerprint) == (total, fp)
        assert after[unit_id].name == units_of(journal)[unit_id].name
    assert all(after[r.id] == r for r in rows[100:])

    # Opening a unit again starts it over: its spans go; other units' stay.
    journal.add_units(rows[:10])
    assert {s[1] for s in journal.spans()} == {r.id for r in rows[10:]}

    journal.forget_units([r.id for r in rows[:200]])
    assert set(units_of(journal)) == {r.id for r in rows[200:]}
    assert {s[1] for s in journal.spans()} == {r.id for r in rows[200:]}
    journal.close()


def test_a_unit_read_after_it_was_forgotten_is_not_written_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    journal.add_units(
        [UnitRow("a", "a.jsonl", "fp", "/in/a.jsonl", None), UnitRow("b", "b", "fp", None, None)]
    )
    journal.forget_units(["a"])
    journal.units_read([("a", 10, "fp2"), ("b", 5, "fp3")])
    assert units_of(journal) == {"b": UnitRow("b", "b", "fp3", None, 5)}
    journal.close()


def test_the_same_unit_twice_in_one_call_keeps_the_last_as_one_row_each_does(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    journal.add_units([UnitRow("a", "first", "fp1", None, None), UnitRow("a", "second", "fp2", None, 7)])
    assert journal.units() == [UnitRow("a", "second", "fp2", None, 7)]
    journal.close()


def test_a_name_sqlite_cannot_store_fails_and_nothing_of_the_call_is_written(tmp_path: Path) -> None:
    """A lone surrogate (bytes that are not UTF-8, decoded with surrogateescape) is refused as it is
    as a plain parameter: never stored changed (e.g. as U+FFFD) under another name."""
    journal = Journal(tmp_path / "journal.db")
    bad = b"caf\xe9.jsonl".decode("utf-8", "surrogateescape")
    with pytest.raises(UnicodeEncodeError):
        journal.add_units([UnitRow("ok", "ok", "fp", None, None), UnitRow(bad, bad, "fp", bad, None)])
    with pytest.raises(UnicodeEncodeError):
        sqlite3.connect(":memory:").execute("SELECT ?", (bad,))
    assert journal.units() == []
    journal.close()


def test_an_sqlite_without_json_functions_or_too_old_is_one_clear_config_error(tmp_path: Path) -> None:
    """An SQLite built without its JSON functions (here: a real one whose authorizer refuses them,
    which fails the same statement the same way) or older than 3.24 stops the worker at start, with
    the version and the fix, not at the first batch."""
    db = sqlite3.connect(tmp_path / "j.db")
    require_sqlite(db)  # this machine's SQLite has them

    def no_json(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
        refused = action == sqlite3.SQLITE_FUNCTION and (arg2 or "").startswith("json")
        return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

    db.set_authorizer(no_json)
    with pytest.raises(
        ConfigError, match=r"needs SQLite 3\.24 or later with its JSON functions.*SQLite 3\.4"
    ):
        require_sqlite(db, (3, 45, 1))
    db.set_authorizer(None)
    with pytest.raises(ConfigError, match=r"uses SQLite 3\.23\.1 without them"):
        require_sqlite(db, (3, 23, 1))
    db.close()
    journal = Journal(tmp_path / "journal.db")  # the journal checks it as it opens: here, it opens
    journal.close()
