"""What a file really is: its compression told by its magic bytes (not its name), and its text
encoding told by a byte-order mark or the source's `encoding` setting.

A `.jsonl.zst` holding gzip data, or a `.jsonl.gz` holding plain text, is read as what its bytes
are; the mismatch is logged once. Text in another encoding than UTF-8 is transcoded to UTF-8 as it is
read (pyarrow's transcoding stream), so every later step sees UTF-8 only.
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"))
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
UTF8 = "utf-8"


@dataclass(frozen=True)
class Sniffed:
    compression: str | None  # by the magic bytes
    encoding: str  # "utf-8": read as is; anything else is transcoded to UTF-8
    named: str | None  # the compression the name says (differs from `compression` on a mismatch)

    @property
    def plain(self) -> bool:
        """Bytes as stored are the UTF-8 text read: a byte offset in the file is one in the text."""
        return self.compression is None and self.encoding == UTF8

    def mismatch(self) -> str | None:
        if self.compression == self.named:
            return None
        said = f"its name says {self.named}" if self.named else "its name says uncompressed"
        found = self.compression or "not compressed"
        return f"{said}, its bytes are {found}: read as {found}"


def canonical_encoding(name: str) -> str:
    """The codec's own name (`cp1252`, `utf-16`, …); raises LookupError for an unknown one."""
    return codecs.lookup(name).name.replace("_", "-")


def compression_of(head: bytes) -> str | None:
    for magic, codec in _MAGIC:
        if head.startswith(magic):
            return codec
    return None


def sniff(path: Path, named: str | None, encoding: str = UTF8) -> Sniffed:
    """Read the file's first bytes (and, if compressed, the first decompressed ones)."""
    fd = os.open(path, os.O_RDONLY)  # os.open, not open(): a small file pays for this once more
    try:
        head = os.read(fd, 4)
    finally:
        os.close(fd)
    compression = compression_of(head)
    if compression is not None:
        try:
            with pa.input_stream(str(path), compression=compression) as stream:
                head = stream.read(4)
        except (OSError, pa.ArrowException):
            head = b""  # the read itself will say what is wrong with it
    return Sniffed(compression, text_encoding(head, encoding), named)


def text_encoding(head: bytes, configured: str = UTF8) -> str:
    """A byte-order mark wins over a UTF-8/UTF-16 setting (Excel writes one); any other setting is
    taken as it is (a cp1252 file has no mark)."""
    if configured != UTF8:
        configured = canonical_encoding(configured)
    if head[:1] not in (b"\xef", b"\xff", b"\xfe") and configured == UTF8:
        return UTF8  # the usual case, decided without a lookup
    if configured in (UTF8, "utf-8-sig", "utf-16"):
        for bom, codec in _BOMS:
            if head.startswith(bom):
                return codec
        return UTF8 if configured == "utf-8-sig" else configured
    return configured


def open_text(path: Path, compression: str | None, encoding: str = UTF8) -> Any:
    """A pyarrow input stream of the file's text as UTF-8 (use it in `with`: closing it closes the
    file)."""
    stream = pa.input_stream(str(path), compression=compression)
    if encoding == UTF8:
        return stream
    return pa.transcoding_input_stream(stream, encoding, UTF8)
