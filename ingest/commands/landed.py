"""What landed in R2, read without downloading it: `ingest ls` and `ingest head`.

`ls` takes each object's row count and batch id from the index the worker keeps of what it uploaded
(pipeline/index.py) when it has an entry of the object's key and size. Otherwise, and for `head`,
each object's row count and schema come from its Parquet footer, fetched with one ranged GET of the
object's tail (a second one only for a footer longer than that); its batch id comes back with the same
answer (x-amz-meta-batch-id). `head` then fetches the byte range of the first row group(s) it needs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from ingest.pipeline.index import read_index
from ingest.r2.client import R2Client
from ingest.r2.errors import status_of

TAIL = 64 * 1024  # one GET of this much of an object's end holds the footer of any batch we write
MAGIC = b"PAR1"
LISTING_CONCURRENCY = 16


class ObjectProblem(Exception):
    """The key is missing or is not a Parquet object; the message names the key and which."""


@dataclass
class Landed:
    key: str
    size: int
    modified: datetime
    rows: int | None = None
    batch: str | None = None
    problem: str | None = None  # not Parquet, or unreadable: said instead of a row count

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "modified": self.modified.isoformat(),
            "rows": self.rows,
            "batch": self.batch,
            **({"problem": self.problem} if self.problem else {}),
        }


class _Ranges(io.RawIOBase):
    """A read-only file of `size` bytes of which only fetched ranges are known: pyarrow reads the footer
    and row groups from it as from the whole object; reading anywhere else is a bug, and says so."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._parts: list[tuple[int, bytes]] = []
        self._pos = 0

    def add(self, offset: int, data: bytes) -> None:
        self._parts.append((offset, data))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self._pos)
        if want <= 0:
            return 0
        for offset, data in self._parts:
            if offset <= self._pos and self._pos + want <= offset + len(data):
                start = self._pos - offset
                buffer[:want] = data[start : start + want]
                self._pos += want
                return want
        raise OSError(f"bytes {self._pos}..{self._pos + want} were not fetched")


@dataclass
class _Footer:
    metadata: pq.FileMetaData
    file: _Ranges
    batch: str | None


async def _get(client: R2Client, bucket: str, key: str, byte_range: str) -> tuple[bytes, dict[str, Any]]:
    try:
        answer = await client.call("get_object", Bucket=bucket, Key=key, Range=byte_range)
    except ClientError as exc:
        if status_of(exc)[0] == 404:
            raise ObjectProblem(f"{key}: no such object in bucket {bucket}") from None
        if status_of(exc)[0] == 416:  # a range of an empty object
            raise ObjectProblem(f"{key}: not a Parquet object (empty)") from None
        raise
    async with answer["Body"] as body:
        data: bytes = await body.read()
    return data, answer


async def _footer(client: R2Client, bucket: str, key: str) -> _Footer:
    tail, answer = await _get(client, bucket, key, f"bytes=-{TAIL}")
    size = int(str(answer.get("ContentRange", "")).rpartition("/")[2] or len(tail))
    if len(tail) < 12 or tail[-4:] != MAGIC:
        raise ObjectProblem(f"{key}: not a Parquet object (no PAR1 footer)")
    length = int.from_bytes(tail[-8:-4], "little") + 8
    file = _Ranges(size)
    file.add(size - len(tail), tail)
    if length > len(tail):  # a footer longer than the tail read: fetch the rest of it
        start = size - length
        more, _ = await _get(client, bucket, key, f"bytes={start}-{size - len(tail) - 1}")
        file.add(start, more)
    try:
        metadata = pq.read_metadata(file)
    except (pa.ArrowException, OSError) as exc:
        raise ObjectProblem(f"{key}: not a readable Parquet footer ({exc})") from None
    batch = answer.get("Metadata", {}).get("batch-id")
    return _Footer(metadata, file, batch)


async def listing(
    client: R2Client, bucket: str, prefix: str, skip: tuple[str, ...] = (), index: str | None = None
) -> list[Landed]:
    """The objects under `prefix`, each with its row count and batch id: from the worker's index
    under `index` for a listed key of the same size, else from its footer. Keys under the `skip`
    prefixes are left out before anything is fetched."""
    found = [
        Landed(o["Key"], int(o["Size"]), o["LastModified"])
        for o in await client.list_all(bucket, prefix)
        if not o["Key"].startswith(skip)
    ]
    entries = await read_index(client, bucket, index) if index is not None and found else {}
    limit = anyio.Semaphore(LISTING_CONCURRENCY)

    async def describe(item: Landed) -> None:
        async with limit:
            try:
                footer = await _footer(client, bucket, item.key)
            except ObjectProblem as exc:
                item.problem = str(exc).removeprefix(f"{item.key}: ")
                return
            item.rows, item.batch = footer.metadata.num_rows, footer.batch

    async with anyio.create_task_group() as tg:
        for item in found:
            entry = entries.get(item.key)
            if entry is not None and entry.size == item.size:
                item.rows, item.batch = entry.rows, entry.batch
            else:
                tg.start_soon(describe, item)
    return found


async def head(client: R2Client, bucket: str, key: str, rows: int) -> tuple[pa.Schema, pa.Table, int]:
    """The schema, the first `rows` rows and the total row count of one object; reads only its footer
    and the row groups those rows are in."""
    footer = await _footer(client, bucket, key)
    metadata, file = footer.metadata, footer.file
    parquet = pq.ParquetFile(file, metadata=metadata)
    tables: list[pa.Table] = []
    taken = 0
    for i in range(metadata.num_row_groups):
        if taken >= rows:
            break
        start, stop = _row_group_span(metadata.row_group(i))
        data, _ = await _get(client, bucket, key, f"bytes={start}-{stop - 1}")
        file.add(start, data)
        table = parquet.read_row_group(i)
        tables.append(table.slice(0, rows - taken))
        taken += tables[-1].num_rows
    schema = parquet.schema_arrow
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return schema, table, metadata.num_rows


def _row_group_span(group: pq.RowGroupMetaData) -> tuple[int, int]:
    """[start, stop) of a row group's column chunks in the file (dictionary pages included)."""
    start, stop = None, 0
    for c in range(group.num_columns):
        column = group.column(c)
        first = column.data_page_offset
        if column.has_dictionary_page and column.dictionary_page_offset is not None:
            first = min(first, column.dictionary_page_offset)
        start = first if start is None else min(start, first)
        stop = max(stop, first + column.total_compressed_size)
    return start or 0, stop
