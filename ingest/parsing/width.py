"""Wide records: memory and time bounded by `output.max_columns`, never by how many keys an input has.

Fields past the limit are kept, not dropped: each row's fields that have no column of their own go
into one JSON text column, EXTRA (`{"k4001": 5}`), which every engine reads (DuckDB `json_extract`,
polars `str.json_decode`, Spark `from_json`).

pyarrow's JSON reader makes a table of rows × distinct keys: 20,000 lines each with a key of its
own is 400 million cells (3 GiB, 20 s). `sparse_wide` tells such a block from a few lines sampled
across it, so it takes the per-line path instead, where `fold` keeps at most MAX_COLUMNS columns.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa

EXTRA = "_extra"  # the JSON text column of the fields past output.max_columns
DEFAULT_MAX_COLUMNS = 1000
SAMPLE_LINES = 32
CELL_BUDGET = 20_000_000  # rows × columns a block may become in pyarrow's reader (about 160 MB)

_limit = [DEFAULT_MAX_COLUMNS]


def max_columns() -> int:
    return _limit[0]


def set_max_columns(n: int) -> None:
    """The limit of this process (output.max_columns), set once when the worker starts."""
    _limit[0] = n


Sample = list[tuple[dict[str, Any], int]]  # sampled lines: (the object, its length with its newline)


def sample(block: bytes | bytearray | memoryview) -> Sample:
    """Up to SAMPLE_LINES objects of lines spread over a block of 64 KiB or more (none of a smaller
    one), parsed by `json`: they tell `sparse_wide` and the timestamp fields (jsonlines) apart."""
    size = len(block)
    if size < 1 << 16:
        return []
    data = block
    out: Sample = []
    step = size // SAMPLE_LINES
    for i in range(SAMPLE_LINES):
        start = _line_start(data, i * step)
        end = _find(data, b"\n", start)
        if end < 0:
            end = size
        try:
            value = json.loads(bytes(data[start:end]))
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append((value, end - start + 1))
    return out


def sparse_wide(block: bytes | bytearray | memoryview, sampled: Sample | None = None) -> bool:
    """Whether pyarrow's reader would make too many cells of this block: sampled lines that each
    bring keys no other sampled line has, times the lines in the block, past CELL_BUDGET. A block
    under 64 KiB is at most ~65k cells per 1k keys: cheap whatever its shape (and not sampled)."""
    if sampled is None:
        sampled = sample(block)
    if len(sampled) < 2:
        return False
    keys: Counter[str] = Counter()
    for value, _ in sampled:
        keys.update(set(_paths(value)))
    own = sum(1 for n in keys.values() if n == 1)  # keys only one sampled line has
    if own <= len(sampled) // 4:
        return False  # lines share their keys: columns do not grow with the rows
    rows = len(block) * len(sampled) / sum(n for _, n in sampled)
    distinct = len(keys) - own + own / len(sampled) * rows
    return rows * distinct > CELL_BUDGET


def _find(data: Any, sub: bytes, start: int) -> int:
    """`find` in bytes, or in the buffer under a view that starts at its first byte."""
    whole: Any = data.obj if isinstance(data, memoryview) else data
    found: int = whole.find(sub, start, len(data))
    return found


def _line_start(data: Any, pos: int) -> int:
    if pos == 0:
        return 0
    found = _find(data, b"\n", pos)
    return len(data) if found < 0 else found + 1


def _paths(value: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key, nested ones by path (a struct's fields become columns' parts too)."""
    out = []
    for k, v in value.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _paths(v, f"{prefix}{k}.")
    return out


def fold(records: list[dict[str, Any]], names: dict[str, None]) -> tuple[list[str], list[str | None]]:
    """The names that get columns (the first MAX_COLUMNS - 1 in input order, when there are more
    than MAX_COLUMNS) and each record's other fields as JSON text (None: it has none)."""
    limit = max_columns()
    if len(names) <= limit:
        return list(names), []
    kept = list(names)[: limit - 1]
    keep = set(kept)
    extra: list[str | None] = []
    for r in records:
        rest = {k: v for k, v in r.items() if k not in keep and v is not None}
        extra.append(json.dumps(rest, ensure_ascii=False) if rest else None)
    return kept, extra


def extra_column(table: pa.Table, overflow: list[str]) -> pa.Array:
    """The JSON text of each row's non-null values in the `overflow` columns, merged with an EXTRA
    column the table has already (nested values as JSON, times in ISO 8601)."""
    columns = [(name, table.column(name).to_pylist()) for name in overflow]
    have = table.column(EXTRA).to_pylist() if EXTRA in table.column_names else None
    out: list[str | None] = []
    for row in range(table.num_rows):
        rest: dict[str, Any] = json.loads(have[row]) if have is not None and have[row] else {}
        for name, values in columns:
            if values[row] is not None:
                rest[name] = values[row]
        out.append(json.dumps(rest, ensure_ascii=False, default=iso_text) if rest else None)
    return pa.array(out, pa.string())


def iso_text(value: object) -> str:
    """JSON's fallback for values it has no form for: times and dates in ISO 8601, else str()."""
    iso = getattr(value, "isoformat", None)
    return str(iso()) if iso is not None else str(value)
