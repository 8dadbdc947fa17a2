from __future__ import annotations

import json
import time

import pyarrow as pa

from ingest.parsing import width
from ingest.parsing.jsonlines import parse_lines
from ingest.parsing.width import EXTRA, extra_column, fold, sparse_wide


def _lines(rows: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_sparse_wide_tells_a_key_per_line_from_records_sharing_their_keys() -> None:
    assert sparse_wide(_lines([{"id": i, f"k{i}": i} for i in range(20_000)]))
    assert not sparse_wide(_lines([{"id": i, "a": i, "b": "x" * 30} for i in range(20_000)]))
    assert not sparse_wide(_lines([{"id": i, f"k{i % 20}": i} for i in range(20_000)]))  # 20 columns
    assert not sparse_wide(_lines([{"id": i, f"k{i}": i} for i in range(100)]))  # small: cheap anyway


def test_fold_keeps_the_first_names_and_the_rest_as_json_text() -> None:
    width.set_max_columns(3)
    try:
        records = [{"a": 1, "b": 2}, {"c": 3, "d": None}, {"a": 4, "e": [5]}]
        names = dict.fromkeys(["a", "b", "c", "d", "e"])
        kept, extra = fold(records, names)
        assert kept == ["a", "b"]
        assert extra == [None, '{"c": 3}', '{"e": [5]}']
    finally:
        width.set_max_columns(width.DEFAULT_MAX_COLUMNS)


def test_a_key_per_line_is_parsed_in_linear_time_within_the_column_limit() -> None:
    width.set_max_columns(50)
    try:
        seconds = []
        for n in (5_000, 20_000):
            started = time.process_time()
            tables, dead = parse_lines(_lines([{"id": i, f"k{i}": i} for i in range(n)]), "t")
            seconds.append(time.process_time() - started)
            assert dead == [] and sum(t.num_rows for t, _, _ in tables) == n
            assert all(t.num_columns <= 50 for t, _, _ in tables)
            rows = [r for t, _, _ in tables for r in t.to_pylist()]
            assert all({**json.loads(r[EXTRA] or "{}"), **r}.get(f"k{r['id']}") == r["id"] for r in rows)
        assert seconds[1] < seconds[0] * 4 * 3  # 4× the rows: well under 16× the time
    finally:
        width.set_max_columns(width.DEFAULT_MAX_COLUMNS)


def test_extra_column_merges_the_overflow_with_an_extra_already_there() -> None:
    table = pa.table({"a": [1, None], "b": ["x", None], EXTRA: ['{"z": 1}', None]})
    assert extra_column(table, ["a", "b"]).to_pylist() == ['{"z": 1, "a": 1, "b": "x"}', None]
