from __future__ import annotations

import pyarrow as pa
import pytest

from ingest.parsing.types import column_from_values, infer_text, recognise_timestamps, unify, widen


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
        (["2024-08-02T10:00:00", "2024-08-02T10:00:00Z"], pa.string(), None),  # naive first, then zoned
        (
            ["2024-08-02T10:00:00Z", "2024-08-02T10:00:00.1234Z"],
            pa.timestamp("us", "UTC"),
            None,
        ),  # finer later
        (["2024-08-02T10:00:00Z", "2024-08-02"], pa.string(), None),  # a date among times
        # Arrow's cast takes these, our rules do not (an hour alone, a zone without minutes):
        (["2024-08-02T10:00:00Z", "2024-08-02T10Z"], pa.string(), None),
        (["2024-08-02T10:00+02:00", "2024-08-02T10:00+02"], pa.string(), None),
        (["2024-08-02T10:00", "2024-08-02 11:00:00.5-05"], pa.string(), None),
        (["2024-08-02T10:00-0500", "2024-08-02T10:00:00.250Z", None], pa.timestamp("ms", "UTC"), None),
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


def test_json_values_of_mixed_kinds_become_text_with_text_else_follow_the_most_frequent_kind() -> None:
    col, bad = column_from_values("h", [1, 2**64 - 1])  # past int64: exact text for all
    assert col.to_pylist() == ["1", "18446744073709551615"] and bad == {}
    col, bad = column_from_values("v", ["x", 3, True, {"a": 1}, "y"])  # mostly text: all as text
    assert col.to_pylist() == ["x", "3", "true", '{"a":1}', "y"] and bad == {}
    col, bad = column_from_values("n", [1, {"a": 1}, 2.5, None])  # mostly numbers: the object is out
    assert col.type == pa.float64() and col.to_pylist() == [1.0, None, 2.5, None]
    assert list(bad) == [1] and "field 'n'" in bad[1] and '{"a":1}' in bad[1]
    for values in (["x", 3], [3, "x"], [3, 4, 5, "x"]):  # numbers among text: text, whatever the counts
        col, bad = column_from_values("v", values)
        assert col.type == pa.string() and col.to_pylist() == [str(v) for v in values] and bad == {}


def test_unify_is_order_independent_and_widen_never_goes_to_text() -> None:
    assert unify({pa.int64(): 1, pa.string(): 5}) == pa.string()
    assert unify({pa.string(): 1, pa.int64(): 5}) == pa.string()  # numbers among text: text
    assert unify({pa.string(): 1, pa.bool_(): 5}) == pa.string()
    assert unify({pa.string(): 1, pa.timestamp("ms"): 5}) == pa.timestamp("ms")  # ISO texts may fit
    assert unify({pa.null(): 4, pa.int64(): 1, pa.float64(): 1}) == pa.float64()
    assert widen(pa.int64(), pa.float64()) == pa.float64()
    assert widen(pa.date32(), pa.timestamp("ms")) == pa.timestamp("ms")
    assert widen(pa.timestamp("ms", "UTC"), pa.timestamp("ns", "UTC")) == pa.timestamp("ns", "UTC")
    assert widen(pa.float64(), pa.string()) is None
    assert widen(pa.timestamp("ms", "UTC"), pa.timestamp("ms")) is None
    # nested fields by the same rules: a day and a naive time meet in an object as at the top level
    day, naive = pa.struct([("n", pa.int64()), ("at", pa.date32())]), pa.struct([("at", pa.timestamp("ms"))])
    assert widen(day, naive) == pa.struct([("n", pa.int64()), ("at", pa.timestamp("ms"))])
    assert widen(pa.list_(day), pa.list_(naive)) == pa.list_(
        pa.struct([("n", pa.int64()), ("at", pa.timestamp("ms"))])
    )
    assert widen(pa.struct([("a", pa.int64())]), pa.struct([("a", pa.string())])) is None
    assert widen(pa.list_(pa.timestamp("ms", "UTC")), pa.list_(pa.timestamp("ms"))) is None
