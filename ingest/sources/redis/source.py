"""Redis Streams source: one consumer group shared by every worker; XACK only once rows are in R2.

Each worker is one consumer (named by `worker.id`). It first takes back its own pending entries (after a
restart: the units its journal knows, read again with the rows already spooled skipped; then the rest of
its pending list), then new ones (`>`). A *unit* is one read's entries of one stream; it is acknowledged
(XACK, all its entries at once) when every row read from it is inside an uploaded object.

Dead workers (takeover.py): entries idle longer than `claim_idle` are taken over; before a PUT, the
ledger (ledger.py) records which entries the object holds and the key attempted, so a worker taking over
entries whose object is already in R2 acknowledges them instead of ingesting them again.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlparse

import anyio
import anyio.to_thread
import pyarrow as pa
from anyio.streams.memory import MemoryObjectSendStream
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_never

from ingest import metrics
from ingest.config import ConfigError, RetryConfig, SourceConfig, redis_url_problem, redis_where
from ingest.durable.deadletters import DeadLetter, DeadLetters
from ingest.durable.faults import crash_point
from ingest.logs import get_logger, register_secret
from ingest.parsing.jsonlines import Parsed, parse_lines
from ingest.sources.base import (
    AckError,
    Item,
    Ranges,
    SourceError,
    SourceUnit,
    UnitHandle,
    UnitRead,
    Units,
)
from ingest.sources.redis.entries import Entries, InFlight
from ingest.sources.redis.ledger import Ledger, Span, entry_order, text, unit_spans
from ingest.sources.redis.resume import DEAD, PREFIX, Known, Resume
from ingest.sources.redis.takeover import TakeOver

log = get_logger("ingest.sources.redis.source")
URL_ENV = "INGEST_REDIS_URL"
ENTRY_ID_COLUMN = "_entry_id"
POOL_SIZE = 16
TAKING = 3  # reads being parsed, journaled and sent at once (units are independent)
T = TypeVar("T")
_RAW_REPLIES = ("XREADGROUP", "XRANGE", "XAUTOCLAIM", "XCLAIM")  # parsed here, not into dicts
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


class GroupGone(SourceError):
    """The consumer group (or its stream) vanished: XGROUP DESTROY, DEL, Redis restarted empty."""


class RedisSource(TakeOver, Resume):
    resumes_first = PREFIX  # its recovered objects wait for `_resume` (Units.resumed)

    def __init__(
        self,
        config: SourceConfig,
        index: int,
        worker_id: str,
        dead: DeadLetters,
        max_record_bytes: int,
        batch_max_age: float,
        retry: RetryConfig,
    ) -> None:
        self.config = config
        url = config.url.get_secret_value() or os.environ.get(URL_ENV, "")
        if not url:
            raise ConfigError(f"sources.{index}.url: required for a redis source (or set {URL_ENV})")
        if (problem := redis_url_problem(url)) is not None:
            key = f"sources.{index}.url" if config.url.get_secret_value() else URL_ENV
            raise ConfigError(f"{key}: {problem}")
        parsed = urlparse(url)
        register_secret(parsed.password, url if parsed.password else None)
        self.url = url
        self.where = redis_where(url)  # no credentials
        self.streams = config.streams or ([config.stream] if config.stream else [])
        if not self.streams:
            raise ConfigError(f"sources.{index}.stream: required: the stream to read (or streams = [...])")
        if config.claim_idle <= batch_max_age + config.claim_interval:
            raise ConfigError(
                f"sources.{index}.claim_idle: {config.claim_idle:g}s is not longer than batch.max_age "
                f"({batch_max_age:g}s) + claim_interval ({config.claim_interval:g}s): live workers' entries "
                "would be taken over while their batch is still open; raise claim_idle"
            )
        self.name = f"redis:{','.join(self.streams)}"
        self.consumer = worker_id
        self.group = config.group
        self.dead = dead
        self.max_record_bytes = max_record_bytes
        self.retry = retry
        self.once = False
        self._client: Redis | None = None
        self._units: Units | None = None
        self._stopped = False
        self._problem: str | None = None
        self._inflight = {s: InFlight() for s in self.streams}  # taken, not yet acked
        self._last_read: dict[str, str] = {}  # stream → the last entry id this worker read (for `gone`)
        self._ledgers: dict[str, Ledger] = {}

    # -- connection --------------------------------------------------------------------------------

    @property
    def client(self) -> Redis:
        if self._client is None:
            # Callers wait for a free connection (acks of many units at once) instead of failing.
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=POOL_SIZE,
                timeout=None,
                protocol=2,
                socket_connect_timeout=5,
                socket_timeout=self.config.block + 10,
                health_check_interval=30,
            )
            self._client = Redis(connection_pool=pool)
            for command in _RAW_REPLIES:  # a dict per entry costs more than the rest of the read
                self._client.set_response_callback(command, _as_is)
        return self._client

    @property
    def cmd(self) -> Any:
        """The client for commands whose replies redis-py types loosely (parsed below)."""
        return self.client

    def ledger(self, stream: str) -> Ledger:
        if stream not in self._ledgers:
            self._ledgers[stream] = Ledger(self.client, stream, self.group)
        return self._ledgers[stream]

    async def check(self) -> None:
        """At start: Redis answers and every stream has the group (created when missing), else a
        config error naming the URL (without its password). A group that existed before (its marker
        says so) and is gone now is not created again: see `gone`."""
        try:
            await self.client.ping()
            for stream in self.streams:
                marker = self.ledger(stream).marker
                existed = bool(await self.client.exists(marker))
                if existed and not await self._has_group(stream):
                    raise self.gone(stream)
                try:
                    await self.cmd.xgroup_create(stream, self.group, id=self.config.start, mkstream=True)
                    log.info(
                        "consumer group created", stream=stream, group=self.group, start=self.config.start
                    )
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                await self.client.set(marker, self.config.start)
        except (RedisError, OSError) as exc:
            await self.close()
            raise ConfigError(
                f"sources: redis at {self.where}: {_describe(exc)}; check url and that Redis runs"
            ) from None

    async def _has_group(self, stream: str) -> bool:
        try:
            groups = await self.cmd.xinfo_groups(stream)
        except ResponseError:  # no such stream
            return False
        return any(text(g["name"]) == self.group for g in groups)

    async def _recreate_after_data_loss(self) -> bool:
        """A group is missing: if Redis lost all its data (restarted empty: every marker is gone too),
        nothing old is left to ingest twice, so the groups are created again at `start`, as at a first
        start; otherwise (a group deleted) False, and the operator decides (see `gone`)."""
        markers = [self.ledger(stream).marker for stream in self.streams]
        if await self.client.exists(*markers):
            return False
        for stream, marker in zip(self.streams, markers, strict=True):
            try:
                await self.cmd.xgroup_create(stream, self.group, id=self.config.start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            await self.client.set(marker, self.config.start)
        log.warning(
            "redis lost its data (restarted empty): consumer groups created again",
            streams=self.streams,
            group=self.group,
            start=self.config.start,
        )
        return True

    def gone(self, stream: str | None = None) -> GroupGone:
        """One line: what vanished, and why the worker does not create it again by itself: from where
        to go on is a choice (the last entry already ingested, or only new entries) that only the
        operator can make; creating it at `start` would ingest again what was delivered."""
        streams = [stream] if stream else self.streams
        last = ", ".join(f"{s}: {self._last_read[s]}" for s in streams if self._last_read.get(s))
        ours = f" (the last entry this worker read: {last})" if last else ""
        return GroupGone(
            f"redis at {self.where}: consumer group {self.group!r} of stream {', '.join(streams)} is gone "
            "(XGROUP DESTROY, DEL of the stream, or Redis restarted without its data); it is not "
            f"created again by itself, so that nothing is ingested twice: create it with XGROUP CREATE "
            f"<stream> {self.group} <id> MKSTREAM, <id> being the last entry already ingested{ours}, "
            "$ for new entries only, or 0 for a stream created anew"
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A Redis call, retried through connection failures (failover, restart) with backoff, and
        (a daemon) while its group is gone, until someone creates it again; readiness says why
        meanwhile. `--once` gives up after retry.once_max_elapsed, and at once if the group is gone."""

        def failing(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, GroupGone):
                reason = str(exc)
                if self._problem != reason:
                    log.error("redis consumer group gone; waiting for it to be created", error=reason)
            else:
                reason = f"redis at {self.where} unreachable ({what}): {_describe(exc)}"
                if self._problem != reason:
                    log.warning("redis unreachable; retrying", error=_describe(exc), request=what)
            self._problem = reason
            if self._units is not None:
                self._units.source_problem(self.name, reason)

        async def call() -> T:
            try:
                return await fn()
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
            if not await self._recreate_after_data_loss():
                raise self.gone()
            return await fn()

        retried = _TRANSIENT if self.once else (*_TRANSIENT, GroupGone)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(retried),
            wait=wait_random_exponential(multiplier=self.retry.initial, max=self.retry.max),
            stop=stop_after_delay(self.retry.once_max_elapsed) if self.once else stop_never,
            before_sleep=failing,
            reraise=True,
        ):
            with attempt:
                result = await call()
        if self._problem is not None:
            log.info("redis answering again", after=self._problem)
            self._problem = None
            if self._units is not None:
                self._units.source_problem(self.name, None)
        return result

    # -- the Source protocol -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopped = True

    def pending(self) -> list[str]:
        return [f"{self.where}/{s} ({len(ids)} entries)" for s, ids in self._inflight.items() if ids]

    def problems(self) -> dict[str, str]:
        return {self.name: self._problem} if self._problem else {}

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None:
        """Read until stopped (`once`: until nothing new is left). The client stays open after: the
        units taken are acknowledged (XACK) once their rows are in R2; the worker closes it at the end."""
        self._units = units
        self.once = once
        try:
            await self._consume(send, once)
        finally:  # ended before resuming (stopped, failed): what waited for it goes on as it is
            units.resumed(PREFIX)

    async def _consume(self, send: MemoryObjectSendStream[Item], once: bool) -> None:
        assert self._units is not None
        async with send, anyio.create_task_group() as tg:
            await self._resume(send)
            self._units.resumed(PREFIX)  # recovered objects: their ledger records come first
            if once:
                await self._reclaim(send)
                await self._sweep()
            else:
                tg.start_soon(self._maintain, send.clone())
            reads_send, reads_recv = anyio.create_memory_object_stream[list[tuple[str, Entries]]](1)
            tg.start_soon(self._prefetch, reads_send, once)
            taking = anyio.Semaphore(TAKING)  # reads parsed and journaled at once
            async with reads_recv, anyio.create_task_group() as takes:
                async for reads in reads_recv:
                    if reads:
                        crash_point("redis-read")  # delivered to this consumer, nothing kept yet
                    for stream, entries in reads:
                        await taking.acquire()
                        takes.start_soon(self._take_one, taking, stream, entries, send.clone())
                    if self._stopped or (once and not reads):
                        break
            # A read fetched ahead and not taken stays pending for this consumer: the next start
            # resumes it (or, if this worker never returns, another takes it over).
            tg.cancel_scope.cancel()

    async def _take_one(
        self,
        taking: anyio.Semaphore,
        stream: str,
        entries: Entries,
        send: MemoryObjectSendStream[Item],
    ) -> None:
        try:
            async with send:
                await self._take(stream, entries, send, contiguous=True)
        finally:
            taking.release()

    async def _prefetch(self, reads: MemoryObjectSendStream[list[tuple[str, Entries]]], once: bool) -> None:
        """The next XREADGROUP runs while the last one is parsed and sent on."""
        assert self._units is not None
        async with reads:
            while not self._stopped:
                await self._units.wait_for_room()
                block = 0 if once else int(self.config.block * 1000)
                got = await self._call(
                    "XREADGROUP", partial(self._read, {s: ">" for s in self.streams}, block)
                )
                await reads.send(got)
                if once and not got:
                    return

    async def _read(
        self, where: dict[str, str], block: int | None, trimmed: list[str] | None = None
    ) -> list[tuple[str, Entries]]:
        """XREADGROUP; entries of this consumer's pending list that were deleted from the stream
        since (they come back without fields) go to `trimmed`."""
        reply = await self.cmd.xreadgroup(
            self.group, self.consumer, where, count=self.config.read_count, block=block or None
        )
        out = [(text(s), Entries.from_reply(es)) for s, es in reply or ()]
        for stream, entries in out:
            if entries and where.get(stream) == ">":
                self._last_read[stream] = entries.ids[-1]
        if trimmed is not None:
            trimmed += [i.decode() for _, entries in reply or () for i, f in entries if f is None]
        return out

    # -- taking entries ------------------------------------------------------------------------------

    async def _take(
        self,
        stream: str,
        entries: Entries,
        send: MemoryObjectSendStream[Item],
        unit_id: str | None = None,
        contiguous: bool = False,
        known: Known | None = None,
    ) -> None:
        """One unit: parse the entries (in a thread), dead-letter the malformed ones, send the rows.
        `known`: a journaled unit read again whose stream lost some of its entries since."""
        assert self._units is not None
        if not entries and known is None:
            return
        ids = entries.ids
        metrics.REDIS_ENTRIES.labels(stream, "read").inc(len(ids))
        source = f"redis:{stream}"
        field = self.config.field.encode()

        def parse() -> tuple[Parsed, list[DeadLetter]]:
            block = entries.lines(field)
            return parse_lines(block, source, self.max_record_bytes, len(ids)) if block else ([], [])

        tables, bad = await anyio.to_thread.run_sync(parse)
        fingerprint = "range" if contiguous else "ids:" + ",".join(ids)
        if bad:  # which entries had no row: the rows of a unit that loses entries are found again
            fingerprint += DEAD + ",".join(str((d.line or 1) - 1) for d in bad)
        first_last = f"{ids[0]}..{ids[-1]}" if ids else "(trimmed)"
        unit = SourceUnit(
            name=f"{source} {first_last}",
            id=unit_id or f"{PREFIX}{ids[0]}:{ids[-1]}:{len(ids)}:{stream}",
            # A `>` read is every entry of the stream between its first and last id: the range says
            # which; entries taken over or resumed are listed.
            fingerprint=known.fingerprint if known is not None else fingerprint,
            origin=self.name,
            table=self.config.default_table,
        )
        rows: list[str] = []  # the entry id of each row, in row order
        shaped: list[tuple[pa.Table, int, list[int] | None]] = []
        for table, first, numbered in tables:
            if numbered is None and first == 1 and table.num_rows == len(ids):
                row_ids = ids  # every entry is a row (the common case)
            else:
                at = numbered if numbered is not None else range(first, first + table.num_rows)
                row_ids = [ids[n - 1] for n in at]
            rows += row_ids
            if self.config.include_id:
                table = table.append_column(ENTRY_ID_COLUMN, pa.array(row_ids, pa.string()))
            shaped.append((table, first, numbered))
        acked = ids
        if known is not None:  # rows numbered as when the unit was first read, not as now
            acked = sorted({*ids, *known.entries}, key=entry_order)
            first_read = set(known.rows)  # (an entry that is a row now and was not then: after them)
            rows = known.rows + [i for i in rows if i not in first_read]
        unit.total = len(rows)  # journaled when opened (counted): no second write when read
        fields: list[str] = []  # its span records in the ledger, deleted with its XACK
        # A `>` read read whole, and its rows numbered as read: its rows are spans of the stream.
        spans = partial(unit_spans, rows, ids=ids, contiguous=contiguous and known is None)
        unit.handle = EntriesRead(
            partial(self._ack, stream, unit, acked, fields),
            counted=True,
            ledger=partial(self._before_upload, stream, spans, fields),
        )
        self._inflight[stream].add(unit, acked)
        unit = await self._units.open_unit(unit)
        if bad:
            letters = [DeadLetter(source, None, d.reason, d.raw, entry=ids[(d.line or 1) - 1]) for d in bad]
            await anyio.to_thread.run_sync(lambda: self.dead.write(letters, self.name))
            metrics.REDIS_ENTRIES.labels(stream, "dead_lettered").inc(len(letters))
        if known is not None:
            await self._send_known(stream, unit, known, shaped, ids, rows, send)
        elif not unit.fully_covered:
            for table, first, numbered in shaped:
                for chunk in unit.chunks(table, first, numbered):
                    await send.send(chunk)
        await send.send(UnitRead(unit))

    async def _before_upload(
        self,
        stream: str,
        spans: Callable[[Ranges], list[Span]],
        fields: list[str],
        key: str,
        object_id: str,
        rows: Ranges,
    ) -> None:
        held = spans(rows)
        if not held:
            return
        field = await self._call("ledger", partial(self.ledger(stream).attempting, object_id, key, held))
        if field not in fields:
            fields.append(field)

    async def _ack(self, stream: str, unit: SourceUnit, ids: list[str], fields: list[str]) -> bool:
        try:
            await self._call("XACK", partial(self.ledger(stream).acknowledge, ids, fields))
        except (RedisError, OSError) as exc:
            raise AckError(f"XACK on {stream}: {_describe(exc)}") from exc
        self._inflight[stream].remove(unit)
        metrics.REDIS_ENTRIES.labels(stream, "acked").inc(len(ids))
        return True


@dataclass(eq=False)
class EntriesRead(UnitHandle):
    """A read's entries: XACKed once uploaded; their ids go in the ledger before each upload."""

    ledger: Callable[[str, str, Ranges], Awaitable[None]] | None = None

    async def before_upload(self, key: str, object_id: str, rows: Ranges) -> None:
        if self.ledger is not None:
            await self.ledger(key, object_id, rows)


def _as_is(response: object, **options: object) -> object:
    return response


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    return f"{type(exc).__name__}: {exc}"
