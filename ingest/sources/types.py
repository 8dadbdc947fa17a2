"""Types from text, without changing values: the same rules for every format.

A value keeps its text unless a type can hold it exactly: `01234`, `+15551234` and integers past
int64 stay strings; an ISO timestamp whose text carries a zone (`Z`, `+02:00`) becomes
`timestamp[unit, tz=UTC]`, one without a zone a naive `timestamp[unit]` (the unit is the finest the
text needs: ms, us or ns), a date alone `date32`. CSV cells are all text, so every rule applies
there; JSON already has numbers, booleans and strings, so only timestamps are recognised in its
strings (as pyarrow would, but keeping the zone). All checks are vectorised (Arrow compute), and a
column is looked at only when its first value could match.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

_INT = r"^-?(0|[1-9][0-9]{0,18})$"
_FLOAT = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]{1,3})?$"
_BOOL = r"^(true|false|True|False|TRUE|FALSE)$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_TS = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
    r"(Z|[-+][0-9]{2}:?[0-9]{2})?$"
)
_ZONE = r"(Z|[-+][0-9]{2}:?[0-9]{2})$"
_FIRST = re.compile(r"^(-?[0-9]|true|false|True|False|TRUE|FALSE)")
DOUBLE_DIGITS = 15  # significant digits a double holds exactly
SAFE_INT = 2**53  # beyond this a double no longer holds every integer


def infer_text(table: pa.Table) -> pa.Table:
    """CSV: give each all-text column the narrowest type that holds every value exactly."""
    return _map_strings(table, _typed_from_text)


def recognise_timestamps(table: pa.Table) -> pa.Table:
    """JSON: string columns whose every value is an ISO date/time become dates or timestamps."""
    return _map_strings(table, _temporal)


def lossy_doubles(table: pa.Table) -> list[str]:
    """Double columns holding integers a double cannot hold exactly (JSON integers past int64 that
    the reader turned into doubles): their block must be parsed again, exactly."""
    out = []
    for f, col in zip(table.schema, table.columns, strict=True):
        if not pa.types.is_floating(f.type) or col.null_count == len(col):
            continue
        biggest = pc.max(pc.abs(col)).as_py()
        if biggest is not None and biggest >= SAFE_INT:
            out.append(f.name)
    return out


def _map_strings(table: pa.Table, convert: Any) -> pa.Table:
    columns, changed = [], False
    for f, col in zip(table.schema, table.columns, strict=True):
        if pa.types.is_string(f.type) and col.null_count < len(col):
            typed = convert(col)
            if typed is not None:
                columns.append(typed)
                changed = True
                continue
        columns.append(col)
    return pa.table(columns, names=table.column_names) if changed else table


def _first(col: pa.ChunkedArray) -> str:
    return str(col.drop_null()[0].as_py())


def _all(col: pa.ChunkedArray, pattern: str) -> bool:
    matched = pc.match_substring_regex(col, pattern)
    return bool(pc.all(matched, skip_nulls=True).as_py())


def _typed_from_text(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    first = _first(col)
    if _FIRST.match(first) is None:
        return None
    if first[0] in "tfTF":
        return pc.equal(pc.utf8_lower(col), "true") if _all(col, _BOOL) else None
    temporal = _temporal(col)
    if temporal is not None:
        return temporal
    if _all(col, _INT):
        try:
            return col.cast(pa.int64())
        except (pa.ArrowInvalid, OverflowError):  # past int64: stays text
            return None
    if _all(col, _FLOAT) and _fits_double(col):
        return col.cast(pa.float64())
    return None


def _fits_double(col: pa.ChunkedArray) -> bool:
    mantissa = pc.replace_substring_regex(col, r"[eE].*$", "")
    digits = pc.replace_substring_regex(mantissa, r"[^0-9]", "")
    significant = pc.replace_substring_regex(digits, r"^0+", "")
    longest = pc.max(pc.utf8_length(significant)).as_py()
    return longest is None or longest <= DOUBLE_DIGITS


def _temporal(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    first = _first(col)
    if len(first) < 10 or not first[:4].isdigit() or first[4] != "-":
        return None
    if _all(col, _DATE):
        try:
            return col.cast(pa.date32())
        except pa.ArrowInvalid:
            return None
    if not _all(col, _TS):
        return None
    zoned = pc.match_substring_regex(col, _ZONE)
    aware = pc.all(zoned, skip_nulls=True).as_py()
    if not aware and pc.any(zoned, skip_nulls=True).as_py():
        return None  # some with a zone, some without: no one type is right for all; keep the text
    fractions = pc.struct_field(pc.extract_regex(col, r"\.(?P<f>[0-9]+)"), [0])
    digits = pc.max(pc.utf8_length(fractions)).as_py() or 0
    unit = "ms" if digits <= 3 else "us" if digits <= 6 else "ns"
    try:
        return col.cast(pa.timestamp(unit, "UTC" if aware else None))
    except pa.ArrowInvalid:
        return None


# -- JSON values parsed one by one (the slow path) ---------------------------------------------------


def column_from_values(values: list[Any]) -> pa.Array:
    """An Arrow column for JSON values of one field, exactly: integers past int64 (or mixed with
    fractions past 2**53) and values of different kinds become their JSON text."""
    kinds = {_kind(v) for v in values if v is not None}
    if kinds == {"int"} and all(-(2**63) <= v < 2**63 for v in values if v is not None):
        return pa.array(values, pa.int64())
    if kinds <= {"int", "float"} and all(abs(v) < SAFE_INT or isinstance(v, float) for v in values if v):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if len(kinds) <= 1 and kinds != {"int"} and kinds != {"float"}:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    text = [None if v is None else v if isinstance(v, str) else _text(v) for v in values]
    return pa.array(text, pa.string())


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    return type(v).__name__


def _text(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


# -- unifying types across chunks, batches and runs ----------------------------------------------


def unify(types: list[pa.DataType]) -> pa.DataType:
    """One type for a field seen with `types` in one batch, whatever their order: numbers widen
    (int → double), timestamps to the finer unit, null to anything; kinds that do not mix (text and
    numbers, zoned and naive times) meet in text, which holds all of them exactly."""
    out: pa.DataType = pa.null()
    for t in types:
        merged = widen(out, t)
        if merged is None:
            return pa.string()
        out = merged
    return out


def widen(known: pa.DataType, new: pa.DataType) -> pa.DataType | None:
    """The type that holds values of both without changing them, if widening alone gets there."""
    if known == new or pa.types.is_null(new):
        return known
    if pa.types.is_null(known):
        return new
    for date, ts in ((known, new), (new, known)):  # a day is a naive timestamp at midnight, exactly
        if pa.types.is_date(date) and pa.types.is_timestamp(ts) and ts.tz is None:
            return ts
    try:
        merged = pa.unify_schemas(
            [pa.schema([("f", known)]), pa.schema([("f", new)])], promote_options="permissive"
        ).field("f")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if pa.types.is_string(merged.type) or pa.types.is_large_string(merged.type):
        return None  # permissive unification may turn numbers into text: not a widening
    return merged.type
