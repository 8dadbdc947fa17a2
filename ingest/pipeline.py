"""The data path: sources → batcher → encoders (threads) → uploaders → acknowledgements.

Stages are joined by bounded anyio memory streams, so a slow store slows intake instead of filling
memory, and parsing, encoding and uploading overlap. A source unit is acknowledged (its file deleted
or moved) only after every row read from it is inside an object in R2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest import metrics
from ingest.batch import Batch, Batcher
from ingest.config import Settings
from ingest.deadletters import DeadLetters
from ingest.keys import KeyAllocator, KeyTemplate
from ingest.logs import get_logger
from ingest.parquet import EncodedObject, Encoder
from ingest.r2.client import R2Client
from ingest.sources.base import Item, Source, SourceUnit
from ingest.upload import Uploader, describe

log = get_logger("ingest.pipeline")
ENCODERS = 2  # batches encoded at once (pyarrow releases the GIL: this is what uses both cores)
ITEM_BUFFER = 4


@dataclass
class Health:
    """Readiness for probes: false while the store refuses us for good (scope, bucket, request)."""

    ready: bool = True
    reason: str = ""
    last_upload: float | None = None  # wall clock

    def fail(self, reason: str) -> None:
        self.ready, self.reason = False, reason


@dataclass
class Stats:
    units_claimed: int = 0
    units_acked: int = 0
    records_read: int = 0
    records_uploaded: int = 0
    objects_uploaded: int = 0
    bytes_uploaded: int = 0
    failed_objects: list[EncodedObject] = field(default_factory=list)

    @property
    def failed_records(self) -> int:
        return sum(o.records for o in self.failed_objects)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        client: R2Client,
        sources: list[Source],
        dead: DeadLetters,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.dead = dead
        self.health = health or Health()
        self.stats = Stats()
        self.bucket = settings.r2.bucket
        self.client = client
        spool = Path(settings.spool.dir)
        self.encoder = Encoder(settings.output, spool, dead)
        self.template = KeyTemplate(settings.output.key_template, settings.output.prefix)
        self.uploader = Uploader(
            client,
            self.bucket,
            KeyAllocator(self.template, self._list_keys),
            settings.upload,
            settings.retry,
        )
        self._tg: TaskGroup | None = None

    def stop_intake(self) -> None:
        """Take no new input; units already taken are read to their end, batched, encoded, uploaded."""
        for source in self.sources:
            source.stop()

    async def run(self, once: bool) -> Stats:
        items_send, items_recv = anyio.create_memory_object_stream[Item](ITEM_BUFFER)
        batch_send, batch_recv = anyio.create_memory_object_stream[Batch](1)
        obj_send, obj_recv = anyio.create_memory_object_stream[EncodedObject](
            self.settings.upload.concurrency
        )
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._intake, items_send, once)
            tg.start_soon(Batcher(self.settings.batch, self._unit_read).run, items_recv, batch_send)
            async with batch_recv, obj_send:
                for _ in range(ENCODERS):
                    tg.start_soon(self._encode, batch_recv.clone(), obj_send.clone())
            async with obj_recv:
                for _ in range(self.settings.upload.concurrency):
                    tg.start_soon(self._upload, obj_recv.clone())
        return self.stats

    # -- stages ------------------------------------------------------------------------------------

    async def _intake(self, send: MemoryObjectSendStream[Item], once: bool) -> None:
        async with send, anyio.create_task_group() as tg:
            for source in self.sources:
                tg.start_soon(source.run, send.clone(), once)

    async def _encode(
        self, batches: MemoryObjectReceiveStream[Batch], objects: MemoryObjectSendStream[EncodedObject]
    ) -> None:
        async with batches, objects:
            async for batch in batches:
                self.stats.records_read += batch.records
                started = time.monotonic()
                try:
                    encoded = await anyio.to_thread.run_sync(self.encoder.encode, batch)
                except Exception as exc:  # disk full, unwritable spool: keep the sources unacked
                    log.error("could not encode batch; its input stays unacknowledged", error=describe(exc))
                    self.health.fail(f"encoding failed: {describe(exc)}")
                    batch.failed = True
                    self._batch_done(batch)
                    continue
                log.debug(
                    "batch encoded",
                    batch=batch.id,
                    records=batch.records,
                    objects=len(encoded),
                    seconds=round(time.monotonic() - started, 3),
                )
                batch.pending_objects = len(encoded)
                if not encoded:
                    self._batch_done(batch)
                for obj in encoded:
                    await objects.send(obj)

    async def _upload(self, objects: MemoryObjectReceiveStream[EncodedObject]) -> None:
        async with objects:
            async for obj in objects:
                await self._upload_one(obj)

    async def _upload_one(self, obj: EncodedObject) -> None:
        try:
            done = await self.uploader.upload(obj)
        except Exception as exc:
            # Permanent refusal, or retries exhausted: keep the file, say where, stop looking ready.
            metrics.UPLOAD_FAILURES.inc()
            self.stats.failed_objects.append(obj)
            obj.batch.failed = True
            self.health.fail(describe(exc))
            log.error(
                "upload failed; object kept in the spool",
                error=describe(exc),
                records=obj.records,
                path=str(obj.path),
            )
        else:
            await anyio.Path(obj.path).unlink(missing_ok=True)
            self.stats.records_uploaded += obj.records
            self.stats.objects_uploaded += 1
            self.stats.bytes_uploaded += obj.size
            metrics.RECORDS_UPLOADED.inc(obj.records)
            metrics.OBJECTS_UPLOADED.inc()
            metrics.BYTES_UPLOADED.inc(obj.size)
            self.health.last_upload = time.time()
            log.info(
                "uploaded",
                key=done.key,
                records=obj.records,
                bytes=obj.size,
                seconds=round(done.seconds, 3),
                attempts=done.attempts,
            )
        obj.batch.pending_objects -= 1
        if obj.batch.pending_objects == 0:
            self._batch_done(obj.batch)

    # -- acknowledgements ----------------------------------------------------------------------------

    def _unit_read(self, unit: SourceUnit) -> None:
        self.stats.units_claimed += 1
        self._maybe_ack(unit)

    def _batch_done(self, batch: Batch) -> None:
        for unit in batch.units:
            unit.pending_batches -= 1
            unit.failed |= batch.failed
            self._maybe_ack(unit)

    def _maybe_ack(self, unit: SourceUnit) -> None:
        if unit.ackable and self._tg is not None:
            unit.acked = True
            self._tg.start_soon(self._ack, unit)

    async def _ack(self, unit: SourceUnit) -> None:
        try:
            await unit.ack()
        except OSError as exc:
            log.error("could not acknowledge source unit", unit=unit.name, error=str(exc))
            return
        self.stats.units_acked += 1
        metrics.UNITS_ACKED.inc()

    async def _list_keys(self, prefix: str, start_after: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            params: dict[str, str] = {"Bucket": self.bucket, "Prefix": prefix}
            if start_after:
                params["StartAfter"] = start_after
            if token:
                params["ContinuationToken"] = token
            page = await self.uploader.request(f"list {prefix}", [0], "list_objects_v2", **params)
            keys += [o["Key"] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return keys
