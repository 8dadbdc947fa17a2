"""HTTP source: `POST /v1/records[/{table}]` on the worker's server; 202 once the records are durable.

A request's accepted records become one *block* (bodies.py) appended to a segment in the spool
(segments.py). Requests that arrive while a commit runs go together in the next one: one fdatasync of
the segment, then one journal transaction that records every block as a unit (rows known) and every
Idempotency-Key answer. Only then are they answered, and their rows sent down the pipeline. A block is
a unit like a claimed file: acknowledged once its rows are in R2, and read again from the segment after
a crash, skipping the rows already spooled (the same bytes always parse to the same rows).

Backpressure: while the spool is over its high-water mark, or the rows waiting in memory exceed
`batch.max_bytes`, requests get 503 with Retry-After instead of hanging.
"""

from __future__ import annotations

import hmac
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream
from pydantic import SecretStr
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingest import metrics
from ingest.config import ConfigError, SourceConfig, table_problem
from ingest.cores import cores
from ingest.durable.commits import GroupCommit
from ingest.durable.deadletters import DeadLetters
from ingest.durable.faults import crash_point
from ingest.durable.files import is_disk_full
from ingest.logs import get_logger, register_secret
from ingest.sources.base import (
    Ack,
    AckError,
    Chunk,
    Item,
    RequestRow,
    SourceUnit,
    UnitHandle,
    UnitRead,
    Units,
)
from ingest.sources.http.bodies import (
    Bodies,
    BodyError,
    ParseBudget,
    Records,
    check_encoding,
    consecutive,
    media_type,
    stored,
    stored_records,
)
from ingest.sources.http.idempotency import Answer, IdempotencyKeys, KeyError422, body_hash, key_problem
from ingest.sources.http.parses import Parses
from ingest.sources.http.segments import PREFIX, Block, Segments

log = get_logger("ingest.sources.http.source")
TOKEN_ENV = "INGEST_HTTP_TOKEN"
RETRY_AFTER = 5  # seconds a sender is asked to wait on 503
ROOM_WAIT = 2.0  # seconds a request waits for in-memory room before 503
PRUNE_INTERVAL = 60.0
MAX_REJECTED_LISTED = 1000


class CommitAbandoned(Exception):
    """The commit leader was cancelled (the worker is stopping) before this request's group ran."""


@dataclass(eq=False)
class _Pending:
    """A request waiting for its group's commit."""

    records: Records
    table: str
    request_id: str
    request: RequestRow | None = None
    block: Block | None = None


def tokens_of(config: SourceConfig, index: int) -> list[str]:
    """The bearer tokens a sender may present; at least one is required."""
    values = [config.token, *config.tokens, SecretStr(os.environ.get(TOKEN_ENV, ""))]
    tokens = [t for v in values if (t := v.get_secret_value().strip())]  # blank: no token at all
    if not tokens:
        raise ConfigError(
            f"sources.{index}.token: required for an http source (or set {TOKEN_ENV}); senders present "
            "it as Authorization: Bearer <token>"
        )
    register_secret(*tokens)
    return tokens


class HttpSource:
    def __init__(
        self,
        config: SourceConfig,
        index: int,
        spool_dir: Path,
        dead: DeadLetters,
        max_record_bytes: int,
        buffer_bytes: int,
        per_table_keys: bool,
    ) -> None:
        self.config = config
        self.name = "http"
        self.tokens = tokens_of(config, index)
        self.dead = dead
        self.max_record_bytes = max_record_bytes
        self.buffer_bytes = buffer_bytes
        # Without {table} in the key template, one table only (the keys of two would collide).
        self.per_table_keys = per_table_keys
        self.segments = Segments(spool_dir / "http")
        self.keys = IdempotencyKeys(config.idempotency_window)
        self._units: Units | None = None
        self._out: MemoryObjectSendStream[Item] | None = None
        self._buffered = 0  # bytes of rows handed over but not yet taken by the pipeline
        self._room = anyio.Event()
        self._commits = GroupCommit(self._commit_group, lambda _: CommitAbandoned())
        self._running = False
        self.taking = anyio.Event()  # set once requests are taken (readiness waits for it)
        self._stopping = False
        self._stopped: anyio.Event | None = None
        self._inflight = 0  # requests past admission and not yet answered (the commit leader is one)
        self._quiet = anyio.Event()  # set when the last of them is answered
        self._bodies = Bodies(config.max_request_bytes, config.body_timeout, RETRY_AFTER)
        self._parsing = ParseBudget(buffer_bytes // 2, ROOM_WAIT * 5, RETRY_AFTER)
        self._parses = Parses(
            config.max_request_bytes, max_record_bytes, lanes=max(2, cores()), name=self.name
        )
        self._acked: dict[str, anyio.Event] = {}  # block id → set once its rows are in R2

    # -- the Source protocol -----------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route("/v1/records", self.handle, methods=["POST"]),
            Route("/v1/records/{table}", self.handle, methods=["POST"]),
        ]

    def stop(self) -> None:
        """Refuse new requests (503); those already admitted are committed and answered, and a body
        still arriving is cut (503): nothing of it was taken, and a slow sender would hold the drain."""
        self._stopping = True
        self._bodies.cut()
        if self._stopped is not None:
            self._stopped.set()

    def pending(self) -> list[str]:
        return [str(p) for p in self.segments.live()]

    def problems(self) -> dict[str, str]:
        return {}

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None:
        self._units = units
        self.keys.lookup = units.request
        self._stopped = anyio.Event()
        if self._stopping:
            self._stopped.set()
        out_send, out_recv = anyio.create_memory_object_stream[Item](float("inf"))
        self._out = out_send
        pruning = anyio.CancelScope()
        async with send, anyio.create_task_group() as tg:

            async def forward() -> None:
                async with out_recv:
                    async for item in out_recv:
                        await send.send(item)
                        if isinstance(item, Chunk):
                            self._buffered -= item.table.nbytes
                            self._room.set()

            tg.start_soon(forward)
            await self._recover(units)
            self._running = True
            self.taking.set()
            tg.start_soon(self._prune, pruning)
            await self._stopped.wait()
            if self._inflight:  # admitted requests finish their commit first
                await self._quiet.wait()
            await anyio.to_thread.run_sync(self.segments.roll)
            pruning.cancel()
            out_send.close()  # the forwarder ends once it handed everything over

    async def _prune(self, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                assert self._units is not None
                await self._units.forget_requests(time.time() - self.config.idempotency_window)
                await anyio.sleep(PRUNE_INTERVAL)

    async def _recover(self, units: Units) -> None:
        """Blocks journaled before the last stop and not yet acknowledged: read them again."""
        found = [(b, u) for u in units.known_units(PREFIX) if (b := Block.parse(u.id)) is not None]
        found.sort(key=lambda pair: (pair[0].segment, pair[0].offset))
        await anyio.to_thread.run_sync(self.segments.recover, [b for b, _ in found])
        for block, _ in found:
            unit = await units.open_unit(self._unit(block, None))
            if self.config.ack == "upload":
                self._acked[block.id] = anyio.Event()
            if unit.fully_covered:
                self._send_nowait(UnitRead(unit))
                continue
            data = await anyio.to_thread.run_sync(self.segments.read, block)
            source = f"http request {block.request}"
            recs = await anyio.to_thread.run_sync(
                stored_records, data, block.lines, source, self.max_record_bytes
            )
            self._hand_over(unit, recs)
        if found:
            log.info("reading accepted requests again after a restart", blocks=len(found))

    def _unit(self, block: Block, rows: int | None) -> SourceUnit:
        return SourceUnit(
            name=f"http request {block.request}",
            handle=UnitHandle(self._acker(block), ack_many=self._ack_many, counted=True),
            id=block.id,
            fingerprint="block",
            path=str(self.segments.path(block.segment)),
            origin=self.name,
            table=block.table,
            total=rows,
        )

    def _acker(self, block: Block) -> Ack:
        async def ack() -> bool:
            await self._release([block])
            return True

        return ack

    async def _ack_many(self, units: list[SourceUnit]) -> list[bool | AckError | None]:
        """Blocks whose rows are in R2, released in one thread call: a batch of a thousand requests
        would otherwise take a thousand threads' turns, and new requests' parses wait behind them."""
        await self._release([b for u in units if (b := Block.parse(u.id)) is not None])
        return [True] * len(units)

    async def _release(self, blocks: list[Block]) -> None:
        await anyio.to_thread.run_sync(self.segments.release, blocks)
        for block in blocks:
            if (event := self._acked.pop(block.id, None)) is not None:
                event.set()

    def _send_nowait(self, item: Item) -> None:
        assert self._out is not None
        if isinstance(item, Chunk):
            self._buffered += item.table.nbytes
        self._out.send_nowait(item)

    # -- requests ---------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            response = await self._handle(request)
        except BodyError as exc:
            response = _error(exc.status, str(exc), retry_after=exc.retry_after)
        except ClientDisconnect:
            response = _error(499, "client went away before sending its whole body")
        metrics.HTTP_REQUESTS.labels(self.name, str(response.status_code)).inc()
        metrics.HTTP_SECONDS.labels(self.name).observe(time.monotonic() - started)
        return response

    def _authorized(self, request: Request) -> bool:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        given = presented.strip().encode()
        # Compare with every token (no early exit): the time taken says nothing about which matched.
        matches = [hmac.compare_digest(given, t.encode()) for t in self.tokens]
        return scheme.lower() == "bearer" and any(matches)

    def _table(self, request: Request) -> str:
        named: str | None = request.path_params.get("table")
        if named is None:
            return self.config.default_table
        if (problem := table_problem(named)) is not None:
            raise BodyError(400, problem)
        if self.config.tables and named not in self.config.tables:
            raise BodyError(
                404, f"table {named!r} is not in this source's tables ({', '.join(self.config.tables)})"
            )
        if not self.per_table_keys and named != self.config.default_table:
            raise BodyError(
                404,
                f"table {named!r}: this worker writes one table ({self.config.default_table!r}) because "
                "output.key_template has no {table}; add {table} to it to accept others",
            )
        return named

    def _unavailable(self) -> str | None:
        if not self._running or self._stopping or self._units is None:
            return "the worker is starting or stopping; send again to this or another worker"
        if (why := self._units.intake_blocked()) is not None:
            return f"{why}; send again later"
        return None

    async def _handle(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "Authorization: Bearer <token> required (the source's token)", bearer=True)
        table = self._table(request)
        if (why := self._unavailable()) is not None:
            return _error(503, why, retry_after=RETRY_AFTER)
        media = media_type(request.headers.get("content-type"))
        encoding = check_encoding(request.headers.get("content-encoding"))
        key = request.headers.get("idempotency-key")
        if key is not None and (problem := key_problem(key)) is not None:
            raise BodyError(400, problem)
        # Counted from admission: a drain waits for a body still arriving only until `stop` cuts it.
        self._inflight += 1
        try:
            body = await self._bodies.receive(request)
            outcome = await self._admitted(body, media, encoding, table, key)
        finally:  # committed (or refused): a drain need not wait for what follows
            self._inflight -= 1
            if not self._inflight:
                self._quiet.set()
                self._quiet = anyio.Event()
        return outcome if isinstance(outcome, Response) else await self._answer(outcome)

    async def _admitted(
        self, body: bytes, media: str, encoding: str, table: str, key: str | None
    ) -> Answer | Response:
        if key is None:
            return await self._take(body, media, encoding, table, None)
        try:
            earlier = await self.keys.begin(key, body_hash(table, media, encoding, body))
        except KeyError422:
            return _error(422, "Idempotency-Key: used before with a different body; use a new key")
        if earlier is not None:
            return earlier
        taken: Answer | Response | None = None
        try:
            taken = await self._take(body, media, encoding, table, key)
        finally:  # a repeat waiting for this one gets its answer (or, if it failed, is taken anew)
            self.keys.end(key, taken if isinstance(taken, Answer) else None)
        return taken

    async def _take(
        self, body: bytes, media: str, encoding: str, table: str, key: str | None
    ) -> Answer | Response:
        """Parse, keep the rejected lines, commit the accepted ones: the answer (or an error)."""
        request_id = uuid.uuid4().hex[:16]
        source = f"http request {request_id}"

        # A compressed body may inflate to max_request_bytes: it is counted so.
        size = len(body) if encoding == "identity" else self.config.max_request_bytes
        async with self._parsing.hold(size):
            recs = await self._parses.records(body, media, encoding, source, table)  # type: ignore[arg-type]
        rejected = [{"line": d.line, "reason": d.reason} for d in recs.rejected]
        if recs.rejected and self.config.strict:
            metrics.HTTP_RECORDS.labels(self.name, "rejected").inc(len(recs.rejected))
            return _error(
                400,
                f"{len(recs.rejected)} malformed line(s) and strict = true: nothing was accepted",
                rejected=rejected[:MAX_REJECTED_LISTED],
            )
        if not await self._wait_for_room():
            return _error(
                503,
                "rows waiting for the pipeline exceed batch.max_bytes; send again later",
                retry_after=RETRY_AFTER,
            )
        if recs.rejected:  # kept (fsynced) before the answer says where they are
            await anyio.to_thread.run_sync(lambda: self.dead.write(recs.rejected, self.name))
        body_out: dict[str, object] = {"accepted": recs.rows, "rejected": rejected[:MAX_REJECTED_LISTED]}
        if len(rejected) > MAX_REJECTED_LISTED:
            body_out["rejected_total"] = len(rejected)
        body_out["request_id"] = request_id
        pending = _Pending(recs, table, request_id)
        answer = Answer(202, body_out)
        if key is not None:
            pending.request = self.keys.row(key, answer)
        try:
            await self._commits(pending)
        except CommitAbandoned:
            return _error(503, "the worker is stopping; send again", retry_after=RETRY_AFTER)
        except OSError as exc:
            if is_disk_full(exc):
                log.error("spool disk full: requests are refused until there is room", error=str(exc))
                return _error(503, "the spool disk is full; send again later", retry_after=RETRY_AFTER * 6)
            log.error("cannot write a segment: requests are refused", error=str(exc))
            return _error(
                503,
                f"cannot write the spool ({exc.strerror or exc}); send again later",
                retry_after=RETRY_AFTER,
            )
        except Exception as exc:  # the journal refused (a SpoolError): the run is ending
            log.error("could not keep a request", error=str(exc))
            return _error(503, f"cannot write the spool: {exc}", retry_after=RETRY_AFTER)
        answer.blocks = [pending.block.id] if pending.block is not None else []
        metrics.HTTP_RECORDS.labels(self.name, "accepted").inc(recs.rows)
        metrics.HTTP_RECORDS.labels(self.name, "rejected").inc(len(recs.rejected))
        return answer

    async def _answer(self, answer: Answer) -> Response:
        headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
        status = 202
        if self.config.ack == "upload":
            waiting = [e for b in answer.blocks if (e := self._acked.get(b)) is not None]
            with anyio.move_on_after(self.config.ack_timeout):
                for event in waiting:
                    await event.wait()
                status = 200
            if status != 200:
                late = (
                    f"not in R2 after ack_timeout ({self.config.ack_timeout:g}s); the records are kept "
                    "and will be delivered: do not send them again"
                )
                return JSONResponse({**answer.body, "error": late}, status_code=504, headers=headers)
        return JSONResponse(answer.body, status_code=status, headers=headers)

    async def _wait_for_room(self) -> bool:
        with anyio.move_on_after(ROOM_WAIT):
            while self._buffered >= self.buffer_bytes:
                self._room = anyio.Event()
                await self._room.wait()
            return True
        return False

    # -- group commit -------------------------------------------------------------------------------

    async def _commit_group(self, group: list[_Pending]) -> list[None]:
        """One fdatasync of the segment and one journal transaction for the group."""
        assert self._units is not None
        writing = [p for p in group if p.records.rows]
        blocks: list[Block] = []
        if writing:
            blocks = await anyio.to_thread.run_sync(  # `stored` may copy a block: not on the loop
                lambda: self.segments.append(
                    [(stored(p.records), len(p.records.lines), p.table, p.request_id) for p in writing]
                )
            )
        for p, block in zip(writing, blocks, strict=True):
            p.block = block
            if p.request is not None:
                p.request = RequestRow(
                    p.request.key, p.request.hash, p.request.answer, block.id, p.request.created
                )
        units = [self._unit(b, p.records.rows) for p, b in zip(writing, blocks, strict=True)]
        requests = [p.request for p in group if p.request is not None]
        if not units and not requests:
            return [None] * len(group)  # nothing accepted and nothing to remember
        crash_point("segment-written")
        try:
            await self._units.accept(units, requests)
        except BaseException:
            await anyio.to_thread.run_sync(self.segments.discard, blocks)
            raise
        crash_point("accepted")  # durable, not yet answered: a retry must get the first answer
        metrics.HTTP_COMMITS.labels(self.name).inc()
        for p, unit in zip(writing, units, strict=True):
            assert p.block is not None
            unit = await self._units.open_unit(unit)
            if self.config.ack == "upload":
                self._acked[p.block.id] = anyio.Event()
            self._hand_over(unit, p.records)
        return [None] * len(group)

    def _hand_over(self, unit: SourceUnit, recs: Records) -> None:
        """The block's rows go down the pipeline, numbered with the body's lines."""
        identity = consecutive(recs.lines)
        for table, first, lines in recs.tables:
            if not identity:  # number rows with the body's lines, not the block's
                picked = lines if lines is not None else list(range(first, first + table.num_rows))
                lines = [recs.lines[n - 1] for n in picked]
                first = lines[0] if lines else first
            for chunk in unit.chunks(table, first, lines):
                self._send_nowait(chunk)
        self._send_nowait(UnitRead(unit))


def _error(
    status: int,
    message: str,
    bearer: bool = False,
    retry_after: int | None = None,
    rejected: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    headers: dict[str, str] = {}
    if bearer:
        headers["WWW-Authenticate"] = 'Bearer realm="ingest"'
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body: dict[str, object] = {"error": message}
    if rejected is not None:
        body["rejected"] = rejected
    return JSONResponse(body, status_code=status, headers=headers)
