"""PUT bodies sent a slice per event-loop turn, without copies of the whole object.

Given `bytes`, aiohttp on Python < 3.12.9 joins the headers to the body (a copy of the object), and
asyncio's socket transport copies what the first `send` did not take twice more (a slice, then into
its buffer), all on the event loop: a 28 MB object held the loop 50 ms on an idle machine and
100-200 ms beside an encode, which the HTTP source's senders saw as 202s that late. A `Body` is
written as 1 MiB views of the one buffer instead, each sent before the next (aiohttp drains the
transport between them), so the loop is never held longer than one slice.

botocore sees a seekable file (it reads it for the payload's SHA-256 unless the body carries it:
see signing.py); aiohttp sees the `BodyPayload` registered for it below.
"""

from __future__ import annotations

import os
from typing import Any

import anyio.lowlevel
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Order, Payload, payload_type

SLICE = 1 << 20


class Body:
    """An object's bytes, read-only, as a seekable file (not an `io.IOBase`: aiobotocore would wrap
    it and aiohttp read it 64 KiB per turn through a thread)."""

    def __init__(self, data: bytes, sha256: str = "") -> None:
        self.data = data
        self.sha256 = sha256  # hex, when known: signed as is, never computed on the loop (signing.py)
        self._view = memoryview(data)
        self._pos = 0

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Body({len(self.data)} bytes)"

    def read(self, size: int = -1) -> memoryview:
        """The rest in one view, whatever `size` asks: botocore hashes what it reads, and one
        `update` takes the GIL once, where 1 MiB reads take it (and wait for it) 28 times."""
        chunk = self._view[self._pos :]
        self._pos = len(self.data)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: len(self.data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release (botocore may close a file it was given)."""

    def slices(self, limit: int | None = None) -> list[memoryview]:
        """The whole body (every attempt sends all of it, wherever a read left the position)."""
        view = self._view if limit is None else self._view[:limit]
        return [view[i : i + SLICE] for i in range(0, len(view), SLICE)]


@payload_type(Body, order=Order.try_first)
class BodyPayload(Payload):
    _value: Body

    def __init__(self, value: Body, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        self._size = len(value)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._value.data.decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        for piece in self._value.slices(content_length):
            await writer.write(piece)  # waits for the transport to drain past its high-water mark
            # ... and when the socket took it all, still a turn of the loop's: each `send` gives up
            # the GIL, and taking it back behind an encode's thread can take a switch interval.
            await anyio.lowlevel.checkpoint()
