from __future__ import annotations

import pyarrow as pa
import pytest

from ingest.sources.types import column_from_values, infer_text, recognise_timestamps, unify, widen


@pytest.mark.parametrize(
    ("cells", "expected_type", "expected"),
    [
        (["1", "-2"], pa.int64(), [1, -2]),
        (["01234", "2"], pa.string(), ["01234", "2"]),  # a leading zero is part of the value
        (["+15551234", "1"], pa.string(), ["+15551234", "1"]),  # so is a plus sign
        (["18446744073709551615"], pa.string(), ["18446744073709551615"]),  # past int64
        (["1.5", "2e3", "-0.25"], pa.float64(), [1.5, 2000.0, -0.25]),
        (["0.12345678901234567"], pa.string(), ["0.12345678901234567"]),  # more digits than a double
        (["true", "False"], pa.bool_(), [True, False]),
        (["2024-08-02", None], pa.date32(), None),
        (["2024-08-02T10:00:00Z", "2024-08-02 12:00:00.5+02:00"], pa.timestamp("ms", "UTC"), None),
        (["2024-08-02T10:00:00.123456789"], pa.timestamp("ns"), None),
        (["2024-08-02T10:00:00Z", "2024-08-02T10:00:00"], pa.string(), None),  # zoned and naive mixed
        (["x", "1"], pa.string(), ["x", "1"]),
    ],
)
def test_text_gets_the_narrowest_type_that_holds_it_exactly(
    cells: list[str | None], expected_type: pa.DataType, expected: list[object] | None
) -> None:
    out = infer_text(pa.table({"c": pa.array(cells, pa.string())}))
    assert out.schema.field("c").type == expected_type
    if expected is not None:
        assert out.column("c").to_pylist() == expected


def test_json_strings_become_timestamps_only_and_keep_their_zone() -> None:
    t = pa.table({"at": ["2024-08-02T10:00:00+02:00"], "n": ["01234"], "d": ["2024-08-02"]})
    out = recognise_timestamps(t)
    assert out.schema.field("at").type == pa.timestamp("ms", "UTC")
    assert out.column("at")[0].value == pa.scalar(1722585600000, pa.timestamp("ms")).value  # 08:00 UTC
    assert out.schema.field("n").type == pa.string()
    assert out.schema.field("d").type == pa.date32()


def test_json_values_of_mixed_kinds_become_their_text() -> None:
    assert column_from_values([1, 2**64 - 1]).to_pylist() == ["1", "18446744073709551615"]
    assert column_from_values(["x", 3, True, {"a": 1}]).to_pylist() == ["x", "3", "true", '{"a":1}']
    assert column_from_values([1, 2.5, None]).type == pa.float64()
    assert column_from_values([1, 2]).type == pa.int64()


def test_unify_is_order_independent_and_widen_never_goes_to_text() -> None:
    assert unify([pa.int64(), pa.string()]) == unify([pa.string(), pa.int64()]) == pa.string()
    assert unify([pa.null(), pa.int64(), pa.float64()]) == pa.float64()
    assert widen(pa.int64(), pa.float64()) == pa.float64()
    assert widen(pa.date32(), pa.timestamp("ms")) == pa.timestamp("ms")
    assert widen(pa.timestamp("ms", "UTC"), pa.timestamp("ns", "UTC")) == pa.timestamp("ns", "UTC")
    assert widen(pa.float64(), pa.string()) is None
    assert widen(pa.timestamp("ms", "UTC"), pa.timestamp("ms")) is None
