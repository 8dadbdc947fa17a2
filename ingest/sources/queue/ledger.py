"""The queue ledger: which rows of which messages each object holds, kept in R2 where every worker sees it.

Before each PUT, the worker writes `{prefix}_ledger/queues/<queue id>/<object id>.json` (the key
attempted; message id → its row ranges in the object). Once the messages' leases are acknowledged, the
record is deleted. A message delivered again (its lease ran out: a worker died after the upload, before
the ack) comes back with `attempts` > 1: only then are the records listed, and rows of it that an object
in R2 already holds (its `batch-id` metadata says so) are not ingested twice.

What it costs: one PUT and one DELETE per object (not per message); a LIST (+ a GET per unseen record)
only when a redelivered message arrives. Records left by a worker that died are swept after KEEP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from contextlib import closing

from botocore.exceptions import ClientError

from ingest.layout import queue_ledger_prefix
from ingest.logs import get_logger
from ingest.r2.client import R2Client
from ingest.r2.errors import code_of
from ingest.sources.base import Ranges, merge_ranges

log = get_logger("ingest.sources.queue.ledger")
KEEP = 14 * 86400  # a queue keeps a message at most 14 days: no record is needed longer
Holds = Callable[[str, str], Awaitable[bool]]  # (key, object id) → the object is in R2


class QueueLedger:
    def __init__(self, client: R2Client, bucket: str, prefix: str, queue_id: str, worker: str) -> None:
        self.client, self.bucket, self.worker = client, bucket, worker
        self.prefix = queue_ledger_prefix(prefix, queue_id)
        self._records: dict[str, tuple[str, dict[str, Ranges]]] = {}  # record key → (object key, rows)
        self._in_r2: dict[str, bool] = {}  # object id → held (only True is kept: False may change)
        self.writes = 0  # requests made (cost)
        self.reads = 0

    def record_key(self, object_id: str) -> str:
        return f"{self.prefix}{object_id}.json"

    async def attempting(self, object_id: str, key: str, rows: dict[str, Ranges]) -> None:
        """Written before each PUT of the object (again, with the new key, before a re-attempt)."""
        body = {
            "key": key,
            "worker": self.worker,
            "written": time.time(),
            "messages": {m: [list(r) for r in ranges] for m, ranges in rows.items()},
        }
        self.writes += 1
        await self.client.call(
            "put_object",
            Bucket=self.bucket,
            Key=self.record_key(object_id),
            Body=json.dumps(body, separators=(",", ":")).encode(),
            ContentType="application/json",
        )

    async def forget(self, object_id: str) -> None:
        self.writes += 1
        await self.client.call("delete_object", Bucket=self.bucket, Key=self.record_key(object_id))

    async def covered(self, message_ids: set[str], holds: Holds) -> dict[str, Ranges]:
        """Message id → the row ranges of it that objects in R2 already hold (only ids that have any)."""
        found: dict[str, Ranges] = {}
        for record, (key, rows) in (await self._read_all()).items():
            mine = {m: r for m, r in rows.items() if m in message_ids}
            if not mine:
                continue
            object_id = record.rsplit("/", 1)[-1].removesuffix(".json")
            if not self._in_r2.get(object_id):
                self.reads += 1
                if not await holds(key, object_id):
                    continue
                self._in_r2[object_id] = True
            for m, ranges in mine.items():
                found[m] = merge_ranges([*found.get(m, []), *ranges])
        return found

    async def _read_all(self) -> dict[str, tuple[str, dict[str, Ranges]]]:
        listed: dict[str, str] = {}
        now = time.time()
        async for page in self.client.pages(self.bucket, self.prefix):
            self.reads += 1
            for o in page:
                if now - o["LastModified"].timestamp() > KEEP:
                    await self._sweep(o["Key"])
                else:
                    listed[o["Key"]] = o["ETag"]
        for record, etag in listed.items():
            cached = self._records.get(record + etag)
            if cached is None:
                got = await self._get(record)
                if got is None:
                    continue
                self._records[record + etag] = cached = got
        self._records = {r + e: self._records[r + e] for r, e in listed.items() if r + e in self._records}
        return {r: self._records[r + e] for r, e in listed.items() if r + e in self._records}

    async def _get(self, record: str) -> tuple[str, dict[str, Ranges]] | None:
        self.reads += 1
        try:
            out = await self.client.call("get_object", Bucket=self.bucket, Key=record)
        except ClientError as exc:
            if code_of(exc) == "NoSuchKey":  # acknowledged and deleted since the listing
                return None
            raise
        with closing(out["Body"]) as body:
            data = json.loads(await body.read())
        rows = {str(m): [(int(a), int(b)) for a, b in r] for m, r in data.get("messages", {}).items()}
        return str(data["key"]), rows

    async def _sweep(self, record: str) -> None:
        log.info("queue ledger record older than a queue keeps messages: deleted", record=record)
        self.writes += 1
        await self.client.call("delete_object", Bucket=self.bucket, Key=record)
