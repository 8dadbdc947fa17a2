from __future__ import annotations

import pyarrow as pa

from ingest.sources.base import SourceUnit


def test_rows_already_in_journaled_batches_are_not_sent_again() -> None:
    unit = SourceUnit("a.jsonl", skip=[(2, 4), (7, 20)])
    first = unit.chunks(pa.table({"id": list(range(5))}), 1, None)
    second = unit.chunks(pa.table({"id": list(range(5, 10))}), 6, None)
    sent = [(c.row0, c.table.column("id").to_pylist(), c.line_of(0)) for c in first + second]
    assert sent == [(0, [0, 1], 1), (4, [4], 5), (5, [5, 6], 6)]
    assert unit.next_row == 10


def test_a_unit_is_fully_covered_only_once_its_total_is_known() -> None:
    unit = SourceUnit("a.jsonl", skip=[(0, 10)])
    assert not unit.fully_covered
    unit.total = 10
    assert unit.fully_covered
    unit.total = 11
    assert not unit.fully_covered
