"""The worker's index of what it uploaded, so that `ingest ls` need not read every object's footer.

Each uploaded data object gets one entry (key, size, rows, batch id). Entries are written, a few
objects' worth at a time, as JSON lines under `{prefix}_index/`, in the folder that mirrors the
objects' own (`{prefix}_index/2024/08/02/<stamp>-<id>.jsonl` for `{prefix}2024/08/02/…`), so a listing
of any prefix finds its entries under the same prefix of the index. An index object is written when
FLUSH_ENTRIES are waiting, every `FLUSH_SECONDS` while some are, and when the run ends.

The index is a shortcut, never the truth: `ingest ls` lists the objects and trusts an entry only for a
listed key of the same size; an object without one (written by another tool, or uploaded just before a
crash) has its footer read as before. A failed index write is said and dropped: nothing waits on it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from ingest.layout import index_prefix
from ingest.logs import get_logger
from ingest.r2.client import R2Client
from ingest.r2.errors import describe

log = get_logger("ingest.pipeline.index")

FLUSH_ENTRIES = 5_000
FLUSH_SECONDS = 600.0
WRITE_TIMEOUT = 30.0  # an index write that takes longer is dropped: the run does not wait on it


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    rows: int
    batch: str

    def line(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def folder_of(key: str, prefix: str) -> str:
    """The index folder of a data key (ending in "/"): its own folder, below `{prefix}_index/`."""
    folder = key.removeprefix(prefix).rpartition("/")[0]
    return index_prefix(prefix) + (folder + "/" if folder else "")


def read_entries(text: str) -> list[Entry]:
    """The entries of one index object; a line that is not one (a newer version's, or damage) is
    skipped: the object it names then has its footer read."""
    found = []
    for line in text.splitlines():
        try:
            raw: dict[str, Any] = json.loads(line)
            found.append(Entry(str(raw["key"]), int(raw["size"]), int(raw["rows"]), str(raw["batch"])))
        except (ValueError, KeyError, TypeError):
            continue
    return found


class UploadIndex:
    """Collects entries as objects are uploaded; `flush` writes them, one object per folder."""

    def __init__(self, client: R2Client, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self._waiting: list[Entry] = []
        self._oldest = 0.0
        self._writing = anyio.Lock()

    def add(self, key: str, size: int, rows: int, batch: str) -> None:
        if key.startswith("s3://") or not key.startswith(self.prefix):
            return  # not a key `ingest ls` lists under the output prefix
        if not self._waiting:
            self._oldest = time.monotonic()
        self._waiting.append(Entry(key, size, rows, batch))

    def due(self) -> bool:
        return len(self._waiting) >= FLUSH_ENTRIES or (
            bool(self._waiting) and time.monotonic() - self._oldest >= FLUSH_SECONDS
        )

    async def flush(self) -> None:
        """Write every waiting entry; on failure say so and drop them (their footers stay readable)."""
        async with self._writing:
            entries, self._waiting = self._waiting, []
            folders: dict[str, list[Entry]] = defaultdict(list)
            for entry in entries:
                folders[folder_of(entry.key, self.prefix)].append(entry)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            for folder, group in folders.items():
                key = f"{folder}{stamp}-{uuid.uuid4().hex[:12]}.jsonl"
                body = ("\n".join(e.line() for e in group) + "\n").encode()
                try:
                    with anyio.fail_after(WRITE_TIMEOUT):
                        await self.client.call(
                            "put_object",
                            Bucket=self.bucket,
                            Key=key,
                            Body=body,
                            ContentType="application/x-ndjson",
                        )
                except Exception as exc:  # a shortcut lost: `ingest ls` reads those footers instead
                    log.warning(
                        "could not write the upload index; `ingest ls` reads these objects' footers",
                        key=key,
                        objects=len(group),
                        error=describe(exc),
                    )

    async def run_periodically(self, done: anyio.Event) -> None:
        """The daemon's flushes, until `done`: checked every few seconds, written when due."""
        while not done.is_set():
            with anyio.move_on_after(5.0):
                await done.wait()
            if self.due():
                await self.flush()
