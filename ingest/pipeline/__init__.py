"""The data path: sources → batcher → encoders (threads) → spool + journal → uploaders → [Iceberg
commits] → acks.

Stages are joined by anyio memory streams: bounded up to the spool, so a slow encoder slows intake;
after the spool, objects wait on disk (bounded by `spool.max_bytes`, which pauses intake), so a store
outage fills the spool instead of memory. A source unit is acknowledged (its file deleted or moved)
only after every row read from it is inside an object in R2; the journal makes that hold across
crashes (see spool.py for recovery). With Iceberg on, "in R2" means in a committed snapshot of its
table (commit.py).
"""

from __future__ import annotations

import math
import time

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest import metrics
from ingest.config import Settings
from ingest.daemon.health import Health, Stats
from ingest.durable.faults import crash_point
from ingest.layout import ERRORS_TEMPLATE
from ingest.logs import get_logger
from ingest.pipeline.batch import Batch, Batcher
from ingest.pipeline.commit import Committer, Connection
from ingest.pipeline.encode import Encoder, load_schema_blob, schema_blob
from ingest.pipeline.index import UploadIndex
from ingest.pipeline.journal import Journal, UnitRow
from ingest.pipeline.keys import KeyTemplate
from ingest.pipeline.spool import Spool, SpooledObject, SpoolError
from ingest.pipeline.units import UnitBook
from ingest.pipeline.upload import Uploader
from ingest.r2.client import R2Client
from ingest.r2.errors import describe
from ingest.sources.base import (
    UNREPEATABLE,
    Gather,
    Item,
    Ranges,
    RequestRow,
    Source,
    SourceUnit,
    UnitHandle,
)

log = get_logger("ingest.pipeline")
ENCODERS = 2  # batches encoded at once (pyarrow releases the GIL: this is what uses both cores)
ITEM_BUFFER = 4
DISK_RETRY_MAX = 30.0
PROBLEMS_INTERVAL = 2.0  # how often unreadable input is written down for `ingest status`


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        client: R2Client,
        sources: list[Source],
        spool: Spool,
        health: Health | None = None,
        catalog: Connection | None = None,
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.spool = spool
        self.journal = spool.journal
        self.health = health or Health()
        self.health.failure_seconds = settings.server.ready_failure_seconds
        self.stats = Stats()
        self.bucket = settings.r2.bucket
        learned = {table: load_schema_blob(blob) for table, blob in self.journal.schemas().items()}
        self.encoder = Encoder(
            settings.output,
            spool.dir,
            spool.dead,
            {t: s for t, s in learned.items() if s is not None},
            iceberg=settings.iceberg.enabled,
        )
        self._journaled_schemas = {table: self.encoder.schema(table) for table in learned}
        prefix = settings.output.prefix
        self.template = KeyTemplate(settings.output.key_template, prefix)
        self.uploader = Uploader(
            client,
            self.bucket,
            {"data": self.template, "deadletters": KeyTemplate(ERRORS_TEMPLATE, prefix)},
            settings.upload,
            settings.retry,
            self.health,
        )
        self.index = UploadIndex(client, self.bucket, prefix)
        self._uploads_done = anyio.Event()
        self.committer = (
            Committer(
                settings, self.health, spool.dead, self.uploader.list_keys, self.uploader.exists, catalog
            )
            if settings.iceberg.enabled
            else None
        )
        self.once = False
        spool.retry_initial, spool.retry_max = settings.retry.initial, min(settings.retry.max, DISK_RETRY_MAX)
        spool.on_full = lambda reason: self.health.fail(reason, "disk")
        spool.on_room = lambda: self.health.clear("disk")
        spool.dead.on_full, spool.dead.on_room = spool.on_full, spool.on_room
        self.units = UnitBook(spool, self.stats)
        # Sources that must open their journaled units again before the objects recovered with them
        # are uploaded (the Redis ledger records each attempt first): unit id prefix → done.
        self._resuming = {p: anyio.Event() for src in sources if (p := getattr(src, "resumes_first", ""))}
        self._waiting: dict[str, SpooledObject] = {}  # in the spool, not yet in R2 (for the gauges)
        metrics.watch(
            spool_bytes=lambda: sum(o.size for o in self._waiting.values()),
            spool_objects=lambda: len(self._waiting),
            spool_oldest=lambda: min((o.created for o in self._waiting.values()), default=0.0),
            ready=lambda: float(self.health.ready),
        )
        self._intake_done = anyio.Event()
        self.started = anyio.Event()  # recovery done, sources running (systemd READY=1)
        self.has_input = anyio.Event()  # a source opened a unit: there will be something to upload
        self._tg: TaskGroup | None = None
        self._recorded_problems: dict[str, str] | None = None  # None: not written in this run yet
        self._reader: Journal | None = None  # Idempotency-Key lookups (HTTP source)
        self._lookups = anyio.CapacityLimiter(1)

    def stop_intake(self) -> None:
        """Take no new input; units already taken are read to their end, batched, encoded, uploaded."""
        for source in self.sources:
            source.stop()

    # -- what sources call (the Units protocol) -------------------------------------------------------

    async def open_unit(self, unit: SourceUnit) -> SourceUnit:
        return (await self.open_units([unit]))[0]

    async def open_units(self, units: list[SourceUnit]) -> list[SourceUnit]:
        if units:
            self.has_input.set()
        return await self.units.open(units)

    def resumed(self, prefix: str) -> None:
        """The source of units `prefix` opened again every journaled unit it could (or ended): the
        objects recovered with them go to the uploaders now."""
        if (event := self._resuming.get(prefix)) is not None:
            event.set()

    def known_units(self, prefix: str) -> list[SourceUnit]:
        """Units found in the journal (not acknowledged before the last stop) whose id starts with
        `prefix`: a source whose input lives only in the spool (HTTP blocks) reads them again."""
        return self.units.known(prefix)

    async def wait_for_room(self) -> None:
        await self.spool.wait_for_room()

    def room(self) -> float:
        return self.spool.room()

    async def in_r2(self, key: str, object_id: str) -> bool:
        """Whether `key` holds the object (another worker's, found through a source's ledger). With
        Iceberg on it counts only once committed: that worker may have died before its commit, so
        the object is committed here (a no-op when its batch id is in the table already)."""
        held = await self.uploader.holds(key, object_id)
        if held and self.committer is not None and key.startswith("s3://"):
            await self.committer.commit_found(key, object_id)
        return held

    def intake_blocked(self) -> str | None:
        if self.spool.paused:
            return "the spool is over spool.max_bytes (uploads are behind)"
        return self.spool.full

    async def note(self, unit: SourceUnit) -> None:
        total = unit.total if unit.total is not None else unit.next_row
        await self.spool.durably("journal unit", self.journal.unit_read, unit.id, total, unit.fingerprint)

    async def accept(self, units: list[SourceUnit], requests: list[RequestRow]) -> None:
        rows = [UnitRow(u.id, u.name, u.fingerprint, u.path, u.total) for u in units]
        await self.spool.durably("accept requests", self.journal.accept, rows, requests)
        self.units.accepted(units)

    async def request(self, key: str) -> RequestRow | None:
        if self._reader is None:  # its own connection: reads while the journal thread commits
            self._reader = Journal(self.journal.path, readonly=True)
        return await anyio.to_thread.run_sync(self._reader.request, key, limiter=self._lookups)

    async def forget_requests(self, before: float) -> None:
        await self.spool.durably("forget old Idempotency-Keys", self.journal.prune_requests, before)

    def unacknowledged(self) -> dict[str, str]:
        """Units taken in this run, or found in the journal, that are still not acknowledged (where →
        why): the safety net behind `--once`'s exit code, independent of what the sources report."""
        return self.units.unacknowledged()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def source_problem(self, kind: str, reason: str | None) -> None:
        if reason is None:
            self.health.clear(kind)
        else:
            self.health.fail(reason, kind)

    def disk_full(self, reason: str) -> None:
        self.health.fail(reason, "disk")

    def disk_room(self) -> None:
        if self.spool.full is None:
            self.health.clear("disk")

    # -- running ---------------------------------------------------------------------------------

    async def run(self, once: bool) -> Stats:
        self.once = once
        if once:  # a cron run must end: retries stop once_max_elapsed after it started
            self.uploader.deadline = time.monotonic() + self.settings.retry.once_max_elapsed
            if self.committer is not None:
                self.committer.deadline = self.uploader.deadline
        undecided: set[str] = set()
        for row in await self.spool.durably("recover", self.spool.damaged):
            # A damaged file whose upload may have happened before the crash: the store decides.
            try:
                held = row.key is not None and await self.uploader.holds(row.key, row.id)
            except Exception as exc:  # cannot tell: neither drop (could duplicate) nor upload it
                log.error("cannot check a damaged spooled object; keeping it", error=describe(exc))
                self.health.fail(describe(exc))
                undecided.add(row.id)
                continue
            if held and row.key is not None:
                commit = self.committer is not None
                await self.spool.durably("recover", self.spool.forget_uploaded, row, row.key, commit)
            else:
                await self.spool.durably("recover", self.spool.drop, row)
        recovered = await self.spool.durably("recover", self.spool.recover, undecided)
        self.units.by_id = recovered.units
        if recovered.objects or recovered.units:
            log.info("resuming from the journal", objects=len(recovered.objects), units=len(recovered.units))
        for obj in recovered.uncommitted:  # in R2; their snapshot may or may not have been committed
            assert self.committer is not None, "objects to commit, but iceberg.enabled is false"
            self.committer.add(obj, recovering=True)
        items_send, items_recv = anyio.create_memory_object_stream[Item](ITEM_BUFFER)
        batch_send, batch_recv = anyio.create_memory_object_stream[Batch](1)
        # Objects are on disk; the spool's high-water mark (not this stream) bounds them.
        obj_send, obj_recv = anyio.create_memory_object_stream[SpooledObject](math.inf)
        # Objects whose source opens their units again first (`resumed`), with what they wait for.
        resuming: list[tuple[SpooledObject, list[anyio.Event]]] = []
        for obj in recovered.objects:
            self._spooled(obj)
            if events := self._resumes_of(obj):
                resuming.append((obj, events))
            else:
                obj_send.send_nowait(obj)
        async with anyio.create_task_group() as tg:
            self._tg = self.units.tg = tg
            self._settle_unrepeatable()
            tg.start_soon(self._intake, items_send, once)
            self.started.set()
            tg.start_soon(Batcher(self.settings.batch, self.units.read).run, items_recv, batch_send)
            tg.start_soon(self._encode_all, batch_recv, obj_send.clone())
            if not once:
                tg.start_soon(self._seal_periodically, obj_send.clone())
                tg.start_soon(self._record_problems_periodically)
                tg.start_soon(self.index.run_periodically, self._uploads_done)
            if resuming:
                tg.start_soon(self._release, resuming, obj_send.clone())
            obj_send.close()
            if self.committer is not None:
                tg.start_soon(self.committer.run, self._committed, once)
            tg.start_soon(self._upload_all, obj_recv)
        if self.committer is not None:
            self.stats.snapshots, self.stats.catalog_requests = (
                self.committer.snapshots,
                self.committer.requests,
            )
        await self._record_problems()
        return self.stats

    def _resumes_of(self, obj: SpooledObject) -> list[anyio.Event]:
        units = obj.unit_rows()
        return [e for p, e in self._resuming.items() if any(u.id.startswith(p) for u in units)]

    async def _release(
        self,
        held: list[tuple[SpooledObject, list[anyio.Event]]],
        objects: MemoryObjectSendStream[SpooledObject],
    ) -> None:
        """Recovered objects whose upload needs what their source sets when it opens their units again
        (`before_upload`): uploaded before that, a re-attempt under a new key went unrecorded in the
        ledger, and a worker taking the entries over after a second crash ingested them twice."""
        async with objects:
            for obj, events in held:
                for event in events:
                    await event.wait()
                await objects.send(obj)

    def _settle_unrepeatable(self) -> None:
        """Input of an earlier run that nothing can read again (standard input): what it left in the
        spool is uploaded, then it is acknowledged; what it held in memory is gone."""
        for unit in self.units.known(UNREPEATABLE):
            log.warning(
                "an earlier run's standard input stopped before its end: its spooled rows are "
                "uploaded now; rows it had not spooled yet were not kept and must be sent again",
                unit=unit.name,
            )
            unit.handle, unit.read_done, unit.path = UnitHandle(_nothing_to_do), True, None
            self.units.maybe_ack(unit)

    def _problems(self) -> dict[str, str]:
        return {where: why for source in self.sources for where, why in source.problems().items()}

    async def _record_problems(self) -> None:
        problems = self._problems()
        if problems != self._recorded_problems:
            await self.spool.durably("unreadable input", self.journal.set_problems, problems)
            self._recorded_problems = problems

    async def _record_problems_periodically(self) -> None:
        while True:
            with anyio.move_on_after(PROBLEMS_INTERVAL):
                await self._intake_done.wait()
                return
            await self._record_problems()

    # -- stages ------------------------------------------------------------------------------------

    async def _intake(self, send: MemoryObjectSendStream[Item], once: bool) -> None:
        async with send, anyio.create_task_group() as tg:
            for source in self.sources:
                tg.start_soon(source.run, send.clone(), self, once)

    async def _encode_all(
        self, batches: MemoryObjectReceiveStream[Batch], objects: MemoryObjectSendStream[SpooledObject]
    ) -> None:
        async with objects:
            async with batches, anyio.create_task_group() as tg:
                for _ in range(ENCODERS):
                    tg.start_soon(self._encode, batches.clone(), objects.clone())
            # Everything read is encoded: ship the dead letters written meanwhile.
            self._intake_done.set()
            await self._seal(objects)

    async def _seal_periodically(self, objects: MemoryObjectSendStream[SpooledObject]) -> None:
        interval = max(self.settings.batch.max_age, 10.0)
        async with objects:
            while True:
                with anyio.move_on_after(interval):
                    await self._intake_done.wait()
                    return
                await self._seal(objects)

    async def _seal(self, objects: MemoryObjectSendStream[SpooledObject]) -> None:
        for obj in await self.spool.durably("seal dead letters", self.spool.seal_dead_letters):
            self._spooled(obj)
            objects.send_nowait(obj)

    async def _encode(
        self, batches: MemoryObjectReceiveStream[Batch], objects: MemoryObjectSendStream[SpooledObject]
    ) -> None:
        async with batches, objects:
            async for batch in batches:
                self.stats.records_read += batch.records
                started = time.monotonic()
                encoded = await self._spool_batch(batch)
                if encoded is None:
                    continue
                log.debug(
                    "batch encoded",
                    batch=batch.id,
                    records=batch.records,
                    objects=len(encoded),
                    seconds=round(time.monotonic() - started, 3),
                )
                batch.pending_objects = len(encoded)
                if not encoded:  # every row was a dead letter
                    self.units.batch_done(batch)
                for obj in encoded:
                    self._spooled(obj)
                    await objects.send(obj)

    async def _spool_batch(self, batch: Batch) -> list[SpooledObject] | None:
        """Encode into the spool and journal it; a full disk keeps the batch in memory and waits
        (Spool.durably), any other write failure ends the run (SpoolError)."""
        try:
            encoded = await self.spool.durably("write batch", self.encoder.encode, batch, serial=False)
        except SpoolError:
            raise
        except Exception as exc:  # a bug or an Arrow limit: keep the input for a later run
            log.error("could not encode batch; its input stays unacknowledged", error=describe(exc))
            self.health.fail(f"encoding failed: {describe(exc)}", "encode")
            batch.failed = True
            self.units.batch_done(batch)
            return None
        crash_point("encoded")
        spans = [(u.id, a, b) for u, ranges in batch.spans.items() for a, b in ranges]
        rows = [o.row() for o in encoded]
        schema = self.encoder.schema(batch.table)
        blob = schema_blob(schema) if schema != self._journaled_schemas.get(batch.table) else None
        await self.spool.durably(
            "journal batch", self.journal.spooled, batch.id, spans, rows, blob, batch.table
        )
        self._journaled_schemas[batch.table] = schema
        crash_point("spooled")
        return encoded

    def _spooled(self, obj: SpooledObject) -> None:
        self._waiting[obj.object_id] = obj
        if self.spool.added(obj.size):
            self.health.fail(
                f"spool holds {self.spool.used / 1e6:.1f} MB waiting for upload, over spool.max_bytes: "
                "intake paused until uploads catch up",
                "spool",
            )
            log.warning("spool over spool.max_bytes; intake paused", used=self.spool.used)

    def _unspooled(self, obj: SpooledObject) -> None:
        if self.spool.removed(obj.size):
            self.health.clear("spool")
            log.info("spool below its low-water mark; intake resumed", used=self.spool.used)

    async def _upload_all(self, objects: MemoryObjectReceiveStream[SpooledObject]) -> None:
        async with objects, anyio.create_task_group() as tg:
            for _ in range(self.settings.upload.concurrency):
                tg.start_soon(self._upload, objects.clone())
        if self.committer is not None:
            if self.committer.dead_letters_written:  # rows that did not fit their table, after the seal
                for obj in await self.spool.durably("seal dead letters", self.spool.seal_dead_letters):
                    self._spooled(obj)
                    await self._upload_one(obj)
            self.committer.uploads_done()
        self._uploads_done.set()
        await self.index.flush()

    async def _committed(self, objects: list[SpooledObject]) -> None:
        """In a committed snapshot of their table: done."""
        crash_point("committed")
        ids = [obj.object_id for obj in objects]
        await self.spool.durably("journal commit", self.journal.committed, ids)
        crash_point("commit journaled")
        for obj in objects:
            self.stats.records_committed += obj.records
            if self.committer is not None:
                self.stats.committed_tables.add(self.committer.qualified(obj))
            self._object_done(obj)

    def _object_done(self, obj: SpooledObject) -> None:
        if obj.batch is not None:
            obj.batch.pending_objects -= 1
            if obj.batch.pending_objects == 0:
                self.units.batch_done(obj.batch)

    async def _discard(self, obj: SpooledObject) -> None:
        """An object that is not to be uploaded (its rows are dead letters, or delivered again)."""
        await self.spool.durably("journal drop", self.journal.drop_object, obj.object_id)
        self._waiting.pop(obj.object_id, None)
        self._unspooled(obj)
        await anyio.Path(obj.path).unlink(missing_ok=True)
        self._object_done(obj)

    async def _upload(self, objects: MemoryObjectReceiveStream[SpooledObject]) -> None:
        async with objects:
            async for obj in objects:
                await self._upload_one(obj)

    async def _upload_one(self, obj: SpooledObject) -> None:
        async def attempting(key: str) -> None:
            if obj.batch is not None:  # sources that must know first (the Redis and queue ledgers)
                gathered: dict[int, tuple[Gather, list[tuple[SourceUnit, Ranges]]]] = {}
                for unit, rows in obj.unit_rows().items():
                    if unit.handle is not None and unit.handle.gather is not None:
                        gather = unit.handle.gather
                        gathered.setdefault(id(gather), (gather, []))[1].append((unit, rows))
                    elif unit.handle is not None:
                        await unit.handle.before_upload(key, obj.object_id, rows)
                for gather, spans in gathered.values():
                    await gather.before_upload(key, obj.object_id, spans)
            await self.spool.durably("journal key", self.journal.attempting, obj.object_id, key)

        if _handed_back(obj):
            log.warning(
                "object dropped, not uploaded: the leases of all its input ran out before its upload, "
                "so the queue delivers that input again (taken then, it lands once)",
                records=obj.records,
                batch=obj.object_id,
            )
            await self._discard(obj)
            return
        committer = self.committer if obj.kind == "data" else None  # dead letters stay loose objects
        try:
            allocator = None
            if committer is not None:
                allocator = await committer.place(obj)
                if allocator is None:  # its rows cannot fit its table: they are dead letters now
                    await self._discard(obj)
                    return
            done = await self.uploader.upload(obj, attempting, allocator)
        except Exception as exc:
            # Permanent refusal, or retries exhausted: keep the file, say where, stop looking ready.
            metrics.UPLOAD_FAILURES.inc()
            self.stats.failed_objects.append(obj)
            if obj.batch is not None:
                obj.batch.failed = True
            self.health.fail(describe(exc))
            if self.once:  # parked until the next run; it must not hold intake paused
                self._unspooled(obj)
            log.error(
                "upload failed; object kept in the spool",
                error=describe(exc),
                records=obj.records,
                path=str(obj.path),
            )
        else:
            self.health.clear("upload")  # readiness follows the latest outcome
            crash_point("put")
            # Said before the journal commit (which waits on the journal thread): the object is in R2
            # now; a crash before the commit makes the next start find it there and say it again.
            log.info(
                "uploaded",
                key=done.key,
                batch=obj.object_id,
                kind=obj.kind,
                records=obj.records,
                bytes=obj.size,
                seconds=round(done.seconds, 3),
                attempts=done.attempts,
            )
            await self.spool.durably(
                "journal upload", self.journal.uploaded, obj.object_id, done.key, committer is not None
            )
            crash_point("uploaded")
            self._waiting.pop(obj.object_id, None)
            self._unspooled(obj)
            self._count_upload(obj, done.key, done.seconds)
            await anyio.Path(obj.path).unlink(missing_ok=True)
            if committer is not None:
                committer.add(obj)
                return
        self._object_done(obj)

    def _count_upload(self, obj: SpooledObject, key: str, seconds: float) -> None:
        self.health.last_upload = time.time()
        metrics.UPLOAD_SECONDS.observe(seconds)
        if obj.kind != "data":
            self.stats.dead_letter_keys.append(key)
            return
        self.index.add(key, obj.size, obj.records, obj.object_id)
        self.stats.records_uploaded += obj.records
        self.stats.objects_uploaded += 1
        self.stats.first_key = self.stats.first_key or key
        self.stats.bytes_uploaded += obj.size
        metrics.RECORDS_UPLOADED.inc(obj.records)
        metrics.OBJECTS_UPLOADED.inc()
        metrics.BYTES_UPLOADED.inc(obj.size)


async def _nothing_to_do() -> bool:
    return True


def _handed_back(obj: SpooledObject) -> bool:
    """Every unit of the object gave its input back to its source (see UnitHandle.expired)."""
    spans = obj.unit_rows() if obj.kind == "data" else {}
    return bool(spans) and all(u.handle is not None and u.handle.expired() for u in spans)
