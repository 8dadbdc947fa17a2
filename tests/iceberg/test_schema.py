"""Which type changes Iceberg's schema evolution takes (the encoder widens a field only so)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ingest.iceberg.schema import widens

STRUCT = pa.struct([pa.field("x", pa.int32())])


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        (pa.int32(), pa.int64(), True),  # int → long
        (pa.float32(), pa.float64(), True),  # float → double
        (pa.null(), pa.string(), True),  # no type yet
        (pa.timestamp("s", tz="UTC"), pa.timestamp("ns", tz="UTC"), True),  # both µs in the table
        (pa.uint32(), pa.int64(), True),  # both long in the table
        (STRUCT, pa.struct([pa.field("x", pa.int64()), pa.field("y", pa.string())]), True),
        (pa.list_(pa.int32()), pa.list_(pa.int64()), True),
        (pa.int64(), pa.float64(), False),  # long → double: not an Iceberg promotion
        (pa.int64(), pa.string(), False),
        (pa.timestamp("us"), pa.timestamp("us", tz="UTC"), False),  # timestamp ≠ timestamptz
        (STRUCT, pa.struct([pa.field("y", pa.int32())]), False),  # a field would vanish
        (pa.float64(), pa.float32(), False),
    ],
)
def test_widens_only_as_iceberg_evolves_a_schema(old: pa.DataType, new: pa.DataType, ok: bool) -> None:
    assert widens(old, new) is ok
