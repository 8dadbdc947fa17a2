from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from ingest.durable.deadletters import DeadLetter
from ingest.parsing import formats, jsonlines
from ingest.parsing.formats import detect, read_file
from ingest.parsing.jsonlines import Unreadable


def _read(
    path: Path, fmt: str = "", max_record: int = jsonlines.DEFAULT_MAX_RECORD
) -> tuple[list[tuple[list[dict[str, object]], list[int]]], list[DeadLetter]]:
    detected = detect(path, fmt)
    assert detected is not None
    chunks: list[tuple[list[dict[str, object]], list[int]]] = []
    dead: list[DeadLetter] = []

    def emit(table: pa.Table, first: int, lines: list[int] | None) -> None:
        chunks.append((table.to_pylist(), lines or [first + i for i in range(table.num_rows)]))

    read_file(path, detected[0], detected[1], path.name, emit, dead.extend, max_record)
    return chunks, dead


def _rows_and_lines(chunks: list[tuple[list[dict[str, object]], list[int]]]) -> list[tuple[object, int]]:
    return [(r["id"], n) for t, ns in chunks for r, n in zip(t, ns, strict=True)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jsonl", ("jsonl", None)),
        ("a.ndjson.gz", ("jsonl", "gzip")),
        ("a.json.zst", ("json", "zstd")),  # a document or JSON lines, told by its content
        ("a.CSV", ("csv", None)),
        ("a.csv.gz", ("csv", "gzip")),
        ("a.parquet", ("parquet", None)),
        ("a.txt", None),
        ("a.parquet.gz", None),
    ],
)
def test_detect_by_name(name: str, expected: object) -> None:
    assert detect(Path(name)) == expected


def test_jsonl_blocks_keep_line_numbers_across_blank_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formats, "READ_BLOCK", 64)  # many blocks, cut at line ends
    monkeypatch.setattr(jsonlines, "READ_BLOCK", 64)
    lines = [f'{{"id": {i}}}' if i % 7 else "" for i in range(1, 60)]
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(lines))  # no final newline
    chunks, dead = _read(p)
    rows = [(r["id"], line) for table, nums in chunks for r, line in zip(table, nums, strict=True)]
    assert rows == [(i, i) for i in range(1, 60) if i % 7]
    assert len(chunks) > 5 and not dead


def test_bad_lines_go_to_dead_letters_and_good_ones_stay(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl.gz"
    body = b'{"id": 1}\n{"id": 2\n[3]\n{"id": 4}\n\xff\xfe\n{"id": 5}\n'
    p.write_bytes(gzip.compress(body))
    chunks, dead = _read(p)
    assert _rows_and_lines(chunks) == [(1, 1), (4, 4), (5, 6)]
    assert [(d.line, d.reason.split(":")[0]) for d in dead] == [
        (2, "invalid JSON"),
        (3, "not a JSON object"),
        (5, "invalid UTF-8"),
    ]
    assert dead[2].as_json()["raw_base64"] == "//4="


def test_truncated_gzip_keeps_the_readable_part(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl.gz"
    full = gzip.compress(b"".join(b'{"id": %d, "pad": "%s"}\n' % (i, b"x" * 50) for i in range(5000)))
    p.write_bytes(full[: len(full) // 2])
    chunks: list[tuple[list[dict[str, Any]], int]] = []
    dead: list[DeadLetter] = []
    emit = lambda table, first, lines: chunks.append((table.to_pylist(), first))  # noqa: E731
    with pytest.raises(Unreadable, match="unreadable from line") as raised:
        read_file(p, "jsonl", "gzip", p.name, emit, dead.extend)
    ids = [r["id"] for t, _ in chunks for r in t]
    assert len(ids) > 1000 and ids == list(range(len(ids)))  # the readable part, no gaps
    assert f"line {len(ids) + 1} on" in str(raised.value) and dead == []  # the file is kept, not acked


def test_csv_ragged_rows_are_dead_letters(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("id,name\n1,a\n2\n3,c\n4,d,extra\n5,e\n")
    chunks, dead = _read(p)
    assert [r for t, _ in chunks for r in t] == [
        {"id": 1, "name": "a"},
        {"id": 3, "name": "c"},
        {"id": 5, "name": "e"},
    ]
    assert [(d.line, d.raw) for d in dead] == [(3, "2"), (5, "4,d,extra")]
    # Rows after a skipped row keep their real line numbers.
    assert _rows_and_lines(chunks) == [(1, 2), (3, 4), (5, 6)]


BLANK_FIRST = b"\n\r\n  \nid,name\n1,a\n2\n3,c\n"  # the header on line 4


@pytest.mark.parametrize("compressed", [False, True])
def test_blank_lines_before_a_csv_header_are_skipped_and_every_row_lands(
    tmp_path: Path, compressed: bool
) -> None:
    """A blank first line was taken for the header: the file read as empty, and it was acknowledged
    with none of its rows. The header is the first row that is not blank; lines keep their numbers."""
    p = tmp_path / ("a.csv.gz" if compressed else "a.csv")
    p.write_bytes(gzip.compress(BLANK_FIRST) if compressed else BLANK_FIRST)
    chunks, dead = _read(p)
    assert _rows_and_lines(chunks) == [(1, 5), (3, 7)]
    assert [(d.line, d.raw) for d in dead] == [(6, "2")]


def _stdin_csv(data: bytes) -> tuple[list[tuple[dict[str, object], int]], list[DeadLetter]]:
    rows: list[tuple[dict[str, object], int]] = []
    dead: list[DeadLetter] = []

    def emit(table: pa.Table, first: int, lines: list[int] | None) -> None:
        numbers = lines or [first + i for i in range(table.num_rows)]
        rows.extend(zip(table.to_pylist(), numbers, strict=True))

    formats.read_stream(io.BytesIO(data), "csv", "stdin", emit, dead.extend, 1 << 20)
    return rows, dead


@pytest.mark.parametrize(
    ("data", "names", "lines"),
    [
        (BLANK_FIRST, ["id", "name"], [5, 6, 7]),
        (b'\nid,"first\nname"\n1,a\n2\n3,c\n', ["id", "first\nname"], [4, 5, 6]),
        (b"\r\rid,name\r1,a\r2\r3,c\r", ["id", "name"], [4, 5, 6]),
    ],
)
def test_standard_input_csv_skips_blank_lines_before_its_header_and_keeps_a_quoted_one_whole(
    data: bytes, names: list[str], lines: list[int]
) -> None:
    """The same for standard input, whose rows would have been lost for good; a header cell holding
    a newline (quoted) is one header row, not two; rows may end with CR alone."""
    rows, dead = _stdin_csv(data)
    assert [list(r) for r, _ in rows] == [names, names]
    assert [r[names[0]] for r, _ in rows] == [1, 3]
    assert [(d.line, d.raw) for d in dead] == [(lines[1], "2")]
    assert [n for _, n in rows] == [lines[0], lines[2]]


def test_old_mac_csv_with_cr_line_ends_is_read_with_its_header(tmp_path: Path) -> None:
    """Excel's "CSV (Macintosh)" ends rows with CR alone: the header row could not be found (the
    file was kept for ever as unreadable). Rows, header and line numbers are read as with LF."""
    p = tmp_path / "mac.csv"
    p.write_bytes(b"\rid,name\r1,a\r2\r3,c\r")
    chunks, dead = _read(p)
    assert _rows_and_lines(chunks) == [(1, 3), (3, 5)]
    assert [(d.line, d.raw) for d in dead] == [(4, "2")]


def test_a_csv_header_longer_than_max_record_bytes_and_one_with_a_quoted_newline(tmp_path: Path) -> None:
    """The header row is read apart (up to 16 MiB): it is never a dead letter, however long, and a
    quoted name holding a newline is one row."""
    names = [f"a_rather_long_column_name_number_{i:05d}" for i in range(20_000)]  # 0.8 MB
    header = ",".join(names).encode() + b"\n"
    row = b",".join(b"7" for _ in names) + b"\n"
    p = tmp_path / "wide.csv"
    p.write_bytes(header + row + row)
    chunks, dead = _read(p, max_record=64 << 10)
    assert dead == [] and [len(r) for t, _ in chunks for r in t] == [20_000, 20_000]
    q = tmp_path / "quoted.csv"
    q.write_bytes(b'id,"first\nname"\n1,a\n3,c\n')
    chunks, dead = _read(q)
    assert dead == [] and [r for t, _ in chunks for r in t] == [
        {"id": 1, "first\nname": "a"},
        {"id": 3, "first\nname": "c"},
    ]
    assert _rows_and_lines(chunks) == [(1, 3), (3, 4)]


def test_a_json_file_of_objects_one_after_another_as_jq_prints_them(tmp_path: Path) -> None:
    """`jq . events.json` prints each object over several lines, one after another: not one JSON
    document, and not JSON lines. It was refused whole ("extra data after the document") and kept
    for ever; each object is now a row, numbered by its first line. One that does not parse still
    refuses the whole file, and an array followed by another stays refused."""
    p = tmp_path / "jq.json"
    p.write_text('{\n  "id": 1,\n  "tags": ["a"]\n}\n{\n  "id": 2,\n  "tags": []\n}\n7\n')
    chunks, dead = _read(p)
    assert [r for t, _ in chunks for r in t] == [{"id": 1, "tags": ["a"]}, {"id": 2, "tags": []}]
    assert _rows_and_lines(chunks) == [(1, 1), (2, 5)]
    assert [(d.line, d.raw) for d in dead] == [(9, b"7")]  # not an object: a dead letter
    for broken in ('{\n  "id": 1\n}\n{\n  "id":\n', '[{"id": 1}]\n[{"id": 2}]\n'):
        p.write_text(broken)
        with pytest.raises(pa.ArrowInvalid, match="nothing of it was ingested"):
            _read(p)


@pytest.mark.parametrize("block", [64, 1 << 20])
def test_lines_over_max_record_bytes_are_dead_letters_and_the_rest_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(formats, "READ_BLOCK", block)  # the long lines span blocks, or sit inside one
    monkeypatch.setattr(jsonlines, "READ_BLOCK", block)
    long = '{"id": 3, "blob": "' + "x" * 5000 + '"}'
    p = tmp_path / "a.jsonl"
    p.write_text(
        "\n".join(['{"id": 1}', '{"id": 2}', long, '{"id": 4}', long.replace("3", "5", 1), '{"id": 6}'])
    )
    chunks, dead = _read(p, max_record=1000)
    assert _rows_and_lines(chunks) == [(1, 1), (2, 2), (4, 4), (6, 6)]
    assert [d.line for d in dead] == [3, 5]
    assert "over batch.max_record_bytes (1000)" in dead[0].reason
    assert f"record is {len(long)} bytes" in dead[0].reason


def test_csv_type_change_in_a_later_block_is_read_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formats, "READ_BLOCK", 256)
    p = tmp_path / "a.csv"
    p.write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(100)) + "100,oops\n")
    chunks, dead = _read(p)
    values = [str(r["v"]) for t, _ in chunks for r in t]
    assert values == [str(i) for i in range(100)] + ["oops"] and not dead


def test_parquet_streams_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setattr(formats, "PARQUET_BATCH_ROWS", 10)
    pq.write_table(pa.table({"id": list(range(35))}), tmp_path / "a.parquet")
    chunks, _ = _read(tmp_path / "a.parquet")
    assert [len(t) for t, _ in chunks] == [10, 10, 10, 5]
    assert chunks[3][1] == [31, 32, 33, 34, 35]


def test_a_growing_file_is_read_from_where_it_stopped_and_a_half_line_waits(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id"')
    rows: list[tuple[object, int]] = []
    dead: list[DeadLetter] = []

    def emit(table: pa.Table, first: int, lines: list[int] | None) -> None:
        numbers = lines or [first + i for i in range(table.num_rows)]
        rows.extend((r["id"], n) for r, n in zip(table.to_pylist(), numbers, strict=True))

    def read(start: tuple[int, int], settled: bool) -> tuple[int, int]:
        return read_file(path, "jsonl", None, "live", emit, dead.extend, start=start, settled=lambda: settled)

    pos = read((0, 1), settled=False)  # the writer may still finish line 3
    assert rows == [(1, 1), (2, 2)] and dead == [] and pos == (20, 3)
    with path.open("ab") as fh:
        fh.write(b': 3}\n{"id": 4}')
    pos = read(pos, settled=True)  # done growing: the last line, without its newline, counts
    assert rows == [(1, 1), (2, 2), (3, 3), (4, 4)] and dead == []
    assert pos == (path.stat().st_size, 5)


def test_raw_lines_returns_lines_as_written(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n{"b":  2}\nlast'))
    assert formats.raw_lines(path, "gzip", [2, 3]) == {2: b'{"b":  2}', 3: b"last"}
