"""The JSON fields pyarrow's reader must read as text, at any depth.

Its inference makes an ISO date or time a naive `timestamp[s]`: the zone dropped, a date turned into
a midnight, a value with and one without a zone made alike. Such a field is named by its path and
read as text through an explicit schema; ingest.parsing.types then types it by our rules, the same
inside objects and lists as at the top level, and the same as the per-line parse does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from ingest.parsing.width import Sample

FieldPath = tuple[str | None, ...]  # field names from the top; None steps into a list's items
TextFields = set[FieldPath]
FIRST_LINE = 16 << 10  # `settle` reads the first line from this much of a block

_ISO_STAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::\d{2}(?::\d{2})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?", re.ASCII
)


def sampled_stamps(sampled: Sample) -> TextFields:
    """The fields that hold, in sampled lines, text pyarrow's inference would make a timestamp,
    told by a pattern: else the whole block is parsed twice. The pattern takes a little more than
    pyarrow does (a 30th of February); such a field is then read as the text it is, as inference
    would read it. A field it misses, or first seen further on, still takes the second parse. (A
    pyarrow parse of the block's first 16 KiB did this before: 0.7 ms of an HTTP body's 5.6.)"""
    out: TextFields = set()
    for value, _ in sampled:
        stack: list[tuple[FieldPath, Any]] = [((k,), v) for k, v in value.items()]
        while stack:  # (iterative: a sampled line may nest deep)
            at, v = stack.pop()
            if isinstance(v, str):
                if len(v) >= 10 and _ISO_STAMP.fullmatch(v) is not None:
                    out.add(at)
            elif isinstance(v, dict):
                stack.extend(((*at, k), item) for k, item in v.items())
            elif isinstance(v, list):
                stack.extend(((*at, None), item) for item in v)
    return out


def inferred_stamps(schema: pa.Schema) -> TextFields:
    """Fields pyarrow's inference made timestamps, at any depth: to be parsed again as text."""
    out: TextFields = set()
    stack: list[tuple[FieldPath, pa.DataType]] = [((f.name,), f.type) for f in schema]
    while stack:
        at, t = stack.pop()
        if pa.types.is_timestamp(t):
            out.add(at)
        elif pa.types.is_struct(t):
            stack.extend(((*at, f.name), f.type) for f in t)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            stack.append(((*at, None), t.value_type))
    return out


def text_schema(fields: TextFields) -> pa.Schema:
    """The explicit schema that reads `fields` as text and leaves every other field to inference
    (pyarrow still infers the fields of an object it is given some of)."""
    tops = _by_step(fields)
    return pa.schema([(n, _text_type(tops[n])) for n in sorted(k for k in tops if k is not None)])


def _by_step(paths: Iterable[FieldPath]) -> dict[str | None, list[FieldPath]]:
    """The paths grouped by their first step, each without it (one pass: an object may have
    thousands of fields)."""
    out: dict[str | None, list[FieldPath]] = {}
    for p in paths:
        if p:
            out.setdefault(p[0], []).append(p[1:])
    return out


def _text_type(rest: list[FieldPath]) -> pa.DataType:
    if any(not p for p in rest):  # this very field is text (a value that is sometimes an object
        return pa.string()  # here makes pyarrow refuse the block: the per-line parse takes it)
    steps = _by_step(rest)
    if None in steps and len(steps) == 1:
        return pa.list_(_text_type(steps[None]))
    return pa.struct([(n, _text_type(steps[n])) for n in sorted(k for k in steps if k is not None)])


def settle(block: bytes | memoryview, table: pa.Table, fields: TextFields) -> pa.Table:
    """A table read with `text_schema(fields)` as inference alone would have laid it out: columns
    and the fields of objects in the order in which the block's first line has them (the explicit
    ones came first), and a nested field given as text but found nowhere in the block left out (an
    all-null text field would keep the type of a field known elsewhere as a time from widening)."""
    first = first_line(block)
    nested = _by_step(p for p in fields if len(p) > 1)  # column → paths below it
    if nested:
        columns = list(table.columns)
        for i, name in enumerate(table.column_names):
            col = columns[i]
            if name not in nested or col.null_count == len(col):
                continue
            absent = _absent(col, set(nested[name]))
            target = _laid_out(col.type, first.get(name) if first else None, absent)
            if target != col.type:
                columns[i] = col.cast(target)  # (a struct cast matches fields by name)
        table = pa.table(columns, names=table.column_names)
    if first is None:
        return table
    rank = {name: i for i, name in enumerate(first)}
    names = table.column_names
    order = sorted(range(len(names)), key=lambda i: (rank.get(names[i], len(rank)), i))
    return table if order == list(range(len(names))) else table.select(order)


def first_line(block: bytes | memoryview) -> dict[str, Any] | None:
    """The block's first line as an object (None: not one, or longer than FIRST_LINE)."""
    end = bytes(block[:FIRST_LINE]).find(b"\n")
    try:
        first = json.loads(bytes(block[: end if end >= 0 else FIRST_LINE]))
    except ValueError:
        return None
    return first if isinstance(first, dict) else None


def _absent(col: pa.ChunkedArray, paths: TextFields) -> TextFields:
    """The nested fields at `paths` (below `col`) that hold no value in any row."""
    found: TextFields = set()
    for chunk in col.chunks:
        _with_values(chunk, _by_step(paths), (), found)
    return {p for p in paths if p not in found}


def _with_values(
    arr: pa.Array, steps: dict[str | None, list[FieldPath]], at: FieldPath, found: TextFields
) -> None:
    """Add to `found` the paths (below `at`, grouped by step) that hold a value in `arr`. Each level
    is flattened once, whatever the number of its fields."""
    t = arr.type
    if pa.types.is_struct(t):
        children = arr.flatten()  # (with the object's own nulls)
        for name, rest in steps.items():
            index = t.get_field_index(name) if name is not None else -1
            if index >= 0:
                _reached(children[index], rest, (*at, name), found)
    elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and None in steps:
        _reached(arr.flatten(), steps[None], (*at, None), found)


def _reached(arr: pa.Array, rest: list[FieldPath], at: FieldPath, found: TextFields) -> None:
    if any(not p for p in rest) and arr.null_count < len(arr):
        found.add(at)
    deeper = [p for p in rest if p]
    if deeper:
        _with_values(arr, _by_step(deeper), at, found)


def _laid_out(t: pa.DataType, value: Any, absent: TextFields) -> pa.DataType:
    """`t` without the fields at `absent`, its objects' fields in the order `value` has them."""
    below = _by_step(absent)
    if pa.types.is_struct(t):
        gone = {name for name, rest in below.items() if () in rest}
        kept = [f for f in t if f.name not in gone] or list(t)
        out = [
            f.with_type(
                _laid_out(
                    f.type,
                    value.get(f.name) if isinstance(value, dict) else None,
                    {p for p in below.get(f.name, []) if p},
                )
            )
            for f in kept
        ]
        if isinstance(value, dict):
            rank = {k: i for i, k in enumerate(value)}
            out = [f for _, f in sorted(enumerate(out), key=lambda e: (rank.get(e[1].name, len(rank)), e[0]))]
        return pa.struct(out)
    if pa.types.is_list(t):
        item = next((v for v in value if v is not None), None) if isinstance(value, list) else None
        inner = {p for p in below.get(None, []) if p}
        return pa.list_(t.value_field.with_type(_laid_out(t.value_type, item, inner)))
    return t
