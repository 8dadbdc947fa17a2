"""CSV rows too long to parse: taken out of the stream before pyarrow sees them.

pyarrow's streaming CSV reader fails on a row longer than its block, and nothing after that row
can be read: a file would be kept for ever, standard input lost past that row. `LongRows` passes
the bytes through in pieces that end at row ends, and a row with no end within `limit` bytes of its
start (a 70 MB cell) goes to `on_long` as it arrives, never held whole; the rows after it are read.
Row ends are found with C-speed scans: a newline with an even number of quote characters before it
(quotes inside a quoted cell are doubled, so they never change that parity).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

PIECE = 1 << 20
HEADER_LIMIT = 16 << 20  # a header row longer than this is no header

# on_long(line, pieces): the row starting on `line` (counted from the stream's first line), in pieces
OnLong = Callable[[int, Iterator[bytes]], None]


def first_row_end(data: bytes | bytearray, quote: bytes, newline: bytes = b"\n") -> int:
    """Just past the first row's end in `data` (which starts at a row start; a quoted cell may hold
    newlines), 0 if `data` does not hold it."""
    start = 0
    while (p := data.find(newline, start)) >= 0:
        if not quote or data.count(quote, 0, p) % 2 == 0:
            return p + 1
        start = p + 1
    return 0


class LongRows(io.RawIOBase):
    def __init__(self, raw: Any, limit: int, quote: str, on_long: OnLong) -> None:
        self.raw = raw
        self.limit = limit
        self.quote = quote.encode() if quote else b""
        self.on_long = on_long
        self.line = 1  # the line the next row starts on
        self.newline = b"\n"
        self._buf = bytearray()
        self._out = memoryview(b"")
        self._eof = False
        self._sniffed = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            if self._eof and not self._buf:
                return 0
            self._next()
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._out))
        view[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _read(self) -> bytes:
        piece: bytes = self.raw.read(PIECE)
        if not piece:
            self._eof = True
        elif not self._sniffed:  # a file with old Mac line ends (CR only): rows end at CR
            self._sniffed = True
            if b"\n" not in piece and b"\r" in piece:
                self.newline = b"\r"
        return piece

    def _next(self) -> None:
        while len(self._buf) < self.limit and not self._eof:
            self._buf += self._read()
        if self._eof and len(self._buf) <= self.limit:
            self._emit(len(self._buf))
            return
        cut = self._last_end(self._buf)
        if cut > 0:
            self._emit(cut)
        else:
            self._divert()

    def _emit(self, cut: int) -> None:
        out = bytes(self._buf[:cut])
        del self._buf[:cut]
        self.line += out.count(self.newline)
        self._out = memoryview(out)

    def _parity(self, data: bytes | bytearray, start: int = 0, end: int | None = None) -> int:
        if not self.quote:
            return 0
        return data.count(self.quote, start, len(data) if end is None else end) % 2

    def _last_end(self, data: bytearray) -> int:
        """Just past the last row end in `data` (which starts at a row start), 0 if none."""
        quotes = self._parity(data)
        end = len(data)
        while (p := data.rfind(self.newline, 0, end)) >= 0:
            if (quotes - self._parity(data, p)) % 2 == 0:
                return p + 1
            end = p
        return 0

    def _divert(self) -> None:
        """The row at the start of the buffer has no end within `limit`: stream it to `on_long`."""
        line = self.line

        def pieces() -> Iterator[bytes]:
            parity = self._parity(self._buf)
            held, self._buf = bytes(self._buf), bytearray()
            yield held
            self.line += held.count(self.newline)
            while not self._eof:
                piece = self._read()
                start = 0
                while (p := piece.find(self.newline, start)) >= 0:
                    if (parity + self._parity(piece, 0, p)) % 2 == 0:
                        self._buf += piece[p + 1 :]
                        self.line += piece.count(self.newline, 0, p + 1)
                        yield piece[: p + 1]
                        return
                    start = p + 1
                parity = (parity + self._parity(piece)) % 2
                self.line += piece.count(self.newline)
                yield piece

        self.on_long(line, pieces())
