from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from ingest.parsing.sniff import UTF8, open_text, sniff, text_encoding


def test_compression_comes_from_the_bytes_and_a_mismatch_is_told(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl.zst").write_bytes(gzip.compress(b"x\n"))
    found = sniff(tmp_path / "a.jsonl.zst", "zstd")
    assert found.compression == "gzip" and found.mismatch() is not None
    (tmp_path / "b.jsonl.gz").write_bytes(b"plain\n")
    found = sniff(tmp_path / "b.jsonl.gz", "gzip")
    assert found.compression is None and found.plain and "uncompressed" not in (found.mismatch() or "x")
    (tmp_path / "c.jsonl").write_bytes(b"plain\n")
    assert sniff(tmp_path / "c.jsonl", None).mismatch() is None


@pytest.mark.parametrize(
    ("head", "configured", "expected"),
    [
        (b"\xff\xfea\x00", "utf-8", "utf-16"),
        (b"\xfe\xff\x00a", "utf-8", "utf-16"),
        (b"\xef\xbb\xbfa", "utf-8", "utf-8-sig"),
        (b"abc", "utf-8", UTF8),
        (b"abc", "CP1252", "cp1252"),
        (b"\xff\xfea\x00", "latin-1", "iso8859-1"),  # a setting other than UTF-8/16 is taken as it is
    ],
)
def test_a_byte_order_mark_wins_over_a_utf_setting(head: bytes, configured: str, expected: str) -> None:
    assert text_encoding(head, configured) == expected


def test_text_in_another_encoding_is_read_as_utf8(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_bytes(gzip.compress("Prénom\n".encode("utf-16")))
    found = sniff(p, "gzip")
    assert (found.compression, found.encoding, found.plain) == ("gzip", "utf-16", False)
    with open_text(p, found.compression, found.encoding) as stream:
        assert stream.read() == "Prénom\n".encode()
