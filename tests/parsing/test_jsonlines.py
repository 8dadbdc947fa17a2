"""Joint parsing of many small files' JSON lines: the same rows and line numbers as one parse per file."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from ingest.durable.deadletters import DeadLetter
from ingest.parsing import jsonlines
from ingest.parsing.jsonlines import Joint, JsonLines, Parsed, _parse
from ingest.parsing.textfields import TextFields

Emitted = list[tuple[pa.Table, int, list[int] | None]]


SIZES: dict[str, list[int]] = {}  # the Arrow bytes each emit said its table holds (-1: not measured)


def _reader(name: str, joint: Joint | None, out: dict[str, Emitted], dead: list[DeadLetter]) -> JsonLines:
    emitted: Emitted = out.setdefault(name, [])
    sizes = SIZES.setdefault(name, [])

    def emit(t: pa.Table, first: int, lines: list[int] | None, nbytes: int = -1, /) -> None:
        emitted.append((t, first, lines))
        sizes.append(nbytes)

    return JsonLines(name, emit, dead.extend, 1 << 20, joint=joint)


def _rows(emitted: Emitted) -> list[tuple[int, int]]:
    """(id, line) of every row emitted, in order."""
    out = []
    for table, first, lines in emitted:
        for i, row in enumerate(table.to_pylist()):
            out.append((row["id"], lines[i] if lines is not None else first + i))
    return out


def _files(*bodies: bytes, joint: Joint | None) -> tuple[dict[str, Emitted], list[DeadLetter], int]:
    out: dict[str, Emitted] = {}
    dead: list[DeadLetter] = []
    for i, body in enumerate(bodies):
        if joint is not None:
            joint.owner = f"f{i}"
        _reader(f"f{i}", joint, out, dead).block(body, 1)
    failed = joint.flush() if joint is not None else {}
    assert not failed
    return out, dead, sum(len(v) for v in out.values())


def test_small_files_parsed_together_give_each_file_its_own_rows_and_lines() -> None:
    bodies = [
        b"".join(b'{"id": %d, "at": "2024-08-02T10:00:0%dZ"}\n' % (f * 10 + i, i) for i in range(3))
        for f in range(4)
    ]
    SIZES.clear()
    alone, _, _ = _files(*bodies, joint=None)
    joint = Joint()
    together, dead, tables = _files(*bodies, joint=joint)
    assert not dead
    for name in alone:
        assert _rows(together[name]) == _rows(alone[name])
    assert {t.schema.field("at").type for v in together.values() for t, _, _ in v} == {
        pa.timestamp("ms", "UTC")
    }
    assert tables == 4 and not joint.held
    # One parse: every file's rows are a slice of the same Arrow buffer.
    buffers = {t.column("id").chunk(0).buffers()[1].address for v in together.values() for t, _, _ in v}
    assert len(buffers) == 1
    # measured once, for all: each file is told its share by rows (the batcher need not measure)
    whole = pa.concat_tables([t for v in together.values() for t, _, _ in v]).combine_chunks().nbytes
    shares = [n for name in together for n in SIZES[name][-len(together[name]) :]]
    assert shares == [shares[0]] * 4 and 0 < sum(shares) <= whole + 4
    assert all(n == -1 for name in alone for n in SIZES[name][: len(alone[name])])


def test_a_blank_or_bad_line_in_one_file_makes_every_file_parse_on_its_own() -> None:
    good = b'{"id": 1}\n{"id": 2}\n'
    blank = b'{"id": 3}\n\n{"id": 4}\n'
    bad = b'{"id": 5}\n{"id": \n{"id": 6}\n'
    together, dead, _ = _files(good, blank, bad, joint=Joint())
    assert _rows(together["f0"]) == [(1, 1), (2, 2)]
    assert _rows(together["f1"]) == [(3, 1), (4, 3)]  # the blank line keeps its number
    assert _rows(together["f2"]) == [(5, 1), (6, 3)]
    assert [(d.source, d.line) for d in dead] == [("f2", 2)]  # named for its own file and line


def test_a_block_without_its_final_newline_is_not_held() -> None:
    joint = Joint()
    out: dict[str, Emitted] = {}
    _reader("f", joint, out, []).block(b'{"id": 1}\n{"id": 2}', 1)
    assert not joint.held and _rows(out["f"]) == [(1, 1), (2, 2)]


def test_a_dropped_owner_emits_nothing() -> None:
    joint = Joint()
    out: dict[str, Emitted] = {}
    joint.owner = "a"
    _reader("a", joint, out, []).block(b'{"id": 1}\n', 1)
    joint.owner = "b"
    _reader("b", joint, out, []).block(b'{"id": 2}\n', 1)
    joint.drop("a")  # its read failed: it is read again from its top
    joint.flush()
    assert out["a"] == [] and _rows(out["b"]) == [(2, 1)]


def _read(
    body: bytes, *, plain: bool, piece: int, settled: bool, max_record: int = 1 << 20, ahead: bool = False
) -> tuple:
    emitted: Emitted = []
    dead: list[DeadLetter] = []
    reader = JsonLines(
        "f", lambda t, first, lines: emitted.append((t, first, lines)), dead.extend, max_record, piece
    )
    reader.plain, reader.ahead = plain, ahead
    position = reader.read(pa.BufferReader(body), 1, lambda: settled)
    return _rows(emitted), [(d.line, d.reason[:20]) for d in dead], position


def test_a_plain_file_read_in_a_reused_buffer_gives_what_the_piecewise_read_gives() -> None:
    """Lines cut at every buffer boundary, a blank line, a bad line, a line longer than the buffer,
    one longer than max_record, and a last line without its newline (written or still growing):
    the in-place read, with one buffer or two (the next block read while one is parsed), emits the
    same rows, lines, dead letters and resume position."""
    lines = [b'{"id": %d, "pad": "%s"}' % (i, b"x" * (i * 7 % 50)) for i in range(60)]
    lines[10] = b""  # blank
    lines[20] = b'{"id": 20, "pad": oops}'  # bad
    lines[30] = b'{"id": 30, "pad": "%s"}' % (b"y" * 400)  # longer than the buffer
    lines[40] = b'{"id": 40, "pad": "%s"}' % (b"z" * 3000)  # longer than max_record
    body = b"\n".join(lines) + b"\n" + b'{"id": 99, "pad": "end"}'
    for piece in (64, 97, 256, 1 << 20):
        for settled in (False, True):
            piecewise = _read(body, plain=False, piece=piece, settled=settled, max_record=2000)
            in_place = _read(body, plain=True, piece=piece, settled=settled, max_record=2000)
            assert in_place == piecewise, (piece, settled)
            ahead = _read(body, plain=True, piece=piece, settled=settled, max_record=2000, ahead=True)
            assert ahead == piecewise, (piece, settled, "read ahead")
            rows, dead, (offset, line) = in_place
            assert [r for r, _ in rows][:3] == [0, 1, 2] and (99 in [r for r, _ in rows]) == settled
            assert [d for d, _ in dead] == [21, 41]
            assert offset == (len(body) if settled else body.rfind(b"\n") + 1)
            assert line == (62 if settled else 61)


def _stamped(n: int, **changes: bytes) -> bytes:
    """n JSON lines (about 130 bytes each) with a zoned timestamp; `changes`: line number → line."""
    lines = [
        b'{"id": %d, "ts": "2024-08-02T10:%02d:00+02:00", "pad": "%s"}' % (i, i % 60, b"x" * 80)
        for i in range(n)
    ]
    for at, line in changes.items():
        lines[int(at.removeprefix("n"))] = line
    return b"\n".join(lines) + b"\n"


def test_a_big_blocks_timestamp_fields_are_learned_from_its_first_lines_same_table() -> None:
    """A block of 64 KiB or more: its first lines tell its timestamp fields (so it is parsed once, not
    twice). Nothing else changes: the table is the one parsed with the fields already known."""
    block = _stamped(10_000)
    assert len(block) >= 1 << 20
    learned: TextFields = set()
    table = _parse(memoryview(block), learned)
    assert learned == {("ts",)} and table is not None
    assert table.equals(_parse(block, {("ts",)}))
    assert table.schema.field("ts").type.tz == "UTC"
    assert table.column("ts")[0].as_py().isoformat() == "2024-08-02T08:00:00+00:00"


def test_a_request_sized_block_is_parsed_whole_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTP body of 1,000 events (~130 KB) with a zoned timestamp: pyarrow's reader goes over the
    whole block once and over nothing else (its timestamp fields come from the lines the width check
    samples), and the checks before it (UTF-8, depth, width) run once too. Each used to run twice:
    8.6 -> 3.8 ms a body of the HTTP bench's events; then a pyarrow parse of a 16 KiB sample."""
    block = _stamped(1_000)
    assert 64 << 10 <= len(block) < 1 << 20
    sizes: list[int] = []
    read = jsonlines.pjson.read_json

    def counted(source: pa.BufferReader, **kwargs: object) -> pa.Table:
        sizes.append(source.size())
        return read(source, **kwargs)

    widths: list[int] = []
    wide = jsonlines.sparse_wide
    monkeypatch.setattr(jsonlines.pjson, "read_json", counted)
    monkeypatch.setattr(jsonlines, "sparse_wide", lambda b, s: widths.append(len(b)) or wide(b, s))
    learned: TextFields = set()
    table = _parse(block, learned)
    assert sizes == [len(block)]
    assert widths == [len(block)]
    monkeypatch.undo()
    monkeypatch.setattr(jsonlines, "sampled_stamps", lambda sampled: set())  # the old way: parsed twice
    assert learned == {("ts",)} and table is not None and table.equals(_parse(block, set()))
    assert table.column("ts")[0].as_py().isoformat() == "2024-08-02T08:00:00+00:00"


@pytest.mark.parametrize(
    "text",
    [
        "2024-08-02",
        "2024-08-02T10",
        "2024-08-02T10Z",
        "2024-08-02T10:00",
        "2024-08-02 10:00:00Z",
        "2024-08-02T10:00:00+02:00",
        "2024-08-02T10:00:00-0500",
        "2024-08-02T10:00:00-05",
        "0001-01-01",
        # not timestamps to pyarrow's inference: text either way
        "2024-08-02T10:00:00.123Z",
        "2024-8-2",
        "20240802",
        "2024-02-30",
        "2024-08-02T25:00:00",
        "2024-08-02Z",
        "١٢٣٤-٠٨-٠٢",
        "10:00",
    ],
)
def test_the_sampled_timestamp_fields_give_the_table_pyarrows_inference_gives(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the pattern makes of a value, the table is the one parsed without it (inference,
    then again with the timestamps as text): a field it takes that pyarrow would not is text both ways."""
    lines = [json.dumps({"id": i, "at": text, "pad": "x" * 200}).encode() for i in range(400)]
    block = b"\n".join(lines) + b"\n"
    assert len(block) >= 64 << 10
    table = _parse(block, set())
    monkeypatch.setattr(jsonlines, "sampled_stamps", lambda sampled: set())
    old = _parse(block, set())
    assert table is not None and old is not None
    assert table.equals(old), (table.schema, old.schema)


def test_a_timestamp_field_first_seen_past_the_sample_is_still_recognised() -> None:
    late = b'{"id": 9000, "ts": "2024-08-02T10:00:00+02:00", "late": "2024-08-03T00:00:00Z", "pad": ""}'
    learned: TextFields = set()
    table = _parse(_stamped(10_000, n9000=late), learned)
    assert learned == {("ts",), ("late",)} and table is not None
    assert table.schema.field("late").type.tz == "UTC"
    assert table.column("late")[9000].as_py().isoformat() == "2024-08-03T00:00:00+00:00"


def test_a_sampled_timestamp_field_with_a_later_value_that_is_not_one_stays_text_as_written() -> None:
    odd = b'{"id": 9000, "ts": "soon", "pad": ""}'
    table = _parse(_stamped(10_000, n9000=odd), set())
    assert table is not None and table.schema.field("ts").type == pa.string()
    assert table.column("ts")[0].as_py() == "2024-08-02T10:00:00+02:00"
    assert table.column("ts")[9000].as_py() == "soon"


@pytest.mark.parametrize("plain", [False, True])
def test_a_line_pyarrow_reads_as_two_objects_or_an_object_over_lines_takes_the_per_line_path(
    plain: bool,
) -> None:
    """pyarrow's reader takes `{..} {..}` on one line as two rows and an object broken over lines as
    one: a block of them numbered its rows with fewer line numbers than rows, and the encoder's dead
    letter for the last row then failed the batch on every run (IndexError). Such lines are dead
    letters, as the per-line path makes them, and every other row keeps its own line."""
    body = b'{"id": 1} {"id": 2}\n{"id": 3}\n\n{"id":\n4}\n{"id": 5}\n'
    for piece in (16, 1 << 20):
        rows, dead, (offset, line) = _read(body, plain=plain, piece=piece, settled=True, max_record=1 << 20)
        assert rows == [(3, 2), (5, 6)], piece
        assert [d for d, _ in dead] == [1, 4, 5], piece
        assert (offset, line) == (len(body), 7)
    tables, letters = jsonlines.parse_lines(body, "body")
    assert [(t.column("id").to_pylist(), first, lines) for t, first, lines in tables] == [([3, 5], 1, [2, 6])]
    assert [(d.line, d.raw) for d in letters] == [(1, b'{"id": 1} {"id": 2}'), (4, b'{"id":'), (5, b"4}")]


def test_blank_lines_alone_keep_the_fast_parse_and_number_each_row_by_its_line() -> None:
    tables, letters = jsonlines.parse_lines(b'{"id": 1}\n\n  \n{"id": 2}\n', "body")
    assert letters == []
    assert [(t.column("id").to_pylist(), lines) for t, _, lines in tables] == [([1, 2], [1, 4])]


def test_integers_past_two_to_the_53_inside_lists_and_objects_keep_every_digit() -> None:
    """pyarrow's reader turns an integer past int64 into a double, and an integer beside fractions
    in one list into a double too: inside a list or an object that changed the value
    (9007199254740993 became 9007199254740992.0). Only top-level columns were checked; now every
    depth is, and such a block keeps its values exactly, as the per-line path does."""
    body = (
        b'{"id": 1, "a": [9223372036854775808], "b": {"c": 9007199254740993}}\n'
        b'{"id": 2, "a": [1.5, 9007199254740993], "b": {"c": 1}}\n'
    )
    tables, dead = jsonlines.parse_lines(body, "body")
    assert dead == []
    rows = [row for table, _, _ in tables for row in table.to_pylist()]
    text = json.dumps(rows)
    assert "9223372036854775808" in text and "9007199254740993" in text
    assert "e+18" not in text and "9007199254740992" not in text
    # what the per-line path gives (the reference for exact values): the same rows
    slow: list[tuple[pa.Table, int, list[int] | None]] = []
    jsonlines._parse_json_slowly(body, 1, "body", lambda t, f, n, _=-1: slow.append((t, f, n)), dead.extend)
    assert [r for t, _, _ in slow for r in t.to_pylist()] == rows
    # a nested double within 2**53 is no reason to leave the fast path
    small = b'{"a": [1.5, 2], "b": {"c": 0.25}}\n'
    assert _parse(small, set()) is not None


ODD_LINES = [
    b'{"a":1,"a":2}\n',
    b'{"a":1}\n[1,2]\n5\nnull\n"x"\n',
    b'{"a":1}\x00\n\x1e{"a":1}\n{"a":2}\x0c\n',
    b'{"a":1}\n\xef\xbb\xbf{"a":2}\n\xef\xbb\xbf\xef\xbb\xbf{"a":3}\n',
    b'\xef\xbb\xbf\n{"a":1}\n',
    b' \xef\xbb\xbf{"a":1}\n',  # (not at the line's start: invalid)
    b'{"a":"\\u0000"}\n{"a":"\\ud800"}\n{"a":"\\ud83d\\ude00"}\n{"a\\u0000b":1}\n',
    b'{"a":"x\ty"}\n{"a":"x\x01y"}\n{"a":"x\ry"}\n',
    b'{"a":1.0}\n{"a":2}\n',
    b'{"a":9223372036854775808}\n{"a":-9223372036854775809}\n{"a":18446744073709551615}\n',
    b'{"a":1e5}\n{"a":1E400}\n{"a":-1e400}\n{"a":1.0e-400}\n{"a":-0.0}\n{"a":-0}\n{"a":0.1e1}\n',
    b'{"a":1.5}\n{"a":9007199254740993}\n',
    b'{"a":123456789012345678}\n{"a":0.5}\n',
    b'{"a":[9223372036854775808]}\n',
    b'{"a":{"b":9223372036854775808}}\n',
    b'{"a":[1.5, 9007199254740993]}\n',
    b'{"a":true}\n{"a":1}\n',
    b'{"a":{}}\n{"a":[]}\n{"a":[null]}\n{"a":[[]]}\n{"a":[{}]}\n',
    b'{"a":[1,"x"]}\n{"a":[1,2.5]}\n',
    b'{"a":{"b":1}}\n{"a":{"c":2}}\n',
    b'{"a":[{"b":1},{"c":"x"}]}\n',
    b'{"":1}\n{"a.b":1,"a":{"b":2}}\n',
    b'{"A":1,"a":2}\n{"a":1}\n{"A":2}\n',
    b'{"a":"x"}\n{"a":{"b":1}}\n',
    b'{"a":"\xff"}\n{"a":"\xc3\xa9"}\n{"\xc3\xa9":1}\n',
    b'{"a":1}\r\n{"a":2}\r\n',
    b'{"a":1}{"b":2}\n{"a":1} {"a":2}\n{"a":3}\n',
    b'{"a":"2024-01-01"}\n{"a":"2024-01-01T00:00:00"}\n',
    b'{"a":"2024-01-01T00:00:00Z"}\n{"a":"2024-01-01T00:00:00+01:00"}\n',
    b'{"a":"2024-08-02T10:00:00.123456789Z"}\n{"a":"2024-01-01T00:00:00.1234567890Z"}\n',
    b'{"a":"2024-08-02 10:00:00"}\n{"a":"2024-08-02T10:00:00z"}\n{"a":"2024-08-02T10:00Z"}\n',
    b'{"a":"20240802T100000Z"}\n{"a":"2024-08-02T24:00:00Z"}\n{"a":"2024-08-02T10:00:60Z"}\n',
    b'{"a":"2024-13-01"}\n{"a":"2024-02-30T00:00:00Z"}\n{"a":"+2024-08-02"}\n{"a":"2024-W31"}\n',
    b'{"a":"0001-01-01T00:00:00Z"}\n{"a":"9999-12-31T23:59:59.999999999Z"}\n',
    b'{"a":["2024-08-02T10:00:00Z","x"]}\n',
    b'{"a":{"t":"2024-08-02T10:00:00+02:00"}}\n{"a":{"t":"2024-08-02T10:00:00Z"}}\n',
]


def _as_compared(tables: Parsed, dead: list[DeadLetter]) -> tuple[list[Any], list[Any], list[str]]:
    rows = []
    for table, first, lines in tables:
        # (nanosecond times have no Python value without pandas: compared as text)
        fields = [f.with_type(pa.string()) if pa.types.is_timestamp(f.type) else f for f in table.schema]
        shown = table.cast(pa.schema(fields))
        rows += [(lines[i] if lines else first + i, r) for i, r in enumerate(shown.to_pylist())]
    return rows, sorted((d.line, d.reason, d.raw) for d in dead), [str(t.schema) for t, _, _ in tables]


@pytest.mark.parametrize("block", ODD_LINES)
def test_the_fast_parse_gives_what_the_per_line_parse_gives_for_odd_lines(block: bytes) -> None:
    """The per-line path is the reference for exact values: whatever pyarrow's reader takes or
    refuses, the rows, their lines, their types and the dead letters are the per-line path's."""
    fast = _as_compared(*jsonlines.parse_lines(block, "s"))
    tables: Parsed = []
    dead: list[DeadLetter] = []
    jsonlines._parse_json_slowly(block, 1, "s", lambda t, f, n, _=-1: tables.append((t, f, n)), dead.extend)
    assert fast == _as_compared(tables, dead)


def test_files_joined_with_cat_each_with_a_byte_order_mark_lose_no_record() -> None:
    """`cat a.jsonl b.jsonl` where each was written with a UTF-8 byte order mark: the second file's
    first line starts with one. It was a dead letter ("Expecting value"); the mark is no part of
    the JSON, and the record is read."""
    body = b'\xef\xbb\xbf{"id": 1}\n{"id": 2}\n\xef\xbb\xbf{"id": 3}\n'
    tables, dead = jsonlines.parse_lines(body, "joined")
    assert dead == []
    assert [(r["id"], (lines or [])[i]) for t, _, lines in tables for i, r in enumerate(t.to_pylist())] == [
        (1, 1),
        (2, 2),
        (3, 3),
    ]
