"""The worker's Arrow types, as types every Iceberg reader accepts.

Iceberg has no unsigned integers, no null type, no nanosecond timestamps before format v3, no
dictionary encoding in its schema, and one 32-bit time unit. Values are converted only where the
conversion keeps them exact (an unsigned 64-bit value over 2^63 - 1, or a timestamp with nanoseconds,
fails the cast: the caller makes its rows dead letters instead of changing them).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


class DoesNotFit(ValueError):
    """A value the table's type cannot hold; the message names the field, both types and the fix."""


def iceberg_type(t: pa.DataType) -> pa.DataType:
    """The Iceberg-readable type for `t` (itself when it already is one)."""
    if pa.types.is_dictionary(t):
        return iceberg_type(t.value_type)
    if pa.types.is_null(t):
        return pa.string()  # a column only ever null so far: text until a value says otherwise
    if pa.types.is_uint8(t) or pa.types.is_uint16(t) or pa.types.is_int8(t) or pa.types.is_int16(t):
        return pa.int32()
    if pa.types.is_uint32(t) or pa.types.is_uint64(t):
        return pa.int64()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC" if t.tz else None)  # zoned → timestamptz, naive → timestamp
    if pa.types.is_time(t):
        return pa.time64("us")
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(_field(t.value_field))
    if pa.types.is_struct(t):
        return pa.struct([_field(t.field(i)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(iceberg_type(t.key_type), iceberg_type(t.item_type))
    return t


def widens(old: pa.DataType, new: pa.DataType) -> bool:
    """Can a table field of type `old` become `new` by Iceberg's schema evolution (int → long,
    float → double, new optional fields in a struct)? Any other change (long → double, a number to
    text) it refuses: the values are dead letters instead."""
    a, b = iceberg_type(old), iceberg_type(new)
    if pa.types.is_null(old) or a.equals(b) or (a, b) in _PROMOTIONS:
        return True
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        have = {b.field(i).name: b.field(i).type for i in range(b.num_fields)}
        return all(
            a.field(i).name in have and widens(a.field(i).type, have[a.field(i).name])
            for i in range(a.num_fields)
        )
    if pa.types.is_list(a) and pa.types.is_list(b):
        return widens(a.value_type, b.value_type)
    if pa.types.is_map(a) and pa.types.is_map(b):
        return a.key_type.equals(b.key_type) and widens(a.item_type, b.item_type)
    return False


_PROMOTIONS = {(pa.int32(), pa.int64()), (pa.float32(), pa.float64())}


def _field(f: pa.Field) -> pa.Field:
    return pa.field(f.name, iceberg_type(f.type), nullable=True, metadata=None)


def iceberg_schema(schema: pa.Schema) -> pa.Schema:
    """Every field nullable (records may leave any field out), no field ids (the table assigns them)."""
    return pa.schema([_field(f) for f in schema])


def conform(table: pa.Table) -> pa.Table:
    """`table` in Iceberg-readable types; raises DoesNotFit naming the first column that cannot be."""
    target = iceberg_schema(table.schema)
    if target.equals(table.schema.remove_metadata()) and not table.schema.metadata:
        return table
    columns = []
    for name, column, want in zip(table.column_names, table.columns, target, strict=True):
        if column.type.equals(want.type):
            columns.append(column)
            continue
        try:
            columns.append(pc.cast(column, want.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DoesNotFit(
                f"field {name!r}: {column.type} values do not fit Iceberg's {want.type} exactly ({exc})"
            ) from None
    return pa.Table.from_arrays(columns, schema=target)
