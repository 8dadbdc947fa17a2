"""Rows too long for pyarrow's CSV block are taken out of the stream, whole, and the rest read on."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pcsv

from ingest.parsing.csvrows import PIECE, LongRows


def _through(data: bytes, limit: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    long: list[tuple[int, bytes]] = []

    def on_long(line: int, pieces: Iterator[bytes]) -> None:
        long.append((line, b"".join(pieces)))

    rows = LongRows(io.BytesIO(data), limit, '"', on_long)
    return io.BufferedReader(rows, PIECE).read(), long


def test_a_long_row_is_taken_out_with_its_line_and_every_other_byte_passes() -> None:
    head = b"id,name\n"
    before = b"".join(f"{i},n{i}\n".encode() for i in range(1000))
    huge = b'1000,"' + b"x" * (3 * PIECE) + b'"\n'
    after = b"".join(f"{i},n{i}\n".encode() for i in range(1001, 2000))
    out, long = _through(head + before + huge + after, limit=PIECE)
    assert out == head + before + after
    assert long == [(1002, huge)]


def test_newlines_and_doubled_quotes_inside_a_quoted_cell_do_not_end_a_row() -> None:
    cell = b'"say ""hi""\nthen\nmore' + b"y" * (2 * PIECE) + b'"'
    data = b"a,b\n1,x\n2," + cell + b"\n3,z\n"
    out, long = _through(data, limit=PIECE)
    assert out == b"a,b\n1,x\n3,z\n"
    assert long == [(3, b"2," + cell + b"\n")]
    table = pcsv.read_csv(pa.BufferReader(out))
    assert table.column("a").to_pylist() == [1, 3]


def test_a_last_long_row_without_a_newline_and_old_mac_line_ends() -> None:
    out, long = _through(b"a\n1\n" + b"z" * (2 * PIECE), limit=PIECE)
    assert out == b"a\n1\n" and long == [(3, b"z" * (2 * PIECE))]
    mac = b"a\r" + b"".join(f"{i}\r".encode() for i in range(100_000))
    out, long = _through(mac, limit=PIECE)
    assert out == mac and long == []
