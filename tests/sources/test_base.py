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


def test_a_chunk_is_measured_once_where_it_is_made_and_its_slices_count_their_share() -> None:
    table = pa.table({"id": list(range(1_000)), "name": [f"user-{i:04d}" for i in range(1_000)]})
    (whole,) = SourceUnit("a.jsonl").chunks(table, 1, None)
    assert whole.nbytes == table.nbytes > 0
    head, tail = whole.slice(0, 250), whole.slice(250)
    assert (head.nbytes, tail.nbytes) == (table.nbytes // 4, table.nbytes * 3 // 4)
    assert (head.table.num_rows, tail.table.num_rows, tail.first_line, tail.row0) == (250, 750, 251, 250)
    numbered = SourceUnit("b.jsonl").chunks(table, 1, [2 * i + 1 for i in range(1_000)])[0].slice(500, 10)
    assert numbered.nbytes == table.nbytes // 100 and numbered.line_of(0) == 1_001
    assert whole.slice(0, 0).nbytes == 0
