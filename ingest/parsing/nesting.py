"""Records every reader can open: nesting within MAX_DEPTH, and no line deep enough to crash a parser.

pyarrow's Parquet reader refuses a file whose lists nest 60 deep; polars crashes on 5,000; pyarrow's
JSON reader (rapidjson, recursive on the C stack) dies with SIGSEGV somewhere past 10,000. So:

- a record nested deeper than MAX_DEPTH (the record itself is level 1) is a dead letter;
- before a block reaches pyarrow's JSON reader, `maybe_too_deep` finds every line that *could* nest
  past what the C parser survives: only lines over 2 × PARSER_SAFE bytes can, and those are found by
  looking at one byte window per PARSER_SAFE bytes (cheap: a few ms per 32 MiB block). Such a line's
  brackets are counted, and only a line with more than MAX_DEPTH of them is measured exactly.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

MAX_DEPTH = 32  # every reader tried (pyarrow, polars, DuckDB) opens 48; 32 leaves a margin
PARSER_SAFE = 4096  # nesting the C JSON parsers handle on an 8 MiB stack with room to spare
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def maybe_too_deep(block: bytes | bytearray | memoryview) -> bool:
    """Whether some line of `block` may nest past MAX_DEPTH and is long enough to nest past
    PARSER_SAFE (such a block must not reach a C parser: take the per-line path)."""
    # A view (of a reused read buffer) always starts at the buffer's first byte: search the buffer.
    data: bytes | bytearray = block if isinstance(block, bytes | bytearray) else block.obj  # type: ignore[assignment]
    size = len(block)
    s = 0
    while s < size:
        if data.find(b"\n", s, min(s + PARSER_SAFE, size)) >= 0:
            s += PARSER_SAFE
            continue
        start = data.rfind(b"\n", 0, s) + 1
        end = data.find(b"\n", s, size)
        end = size if end < 0 else end
        if end - start > 2 * PARSER_SAFE and line_depth(bytes(data[start:end])) > MAX_DEPTH:
            return True
        s = end + 1
    return False


def line_depth(line: bytes) -> int:
    """How deep one JSON text nests (brackets inside strings do not count); exact, and cheap for a
    line with few brackets."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return MAX_DEPTH  # cannot be deeper
    brackets = _STRINGS.sub(b"", line).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for b in brackets:
        if b in (91, 123):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def type_depth(t: pa.DataType) -> int:
    """Levels of a value of type `t` (a scalar is 0, a list of scalars 1)."""
    if pa.types.is_struct(t):
        return 1 + max((type_depth(t.field(i).type) for i in range(t.num_fields)), default=0)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return 1 + type_depth(t.value_type)
    if pa.types.is_map(t):
        return 1 + max(type_depth(t.key_type), type_depth(t.item_type))
    return 0


def schema_too_deep(schema: pa.Schema) -> bool:
    """Does a record of this schema (level 1) nest past MAX_DEPTH?"""
    return any(1 + type_depth(f.type) > MAX_DEPTH for f in schema)


def value_depth(value: Any) -> int:
    """Levels of a parsed JSON value (a dict or list counts 1, a scalar 0); iterative, so a deep value
    never exhausts the Python stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, level = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:
            stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def too_deep_reason(depth: int | None = None) -> str:
    deep = f"nested {depth} levels" if depth is not None else "nested too deep to parse"
    return (
        f"{deep}, over the limit of {MAX_DEPTH} that every common reader opens; "
        "flatten it, or send the deep part as a JSON string"
    )
