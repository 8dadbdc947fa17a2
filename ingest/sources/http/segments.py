"""Segments: append-only files in the spool that hold accepted request bodies until they are in R2.

The HTTP source answers 202 only once a request's block is in a segment (fdatasync) *and* the journal
says so (one transaction per group of requests, see source.py). Bytes past the last journaled block are
never read: a request that was written but not journaled before a crash was never answered, so its
sender sends it again. A segment is deleted once every block in it is acknowledged and it is closed
(a new one is started past `roll_bytes` or `roll_seconds`, and at every start).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ingest.durable.faults import disk_full_point
from ingest.durable.files import fsync_dir

PREFIX = "http:"  # unit ids of blocks start with this


@dataclass(frozen=True)
class Block:
    """One request's accepted records: `length` bytes at `offset` of `segment`, `lines` lines."""

    segment: str
    offset: int
    length: int
    lines: int
    table: str
    request: str

    @property
    def id(self) -> str:
        """The unit id, which is also all a restart needs to find and read the block again."""
        return f"{PREFIX}{self.segment}:{self.offset}:{self.length}:{self.lines}:{self.table}:{self.request}"

    @classmethod
    def parse(cls, unit_id: str) -> Block | None:
        parts = unit_id.removeprefix(PREFIX).split(":")
        if not unit_id.startswith(PREFIX) or len(parts) != 6:
            return None
        segment, offset, length, lines, table, request = parts
        return cls(segment, int(offset), int(length), int(lines), table, request)


class Segments:
    """Blocking methods: call them from a thread. One writer (the HTTP source's commit leader)."""

    def __init__(self, directory: Path, roll_bytes: int = 64 << 20, roll_seconds: float = 60.0) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.roll_bytes = roll_bytes
        self.roll_seconds = roll_seconds
        self._current: str | None = None
        self._fd: int | None = None
        self._size = 0
        self._opened = 0.0
        self._live: dict[str, set[str]] = {}  # segment → ids of its blocks not yet acknowledged
        self._lock = threading.Lock()  # appends (the commit leader) and releases (acks) run in threads

    def path(self, segment: str) -> Path:
        return self.dir / segment

    def recover(self, blocks: list[Block]) -> None:
        """At start: segments holding journaled blocks are kept (closed); the others are removed
        (acknowledged, or written but never journaled)."""
        for block in blocks:
            self._live.setdefault(block.segment, set()).add(block.id)
        removed = False
        for path in self.dir.iterdir():
            if path.name not in self._live:
                path.unlink(missing_ok=True)
                removed = True
        if removed:
            fsync_dir(self.dir)

    def append(self, blocks: list[tuple[bytes, int, str, str]]) -> list[Block]:
        """Write (data, lines, table, request) blocks and make them durable (one fdatasync)."""
        if self._fd is not None and (
            self._size >= self.roll_bytes or time.monotonic() - self._opened >= self.roll_seconds
        ):
            self.roll()
        if self._fd is None:
            self._open()
        assert self._fd is not None and self._current is not None
        out = []
        start = self._size
        try:
            disk_full_point("segment", "file")
            for data, lines, table, request in blocks:
                _write_all(self._fd, data)
                block = Block(self._current, self._size, len(data), lines, table, request)
                self._size += len(data)
                out.append(block)
            os.fdatasync(self._fd)
        except BaseException:
            os.ftruncate(self._fd, start)  # nothing half-written is left to be read
            self._size = start
            raise
        with self._lock:
            self._live.setdefault(self._current, set()).update(b.id for b in out)
        return out

    def read(self, block: Block) -> bytes:
        with self.path(block.segment).open("rb") as fh:
            fh.seek(block.offset)
            data = fh.read(block.length)
        if len(data) != block.length:
            raise OSError(f"segment {block.segment} is shorter than its journaled blocks")
        return data

    def release(self, blocks: list[Block]) -> None:
        """The blocks' rows are in R2: drop each segment once all its blocks are and it is closed."""
        gone: list[str] = []
        with self._lock:
            for block in blocks:
                live = self._live.get(block.segment)
                if live is None:
                    continue
                live.discard(block.id)
                if not live and block.segment != self._current:
                    self._live.pop(block.segment)
                    gone.append(block.segment)
        self._unlink(gone)

    def discard(self, blocks: list[Block]) -> None:
        """Blocks written but never journaled (the commit failed): never read, never waited for."""
        self.release(blocks)

    def roll(self) -> None:
        """Close the current segment (a new one starts with the next append)."""
        if self._fd is None or self._current is None:
            return
        os.close(self._fd)
        gone: list[str] = []
        with self._lock:
            done, self._fd, self._current = self._current, None, None
            if not self._live.get(done):
                self._live.pop(done, None)
                gone.append(done)
        self._unlink(gone)

    def live(self) -> list[Path]:
        """Segments that hold blocks not yet in R2."""
        with self._lock:
            return [self.path(s) for s, ids in sorted(self._live.items()) if ids]

    def _open(self) -> None:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        with self._lock:
            self._current, self._fd = name, fd
        self._size, self._opened = 0, time.monotonic()
        fsync_dir(self.dir)  # the new name is durable before any block in it is answered

    def _unlink(self, segments: list[str]) -> None:
        """Outside the lock: unlinking a segment of many MB took 50 ms beside an encode, and the next
        requests' append waited for the lock that long (their 202s too)."""
        for segment in segments:
            self.path(segment).unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
