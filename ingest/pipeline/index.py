"""The worker's index of what it uploaded, so that `ingest ls` need not read every object's footer.

Each uploaded data object gets one entry (key, size, rows, batch id). Entries are written, a few
objects' worth at a time, as JSON lines under `{prefix}_index/`, in the folder that mirrors the
objects' own (`{prefix}_index/2024/08/02/<stamp>-<id>.jsonl` for `{prefix}2024/08/02/…`), so a listing
of any prefix finds its entries under the same prefix of the index. An index object is written when
FLUSH_ENTRIES are waiting, every `FLUSH_SECONDS` while some are, and when the run ends.

A folder keeps few index objects, whatever the number of runs that wrote to it: a cron job (`--once`)
writes one per run, so after each write, a folder that holds COMPACT_AT small ones has them merged into
one (written first, then the merged ones deleted: a crash or a second worker doing the same leaves
entries twice, never none). An object of COMPACT_BYTES or more is left as it is, so an entry is
rewritten a bounded number of times. A store that refuses the deletes (an R2 bucket lock on the prefix)
would otherwise get one more merged copy at every write: the refusal is written down in the folder
(`merge-refused-<time>`), which every worker sees in its listing, and the folder is not merged for
REFUSED_FOR.

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
from botocore.exceptions import ClientError

from ingest.layout import index_prefix
from ingest.logs import get_logger
from ingest.r2.client import R2Client
from ingest.r2.errors import code_of, describe, is_retryable

log = get_logger("ingest.pipeline.index")

FLUSH_ENTRIES = 5_000
FLUSH_SECONDS = 600.0
WRITE_TIMEOUT = 30.0  # an index write that takes longer is dropped: the run does not wait on it
COMPACT_AT = 16  # small index objects in one folder that are merged into one
COMPACT_BYTES = 256 * 1024  # an index object this big (about 1,700 entries) is never merged again
COMPACT_TIMEOUT = 60.0
CONCURRENCY = 16
REFUSED = "merge-refused-"  # in a folder: the store refused to delete merged index objects
REFUSED_FOR = 86_400.0


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


def entry_lines(text: str) -> dict[str, str]:
    """An index object's lines by the key they describe, as written: a line this version cannot read
    in full (a newer version's) survives a merge unchanged; one that names no key (damage) does not."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        if isinstance(raw, dict) and isinstance(raw.get("key"), str):
            found[raw["key"]] = line
    return found


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


def _object_key(folder: str, stamp: str) -> str:
    return f"{folder}{stamp}-{uuid.uuid4().hex[:12]}.jsonl"


def _refused_lately(obj: dict[str, Any]) -> bool:
    if not obj["Key"].rpartition("/")[2].startswith(REFUSED):
        return False
    return bool(time.time() - obj["LastModified"].timestamp() < REFUSED_FOR)


async def _read_index_object(client: R2Client, bucket: str, key: str) -> str | None:
    """One index object's text; None when it is gone (merged meanwhile: its lines are elsewhere)."""
    try:
        answer = await client.call("get_object", Bucket=bucket, Key=key)
    except ClientError as exc:
        if code_of(exc) in ("NoSuchKey", "404"):
            return None
        raise
    async with answer["Body"] as body:
        return str((await body.read()).decode("utf-8", "replace"))


async def read_index_objects(
    client: R2Client, bucket: str, keys: list[str], lenient: bool = False
) -> list[str | None]:
    """The texts of index objects, CONCURRENCY at a time, in the order of `keys`: None for one gone
    (merged meanwhile) and, when `lenient`, for one that could not be read."""
    texts: list[str | None] = [None] * len(keys)
    limit = anyio.Semaphore(CONCURRENCY)

    async def read(i: int, key: str) -> None:
        async with limit:
            try:
                texts[i] = await _read_index_object(client, bucket, key)
            except ClientError:
                if not lenient:
                    raise

    async with anyio.create_task_group() as tg:
        for i, key in enumerate(keys):
            tg.start_soon(read, i, key)
    return texts


async def read_index(client: R2Client, bucket: str, index: str) -> dict[str, Entry]:
    """The entries of every index object under the prefix `index`, by key (for `ingest ls`). An
    object gone meanwhile (merged) or unreadable gives none: its objects' footers are read instead."""
    listed = await client.list_all(bucket, index)
    keys = [o["Key"] for o in listed if o["Key"].endswith(".jsonl")]  # not the notes (REFUSED)
    texts = await read_index_objects(client, bucket, keys, lenient=True)
    return {entry.key: entry for text in texts for entry in read_entries(text or "")}


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
                key = _object_key(folder, stamp)
                try:
                    with anyio.fail_after(WRITE_TIMEOUT):
                        await self._put(key, [e.line() for e in group])
                except Exception as exc:  # a shortcut lost: `ingest ls` reads those footers instead
                    log.warning(
                        "could not write the upload index; `ingest ls` reads these objects' footers",
                        key=key,
                        objects=len(group),
                        error=describe(exc),
                    )
                    continue
                try:
                    with anyio.fail_after(COMPACT_TIMEOUT):
                        await self.compact(folder, stamp)
                except Exception as exc:  # left for the next write to the folder; `ls` reads them all
                    log.warning(
                        "could not merge the upload index's objects", folder=folder, error=describe(exc)
                    )

    async def _put(self, key: str, lines: list[str]) -> None:
        body = ("\n".join(lines) + "\n").encode()
        await self.client.call(
            "put_object", Bucket=self.bucket, Key=key, Body=body, ContentType="application/x-ndjson"
        )

    async def compact(self, folder: str, stamp: str) -> None:
        """Merge the folder's small index objects into one when there are COMPACT_AT of them.

        The merged object is written before any is deleted, and only objects it holds are deleted.
        One that is gone by the time it is read was merged by another worker, whose object holds its
        lines. Of two lines for one key, the one in the later object wins (a key written again)."""
        listed = await self.client.list_all(self.bucket, folder, delimiter="/")  # not folders below
        if any(_refused_lately(o) for o in listed):
            return
        small = [o for o in listed if o["Key"].endswith(".jsonl") and int(o["Size"]) < COMPACT_BYTES]
        if len(small) < COMPACT_AT:
            return
        small.sort(key=lambda o: (o["LastModified"], o["Key"]))
        texts = await read_index_objects(self.client, self.bucket, [o["Key"] for o in small])
        lines: dict[str, str] = {}
        merged = []
        for obj, text in zip(small, texts, strict=True):
            if text is not None:
                lines.update(entry_lines(text))
                merged.append(obj["Key"])
        if lines:
            await self._put(_object_key(folder, stamp), list(lines.values()))

        failed: list[Exception] = []
        limit = anyio.Semaphore(CONCURRENCY)

        async def delete(key: str) -> None:
            async with limit:
                try:
                    await self.client.call("delete_object", Bucket=self.bucket, Key=key)
                except Exception as exc:
                    failed.append(exc)

        async with anyio.create_task_group() as tg:
            for key in merged:
                tg.start_soon(delete, key)
        if refusals := [exc for exc in failed if not is_retryable(exc)]:
            await self._put(f"{folder}{REFUSED}{stamp}", ["the store refused to delete merged index objects"])
            log.warning(
                "the store refuses to delete merged upload index objects (a bucket lock?); "
                "this index folder is not merged for a day, and `ingest ls` reads all of its objects",
                folder=folder,
                error=describe(refusals[0]),
            )
        elif failed:
            raise failed[0]  # said by the caller; the next write to the folder merges again
        log.debug("merged upload index objects", folder=folder, objects=len(merged), entries=len(lines))

    async def run_periodically(self, done: anyio.Event) -> None:
        """The daemon's flushes, until `done`: checked every few seconds, written when due."""
        while not done.is_set():
            with anyio.move_on_after(5.0):
                await done.wait()
            if self.due():
                await self.flush()
