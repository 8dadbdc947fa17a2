from __future__ import annotations

import pyarrow as pa

from ingest.parsing.jsonlines import parse_lines
from ingest.parsing.nesting import MAX_DEPTH, PARSER_SAFE, line_depth, maybe_too_deep, schema_too_deep


def _deep(n: int, inside: bytes = b"1") -> bytes:
    return b'{"a": ' + b"[" * n + inside + b"]" * n + b"}"


def test_line_depth_ignores_brackets_inside_strings() -> None:
    assert line_depth(_deep(100)) == 101
    fake = b'{"a": "' + b"[" * 500 + b'"}'
    assert line_depth(fake) == 1
    assert line_depth(b'{"a": "\\"[[[[", "b": [[1]]}') <= MAX_DEPTH


def test_only_long_deep_lines_are_flagged_before_the_c_parser_sees_them() -> None:
    plain = b'{"id": 1, "a": [[1, 2]]}\n' * 10_000
    assert not maybe_too_deep(plain)
    assert maybe_too_deep(plain + _deep(PARSER_SAFE * 4) + b"\n" + plain)
    long_but_flat = b'{"s": "' + b"x" * (PARSER_SAFE * 4) + b'"}\n'
    assert not maybe_too_deep(plain + long_but_flat)
    assert maybe_too_deep(memoryview(bytearray(plain + _deep(100_000))))


def test_a_schema_deeper_than_the_limit_is_told() -> None:
    t = pa.int64()
    for _ in range(MAX_DEPTH - 1):
        t = pa.list_(t)
    assert not schema_too_deep(pa.schema([("a", t)]))
    assert schema_too_deep(pa.schema([("a", pa.list_(t))]))


def test_deep_records_are_dead_letters_and_never_crash_the_parser() -> None:
    body = b'{"id": 0}\n' + _deep(40) + b"\n" + _deep(100_000) + b'\n{"id": 3}\n'
    tables, dead = parse_lines(body, "t")
    assert [r["id"] for t, _, _ in tables for r in t.to_pylist()] == [0, 3]
    assert [d.line for d in dead] == [2, 3] and all("nested" in d.reason for d in dead)
