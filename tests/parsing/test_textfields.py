"""Timestamps inside objects and lists get the rules top-level ones get, by either parse: pyarrow's
reader (with the fields read as text) and the per-line parse give the same table."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pytest

from ingest.parsing import textfields
from ingest.parsing.jsonlines import _parse, parse_lines, table_from_records
from ingest.parsing.textfields import TextFields, inferred_stamps, sampled_stamps, text_schema
from ingest.parsing.types import unify

ZONED = pa.timestamp("ms", "UTC")


def _row(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "d": {"n": i, "at": "2024-08-02T12:00:00+02:00", "day": "2024-08-02", "local": "2024-08-02T10:00:00"},
        "stamps": ["2024-08-02T10:00:00Z", None],
        "events": [{"kind": "x", "at": "2024-08-02T10:00:00.5Z"}, None],
        "deep": {"a": [{"b": {"c": "2024-08-02T10:00Z"}}]},
        "mixed": {"t": "2024-08-02T10:00:00Z" if i % 2 else "2024-08-02T10:00:00"},
        "plain": {"os": "ios", "tags": ["a", "2024"]},
    }


def _block(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _slow(rows: list[dict[str, Any]]) -> pa.Table:
    table, bad = table_from_records(rows)
    assert bad == {}
    return table


@pytest.mark.parametrize("count", [3, 600], ids=["small", "sampled"])  # 600 lines: ≥ 64 KiB, sampled
def test_nested_timestamps_are_typed_as_at_the_top_level_by_either_parse(count: int) -> None:
    rows = [_row(i) for i in range(count)] + [{"id": count, "d": None, "stamps": None, "events": []}]
    block = _block(rows)
    assert (len(block) >= 64 << 10) == (count == 600)
    fast = _parse(block, set())
    assert fast is not None
    assert fast.schema.field("d").type == pa.struct(
        [("n", pa.int64()), ("at", ZONED), ("day", pa.date32()), ("local", pa.timestamp("ms"))]
    )
    assert fast.schema.field("stamps").type == pa.list_(ZONED)
    assert fast.schema.field("events").type == pa.list_(pa.struct([("kind", pa.string()), ("at", ZONED)]))
    assert fast.schema.field("deep").type == pa.struct(
        [("a", pa.list_(pa.struct([("b", pa.struct([("c", ZONED)]))])))]
    )
    assert fast.schema.field("mixed").type == pa.struct([("t", pa.string())])  # zoned and naive: text
    assert fast.schema.field("plain").type == pa.struct(
        [("os", pa.string()), ("tags", pa.list_(pa.string()))]
    )
    first = fast.slice(0, 1).to_pylist()[0]
    at = datetime(2024, 8, 2, 10, tzinfo=UTC)
    assert first["d"] == {"n": 0, "at": at, "day": date(2024, 8, 2), "local": datetime(2024, 8, 2, 10)}
    assert first["stamps"] == [at, None]
    assert first["events"] == [{"kind": "x", "at": at.replace(microsecond=500_000)}, None]
    assert first["deep"] == {"a": [{"b": {"c": at}}]}
    assert fast.slice(count).to_pylist()[0]["d"] is None
    assert fast.equals(_slow(rows)), (fast.schema, _slow(rows).schema)


def test_an_object_keeps_its_fields_in_the_inputs_order() -> None:
    rows = [{"d": {"z": 1, "at": "2024-08-02T10:00:00Z", "a": "x"}, "id": 1}]
    table = _parse(_block(rows), set())
    assert table is not None
    assert table.column_names == ["d", "id"]
    assert [f.name for f in table.schema.field("d").type] == ["z", "at", "a"]
    assert table.schema.field("d").type.field("at").type == ZONED


def test_a_nested_time_learned_earlier_and_absent_now_does_not_turn_the_field_to_text() -> None:
    """A file's later block whose objects lack the learned time field: the field is left out of its
    table (not an all-null text field), so the batch's type keeps the time of the earlier block."""
    learned: TextFields = set()
    before = _parse(_block([{"d": {"n": 1, "at": "2024-08-02T10:00:00Z"}}]), learned)
    assert learned == {("d", "at")} and before is not None
    after = _parse(_block([{"d": {"n": i}} for i in range(5)]), learned)
    assert after is not None
    assert after.schema.field("d").type == pa.struct([("n", pa.int64())])
    merged = unify({before.schema.field("d").type: 1, after.schema.field("d").type: 5})
    assert merged == pa.struct([("n", pa.int64()), ("at", ZONED)])


def test_a_field_that_is_a_time_in_one_line_and_an_object_in_another_is_kept_exactly() -> None:
    stamp = "2024-08-02T10:00:00Z"
    rows: list[dict[str, Any]] = [{"v": stamp}, {"v": {"at": stamp}}, {"v": stamp}]
    with pytest.raises(pa.ArrowInvalid):  # pyarrow refuses the block: the per-line parse takes it
        _parse(_block(rows), set())
    [(table, first, _)], dead = parse_lines(_block(rows), "s")
    assert dead == [] and first == 1
    assert table.column("v").to_pylist() == [stamp, '{"at":"2024-08-02T10:00:00Z"}', stamp]  # most are text


def test_paths_found_in_sampled_lines_and_in_an_inferred_schema() -> None:
    value = {
        "at": "2024-08-02",
        "d": {"x": "2024-08-02T10:00Z", "y": "no"},
        "l": [[{"t": "2024-08-02 10:00"}]],
    }
    assert sampled_stamps([(value, 0)]) == {("at",), ("d", "x"), ("l", None, None, "t")}
    schema = pa.schema(
        [
            ("at", pa.timestamp("s")),
            ("d", pa.struct([("x", pa.timestamp("s")), ("y", pa.string())])),
            ("l", pa.list_(pa.list_(pa.struct([("t", pa.timestamp("s"))])))),
        ]
    )
    assert inferred_stamps(schema) == {("at",), ("d", "x"), ("l", None, None, "t")}
    assert text_schema({("at",), ("d", "x"), ("l", None, None, "t")}) == pa.schema(
        [
            ("at", pa.string()),
            ("d", pa.struct([("x", pa.string())])),
            ("l", pa.list_(pa.list_(pa.struct([("t", pa.string())])))),
        ]
    )


@pytest.mark.parametrize(
    ("learned", "line"),
    [
        ({("d", "at")}, {"id": 1, "d": "just text"}),  # an object's time before, text here
        ({("ts",)}, {"id": 1, "ts": {"at": "2024-08-02T10:00:00Z"}}),  # a time before, an object here
    ],
)
def test_fields_learned_from_earlier_blocks_that_do_not_fit_this_one_do_not_send_it_line_by_line(
    learned: TextFields, line: dict[str, Any]
) -> None:
    """Such a block used to be refused by pyarrow with the learned schema, then parsed line by line
    (the same rows, at many times the cost): it is read with its own fields instead."""
    block = _block([line] * 3)
    known = set(learned)
    table = _parse(block, known)
    assert table is not None and table.equals(_parse(block, set()))
    assert known == learned  # what the source learned stays as it was


def test_an_object_with_20000_learned_time_fields_is_gone_over_once_per_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Learned nested fields absent from a block are found in one pass over each level: a pass per
    field (each flattening the whole object) took minutes for an object of 20,000 time fields."""
    learned: TextFields = {("d", f"k{i}") for i in range(20_000)}
    passes: list[int] = []
    real = textfields._with_values
    monkeypatch.setattr(textfields, "_with_values", lambda *args: passes.append(1) or real(*args))
    table = _parse(_block([{"id": i, "d": {"n": i}} for i in range(3)]), learned)
    assert table is not None and table.schema.field("d").type == pa.struct([("n", pa.int64())])
    assert table.column("d").to_pylist() == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert len(passes) == table.column("d").num_chunks  # one level, one pass per chunk
