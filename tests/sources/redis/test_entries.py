"""A read's entries (ids and fields) and the block of JSON lines made of them."""

from __future__ import annotations

import json

from ingest.sources.redis.entries import Entries, entry_line


def _reply(*entries: tuple[bytes, list[bytes] | None]) -> list[list[object]]:
    return [[i, f] for i, f in entries]


def test_a_reply_becomes_ids_and_fields_without_the_entries_deleted_since() -> None:
    reply = _reply(
        (b"1-0", [b"data", b'{"a": 1}']),
        (b"2-0", None),  # deleted from the stream since it was delivered: no fields
        (b"3-0", [b"data", b'{"a": 3}']),
    )
    entries = Entries.from_reply(reply)
    assert entries.ids == ["1-0", "3-0"]
    assert entries.fields == [[b"data", b'{"a": 1}'], [b"data", b'{"a": 3}']]
    assert list(entries) == [("1-0", [b"data", b'{"a": 1}']), ("3-0", [b"data", b'{"a": 3}'])]
    assert Entries.from_reply(None).ids == [] and not Entries.from_reply([])


def test_the_usual_entries_are_their_values_one_line_each() -> None:
    entries = Entries.from_reply(_reply((b"1-0", [b"data", b'{"a": 1}']), (b"2-0", [b"data", b'{"a": 2}'])))
    assert entries.lines(b"data") == b'{"a": 1}\n{"a": 2}\n'


def test_any_other_entry_takes_the_careful_way_and_the_lines_stay_one_per_entry() -> None:
    """A value with line breaks (pretty-printed), an entry without `field` (its fields as text), a
    carriage return in a malformed value, the field not first: each is one line, as `entry_line` says,
    and the block has exactly one line per entry."""
    fields = [
        [b"data", b'{\n  "a": 1\n}'],
        [b"user", b"u1", b"n", b"5"],
        [b"data", b"{broken\r"],
        [b"other", b"x", b"data", b'{"b": 2}'],
        [b"data", b'{"c": 3}'],
    ]
    entries = Entries([f"{n}-0" for n in range(len(fields))], fields)
    block = entries.lines(b"data")
    lines = block.split(b"\n")
    assert lines.pop() == b"" and len(lines) == len(fields)
    assert lines == [entry_line(f, b"data") for f in fields]
    assert json.loads(lines[0]) == {"a": 1}
    assert json.loads(lines[1]) == {"user": "u1", "n": "5"}
    assert b"\r" not in block and lines[2] == b"{broken "
    assert json.loads(lines[3]) == {"b": 2}


def test_without_keeps_the_order_of_what_is_left() -> None:
    entries = Entries(["1-0", "2-0", "3-0"], [[b"data", b"1"], [b"data", b"2"], [b"data", b"3"]])
    rest = entries.without({"2-0"})
    assert rest.ids == ["1-0", "3-0"] and rest.fields == [[b"data", b"1"], [b"data", b"3"]]
    assert len(rest) == 2
