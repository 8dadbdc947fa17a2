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
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ingest.parsing.width import iso_text

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


CELLS, TEXT_CELLS = b"ingest.cells", b"text"  # schema metadata of a CSV chunk: its text is cells
MIXED = b"ingest.mixed"  # field metadata of a JSON text column that holds numbers among text


def infer_text(table: pa.Table) -> pa.Table:
    """CSV: give each all-text column the narrowest type that holds every value exactly (a column
    left as text may still take a table's typed field: its schema says its values were cells)."""
    return _map_strings(table, _typed_from_text).replace_schema_metadata({CELLS: TEXT_CELLS})


def recognise_timestamps(table: pa.Table) -> pa.Table:
    """JSON: string columns whose every value is an ISO date/time become dates or timestamps, and
    so do such strings inside objects and lists, each nested field on its own (one rule at every
    depth: a zoned time inside an object keeps its zone as at the top level)."""
    return _map_columns(table, _temporal_anywhere)


def _temporal_anywhere(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    if pa.types.is_string(col.type):
        return _temporal(col) if col.null_count < len(col) else None
    if _nested_text(col.type) and _maybe_temporal(col):
        typed = _temporal_inside(col.combine_chunks())
        return None if typed is None else pa.chunked_array([typed])
    return None


def _nested_text(t: pa.DataType) -> bool:
    """Does a value of type `t` hold text inside an object or list?"""
    return _nested(t, pa.types.is_string)


def _nested(t: pa.DataType, kind: Callable[[pa.DataType], bool]) -> bool:
    """Does a value of type `t` hold values of a `kind` type inside an object or list?"""
    if pa.types.is_struct(t):
        return any(kind(f.type) or _nested(f.type, kind) for f in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return kind(t.value_type) or _nested(t.value_type, kind)
    return False


def _leaves(arr: pa.Array, kind: Callable[[pa.DataType], bool] = pa.types.is_string) -> list[pa.Array]:
    """The arrays of a `kind` type (text unless told) inside a nested array (struct children, list
    items), however deep."""
    t = arr.type
    if kind(t):
        return [arr]
    if pa.types.is_struct(t):
        return [leaf for child in arr.flatten() for leaf in _leaves(child, kind)]  # (with the rows' nulls)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _leaves(arr.flatten(), kind)
    return []


def _maybe_temporal(col: pa.ChunkedArray) -> bool:
    """Whether some nested text's first value looks like a date (the usual nested column, with no
    time in it, is not copied nor searched further)."""
    return any(_starts_temporal(leaf) for chunk in col.chunks for leaf in _leaves(chunk))


def _starts_temporal(leaf: pa.Array) -> bool:
    """Whether the text's first value looks like a date."""
    valid = leaf.slice(0, 64).drop_null()
    if not len(valid):
        valid = leaf.drop_null()
    return bool(len(valid)) and _looks_temporal(str(valid[0].as_py()))


def temporal_in_part(table: pa.Table, parts: list[tuple[int, int]]) -> bool:
    """Whether some text field that stayed text, at any depth, starts with a date-like value in one
    of the row ranges (offset, rows): that part alone might have been typed as times, where the
    whole stays text (times beside other text, or beside other zones)."""
    for col in table.columns:
        if not (pa.types.is_string(col.type) or _nested_text(col.type)):
            continue
        for offset, rows in parts:
            part = col.slice(offset, rows)
            if any(_starts_temporal(leaf) for chunk in part.chunks for leaf in _leaves(chunk)):
                return True
    return False


def _looks_temporal(first: str) -> bool:
    return len(first) >= 10 and first[:4].isdigit() and first[4] == "-"


def _temporal_inside(arr: pa.Array) -> pa.Array | None:
    """`arr` with each nested text field typed as `_temporal` types a column (None: nothing changed)."""
    t = arr.type
    mask = arr.is_null() if arr.null_count else None
    if pa.types.is_string(t):
        if arr.null_count == len(arr):
            return None
        typed = _temporal(pa.chunked_array([arr]))
        return None if typed is None else typed.combine_chunks()
    if pa.types.is_struct(t):
        children = arr.flatten()  # with the struct's nulls: a null row's children may hold ""
        typed_children = [_temporal_inside(c) for c in children]
        if all(c is None for c in typed_children):
            return None
        new = [c if n is None else n for c, n in zip(children, typed_children, strict=True)]
        fields = [t.field(i).with_type(c.type) for i, c in enumerate(new)]
        return pa.StructArray.from_arrays(new, fields=fields, mask=mask)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        items = _temporal_inside(arr.values)
        if items is None:
            return None
        kind = pa.ListArray if pa.types.is_list(t) else pa.LargeListArray
        return kind.from_arrays(arr.offsets, items, mask=mask)
    return None


def lossy_doubles(table: pa.Table) -> list[str]:
    """Columns holding, at any depth (a list's items, an object's fields), doubles past 2**53: such a
    double may be a JSON integer the reader could not hold (past int64, or beside fractions in one
    field), so the block must be parsed again, exactly."""
    out = []
    for f, col in zip(table.schema, table.columns, strict=True):
        if col.null_count == len(col):
            continue
        if pa.types.is_floating(f.type):
            leaves: list[pa.Array | pa.ChunkedArray] = [col]  # (one call, not one a chunk)
        elif _nested(f.type, pa.types.is_floating):
            leaves = [leaf for chunk in col.chunks for leaf in _leaves(chunk, pa.types.is_floating)]
        else:
            continue
        if any(_past_safe(leaf) for leaf in leaves):
            out.append(f.name)
    return out


def _past_safe(doubles: pa.Array | pa.ChunkedArray) -> bool:
    biggest = pc.max(pc.abs(doubles)).as_py()
    return biggest is not None and biggest >= SAFE_INT


def _map_strings(table: pa.Table, convert: Any) -> pa.Table:
    """`convert` each string column holding a value (None from it: the column stays)."""
    return _map_columns(
        table,
        lambda col: convert(col) if pa.types.is_string(col.type) and col.null_count < len(col) else None,
    )


def _map_columns(table: pa.Table, convert: Any) -> pa.Table:
    columns, changed = [], False
    for col in table.columns:
        typed = convert(col)
        columns.append(col if typed is None else typed)
        changed = changed or typed is not None
    return pa.table(columns, names=table.column_names) if changed else table


def _first(col: pa.ChunkedArray) -> str:
    return str(col.drop_null()[0].as_py())


def _all(col: pa.ChunkedArray, pattern: str) -> bool:
    matched = pc.match_substring_regex(col, pattern)
    return bool(pc.all(matched, skip_nulls=True).as_py())


def _iso_shaped(col: pa.ChunkedArray) -> bool:
    """For values Arrow has cast to a timestamp: do they all match `_TS` too? Arrow also takes a
    date alone, an hour without minutes and a `+hh` zone; those are told by two byte positions
    (`:` after the hour, no sign third from the end), far cheaper than the regex over every value."""
    raw = col.cast(pa.binary())
    colon = pc.all(pc.equal(pc.binary_slice(raw, 13, 14), b":"), skip_nulls=True).as_py()
    signs = pa.array([b"+", b"-"], pa.binary())
    return bool(colon) and not pc.any(pc.is_in(pc.binary_slice(raw, -3, -2), value_set=signs)).as_py()


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
    if _all(col, _FLOAT) and pc.all(_digits_fit(col), skip_nulls=True).as_py():
        return col.cast(pa.float64())
    return None


def _temporal(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    first = _first(col)
    if not _looks_temporal(first):
        return None
    if re.fullmatch(_DATE, first) and _all(col, _DATE):  # (the first tells: no pass over all)
        try:
            return col.cast(pa.date32())
        except pa.ArrowInvalid:
            return None
    # The usual case in one cast: Arrow refuses a value whose zone (or lack of one) differs from the
    # target's, or with more fraction digits than milliseconds; then the passes below decide.
    try:
        cast = col.cast(pa.timestamp("ms", "UTC" if re.search(_ZONE, first) else None))
    except pa.ArrowInvalid:
        cast = None
    if cast is not None and _iso_shaped(col):
        return cast
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

# When a field's values are of different kinds, the most frequent kind wins (ties: this order), so a
# row's fate depends on how many rows agree with it, never on their order.
PREFERENCE = {"number": 5, "time": 4, "bool": 3, "nested": 2, "text": 1}


def column_from_values(name: str, values: list[Any]) -> tuple[pa.Array, dict[int, str]]:
    """An Arrow column for the JSON values of one field, exactly, and the rows whose value does not
    fit it (→ dead letters): the most frequent kind decides; numbers and booleans among text become
    their text; integers past int64 (or past 2**53 among fractions) make the column text."""
    kinds = Counter(_kind(v) for v in values if v is not None)
    if not kinds:
        return pa.nulls(len(values)), {}
    winner = max(kinds, key=lambda k: (kinds[k], PREFERENCE[k]))
    if "text" in kinds and winner in ("number", "bool"):
        winner = "text"  # numbers among text become their text, however few the texts are
    bad: dict[int, str] = {}
    out: list[Any] = []
    if winner == "number":
        numbers = [v for v in values if _kind(v) == "number"]
        ints = all(isinstance(v, int) for v in numbers)
        exact = (
            all(-(2**63) <= v < 2**63 for v in numbers)
            if ints
            else all(isinstance(v, float) or abs(v) < SAFE_INT for v in numbers)
        )
        if not exact:
            winner = "text"
        else:
            target: pa.DataType = pa.int64() if ints else pa.float64()
            for i, v in enumerate(values):
                if v is None or _kind(v) == "number":
                    out.append(v if ints or v is None else float(v))
                else:
                    out.append(None)
                    bad[i] = _misfit(name, v, target)
            return pa.array(out, target), bad
    if winner == "text":
        return pa.array([None if v is None else v if isinstance(v, str) else _text(v) for v in values]), {}
    for i, v in enumerate(values):
        if v is None or _kind(v) == winner:
            out.append(v)
        else:
            out.append(None)
            bad[i] = _misfit(name, v, winner)
    try:
        return pa.array(out), bad
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # nested values that do not agree
        return pa.array([None if v is None else _text(v) for v in values], pa.string()), {}


def numbers_as_text(column: pa.Array, values: list[Any]) -> dict[bytes, bytes] | None:
    """Field metadata for a text column that holds JSON numbers as their text (they were among
    text): such a column's number texts may still go into a field the table already has as a
    number; text from a column of text alone never does (see pipeline.encode)."""
    if not pa.types.is_string(column.type):
        return None
    if any(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return {MIXED: b"numbers"}
    return None


def shown(value: Any) -> str:
    """A value as JSON writes it (times in ISO 8601), cut to 80 characters: for a dead letter's reason."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=iso_text)
    return text if len(text) <= 80 else text[:77] + "..."


def _misfit(name: str, value: Any, expected: object) -> str:
    return (
        f"field {name!r}: value {shown(value)} is not {expected} like most values of this field around it; "
        "output.schema_file can fix the field's type"
    )


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "text"
    return "nested"


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def family(t: pa.DataType) -> str:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "time"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    return "nested"


def text_fits(col: pa.ChunkedArray | pa.Array, target: pa.DataType) -> pa.Array | None:
    """For text going into a typed field: which values are written the way that type writes them
    (so the cast changes no value); None when the target is not one text can turn into."""
    if pa.types.is_integer(target):
        pattern = _INT
    elif pa.types.is_floating(target):
        return pc.and_(pc.match_substring_regex(col, _FLOAT), _digits_fit(col))
    elif pa.types.is_boolean(target):
        pattern = _BOOL
    elif pa.types.is_date(target):
        pattern = _DATE
    elif pa.types.is_timestamp(target):
        zoned = pc.match_substring_regex(col, _ZONE)
        stamp = pc.match_substring_regex(col, _TS)
        if target.tz is not None:
            return pc.and_(stamp, zoned)
        return pc.or_(pc.and_(stamp, pc.invert(zoned)), pc.match_substring_regex(col, _DATE))
    else:
        return None
    return pc.match_substring_regex(col, pattern)


def _digits_fit(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    mantissa = pc.replace_substring_regex(col, r"[eE].*$", "")
    digits = pc.replace_substring_regex(mantissa, r"[^0-9]", "")
    significant = pc.replace_substring_regex(digits, r"^0+", "")
    return pc.less_equal(pc.utf8_length(significant), DOUBLE_DIGITS)


# -- unifying types across chunks, batches and runs ----------------------------------------------


def unify(counts: dict[pa.DataType, int]) -> pa.DataType:
    """One type for a field seen with these types (and that many non-null values of each) in one
    batch, whatever their order: types that widen into one another meet (int → double, date → naive
    timestamp, a finer unit); otherwise the family with the most values wins (ties: PREFERENCE),
    and the values of the others are cast if that changes nothing, else dead-lettered."""
    types = [t for t in counts if not pa.types.is_null(t)]
    if not types:
        return pa.null()
    merged = _widen_all(types)
    if merged is not None:
        return merged
    totals = Counter[str]()
    for t in types:
        totals[family(t)] += counts[t]
    best = max(totals, key=lambda f: (totals[f], PREFERENCE[f]))
    if "text" in totals and best in ("number", "bool"):
        best = "text"  # as column_from_values: numbers among text become text, whatever the counts
    members = sorted((t for t in types if family(t) == best), key=lambda t: -counts[t])
    return _widen_all(members) or members[0]


def _widen_all(types: list[pa.DataType]) -> pa.DataType | None:
    out: pa.DataType = pa.null()
    for t in types:
        merged = widen(out, t)
        if merged is None:
            return None
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
    if pa.types.is_struct(known) and pa.types.is_struct(new):  # the same rules for nested fields
        fields = {f.name: f.type for f in known}
        for f in new:
            merged = widen(fields[f.name], f.type) if f.name in fields else f.type
            if merged is None:
                return None
            fields[f.name] = merged
        return pa.struct(list(fields.items()))
    if pa.types.is_list(known) and pa.types.is_list(new):
        item = widen(known.value_type, new.value_type)
        return None if item is None else pa.list_(known.value_field.with_type(item))
    try:
        merged = pa.unify_schemas(
            [pa.schema([("f", known)]), pa.schema([("f", new)])], promote_options="permissive"
        ).field("f")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if pa.types.is_string(merged.type) or pa.types.is_large_string(merged.type):
        return None  # permissive unification may turn numbers into text: not a widening
    return merged.type
