"""Cloudflare Queues source: an HTTP pull consumer; leases are acknowledged only once rows are in R2.

A *unit* is one pull's messages. Its leases are acknowledged in bulk (`ack_many`, ≤ 100 per request)
once every row of it is in an uploaded object (and committed, with Iceberg on). Before each PUT the
ledger (ledger.py) records which messages' rows the object holds, so a message delivered again (a worker
died after the upload, before the ack) is not ingested twice: its rows already in R2 are skipped.

Leases run out after `visibility_timeout`. It is checked at start against the batch age and the upload
(a shorter one is a config error); when uploads are held up longer than that, an object whose every unit
has lost its lease is dropped instead of uploaded (`MessagesHandle.expired`), and the messages, which the
queue delivers again, land once from whoever takes them. A unit that lost its lease asks for none of its
messages to be acknowledged: those still held are handed back at once (`retries`, delay 0).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from ingest.config import ConfigError, RetryConfig, SourceConfig
from ingest.durable.deadletters import DeadLetter, DeadLetters
from ingest.durable.faults import crash_point
from ingest.logs import get_logger, register_secret
from ingest.parsing.jsonlines import Parsed, parse_lines
from ingest.r2.client import R2Client
from ingest.sources.base import (
    AckError,
    Item,
    Ranges,
    SourceUnit,
    UnitHandle,
    UnitRead,
    Units,
    merge_ranges,
)
from ingest.sources.queue.api import Pulled, QueueApi, describe
from ingest.sources.queue.bodies import decode
from ingest.sources.queue.ledger import QueueLedger

log = get_logger("ingest.sources.queue.source")
PREFIX = "queue:"
FIRST_WAIT = 0.2  # an empty queue is asked again after this, doubling up to poll_interval


def lease_margin(visibility_timeout: float) -> float:
    """How long before a lease runs out its rows count as handed back: a PUT started later might end
    after another worker looked for the object in R2."""
    return min(30.0, max(1.0, visibility_timeout / 10))


def check_visibility(cfg: SourceConfig, index: int, batch_max_age: float, commit_interval: float) -> None:
    """The visibility timeout must outlast a batch's age (+ the Iceberg commit) and the upload."""
    need = batch_max_age + commit_interval + 2 * lease_margin(cfg.visibility_timeout)
    if cfg.visibility_timeout <= need:
        commit = f" + iceberg.commit_interval ({commit_interval:g}s)" if commit_interval else ""
        raise ConfigError(
            f"sources.{index}.visibility_timeout: {cfg.visibility_timeout:g}s does not outlast "
            f"batch.max_age ({batch_max_age:g}s){commit} plus the upload; leases would run out while "
            f"their rows wait, and the messages would be delivered again: raise it above {math.ceil(need)}s "
            "(at most 43200) or lower batch.max_age"
        )


@dataclass
class Pull:
    """One pull's messages as a unit: message ids and leases, and which message line each row is."""

    ids: list[str]
    leases: list[str]
    expires: list[float]  # wall time each lease runs out
    attempts: list[int]  # deliveries so far (the queue's count)
    rows: list[tuple[int, int]]  # unit row → (message index, line of that message)
    kept: set[int] | None = None  # resumed: the messages whose rows are all kept (None: all)
    objects: set[str] = field(default_factory=set)  # object ids holding its rows

    def fingerprint(self) -> str:
        runs: list[list[int]] = []
        for m, line in self.rows:
            if runs and runs[-1][0] == m and runs[-1][1] + runs[-1][2] == line:
                runs[-1][2] += 1
            else:
                runs.append([m, line, 1])
        return json.dumps(
            {
                "ids": self.ids,
                "leases": self.leases,
                "expires": self.expires,
                "attempts": self.attempts,
                "runs": runs,
            }
        )

    @classmethod
    def from_fingerprint(cls, text: str) -> Pull:
        data = json.loads(text)
        rows = [(m, line + i) for m, line, n in data["runs"] for i in range(n)]
        return cls(data["ids"], data["leases"], data["expires"], data["attempts"], rows)


@dataclass(eq=False)
class MessagesHandle(UnitHandle):
    pull: Pull | None = None
    margin: float = 1.0

    give_back: Callable[[SourceUnit], Awaitable[None]] | None = None
    unit: SourceUnit | None = None

    def expired(self) -> bool:
        assert self.pull is not None
        return bool(self.pull.expires) and time.time() > min(self.pull.expires) - self.margin

    async def gave_up(self) -> None:
        if self.give_back is not None and self.unit is not None:
            await self.give_back(self.unit)


class QueueSource:
    def __init__(
        self,
        config: SourceConfig,
        index: int,
        account_id: str,
        api_base_url: str,
        fallback_token: SecretStr,
        client: R2Client,
        bucket: str,
        prefix: str,
        worker_id: str,
        dead: DeadLetters,
        max_record_bytes: int,
        retry: RetryConfig,
    ) -> None:
        token = config.api_token.get_secret_value() or fallback_token.get_secret_value()
        if not token:
            raise ConfigError(
                f"sources.{index}.api_token: empty: a queue source needs a Cloudflare API token with Queues "
                "Write; set CLOUDFLARE_API_TOKEN (or api_token)"
            )
        if not account_id:
            raise ConfigError("r2.account_id: required for a queue source (R2_ACCOUNT_ID)")
        register_secret(token)
        self.config = config
        self.api = QueueApi(token, account_id, api_base_url, retry, config.queue, config.queue_id)
        self._ledger_at = (client, bucket, prefix, worker_id)
        self._ledger: QueueLedger | None = None
        self.dead = dead
        self.max_record_bytes = max_record_bytes
        self.margin = lease_margin(config.visibility_timeout)
        self.name = f"queue:{config.queue or config.queue_id}"
        self.resumes_first = f"{PREFIX}{config.queue or config.queue_id}:"
        self._units: Units | None = None
        self._stopped = False
        self._stop_event = anyio.Event()
        self._problem: str | None = None
        self._inflight: dict[str, tuple[Pull, int]] = {}  # message id → its unit's pull, its index
        self._objects: dict[str, set[str]] = {}  # object id → ids of units not yet acknowledged
        self._pulls: dict[int, Pull] = {}  # pulls whose leases are held (not acknowledged nor handed back)
        self.records = 0
        self.skipped = 0  # rows of redelivered messages already in R2

    # -- start and stop ------------------------------------------------------------------------------

    async def check(self) -> None:
        """At start: the token may use the queue, and the queue exists (else exit 2, one line)."""
        self.api.once = True
        try:
            queue_id = await self.api.resolve()
        except ConfigError:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise ConfigError(
                f"sources: {self.api.where}: the Cloudflare API failed: {describe(exc)}"
            ) from None
        client, bucket, prefix, worker_id = self._ledger_at
        self._ledger = QueueLedger(client, bucket, prefix, queue_id, worker_id)

    @property
    def ledger(self) -> QueueLedger:
        if self._ledger is None:
            raise RuntimeError("QueueSource.check() runs before the source is used")
        return self._ledger

    async def close(self) -> None:
        await self.api.close()

    def stop(self) -> None:
        self._stopped = True
        self._stop_event.set()

    def pending(self) -> list[str]:
        return [f"{self.api.where} ({len(self._inflight)} messages leased)"] if self._inflight else []

    def problems(self) -> dict[str, str]:
        return {self.name: self._problem} if self._problem else {}

    def _said_problem(self, reason: str | None) -> None:
        self._problem = reason
        if self._units is not None:
            self._units.source_problem(self.name, reason)

    # -- reading ---------------------------------------------------------------------------------------

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None:
        self._units = units
        self.api.once = once
        self.api.on_problem = self._said_problem
        try:
            async with send:
                await self._resume(send)
                units.resumed(self.resumes_first)
                async with anyio.create_task_group() as tg:
                    for _ in range(self.config.concurrency):
                        tg.start_soon(self._pulling, send.clone(), once)
        finally:
            units.resumed(self.resumes_first)
            calls = self.api.calls
            log.info(
                "queue source done",
                queue=self.api.where,
                records=self.records,
                pulls=calls.pull,
                acks=calls.ack,
                rate_limited=calls.rate_limited,
                ledger_requests=self.ledger.writes + self.ledger.reads,
                skipped_as_already_in_r2=self.skipped,
            )

    async def _pulling(self, send: MemoryObjectSendStream[Item], once: bool) -> None:
        assert self._units is not None
        wait = FIRST_WAIT
        async with send:
            while not self._stopped:
                while self._behind() and not self._stopped:  # leases held would run out before their ack
                    with anyio.move_on_after(0.1):
                        await self._stop_event.wait()
                await self._units.wait_for_room()
                started = time.time()
                messages, _ = await self.api.pull(self.config.batch_size, self.config.visibility_timeout)
                if not messages:
                    if once:
                        return
                    with anyio.move_on_after(wait):  # short polling: back off while it is empty
                        await self._stop_event.wait()
                    wait = min(wait * 2, self.config.poll_interval)
                    continue
                wait = FIRST_WAIT
                crash_point("queue-pulled")  # leased to this worker, nothing kept yet
                await self._take(messages, started + self.config.visibility_timeout, send)

    def _behind(self) -> bool:
        """A held lease is past half its time: the pipeline is behind the pulls; take no more until the
        acknowledgements catch up (else leases run out, and messages come back to be skipped)."""
        now = time.time()
        half = self.config.visibility_timeout / 2
        return any(now < min(p.expires) < now + half for p in self._pulls.values() if p.expires)

    async def _take(self, messages: list[Pulled], expires: float, send: MemoryObjectSendStream[Item]) -> None:
        assert self._units is not None
        fresh: list[Pulled] = []
        for m in messages:
            held = self._inflight.get(m.id)
            if held is not None:  # its lease ran out while its rows wait here: hold it again
                pull, i = held
                pull.leases[i], pull.expires[i] = m.lease_id, expires
            else:
                fresh.append(m)
        if not fresh:
            return
        again = {m.id for m in fresh if m.attempts > 1}
        try:
            covered = await self.ledger.covered(again, self._units.in_r2) if again else {}
        except (ClientError, BotoCoreError, OSError) as exc:
            # Without the ledger a redelivered message might land twice: hand them back for later
            # (the queue counts the attempt; past max_retries they go to its dead-letter queue).
            log.warning("queue ledger unreadable: redelivered messages handed back", error=str(exc))
            await self.api.ack([], [(m.lease_id, _backoff(m.attempts)) for m in fresh])
            return
        source = f"queue:{self.api.queue or self.api.queue_id}"

        def parse() -> tuple[Parsed, list[DeadLetter], list[tuple[int, int]]]:
            lines = decode(fresh, source, covered)
            tables, bad = parse_lines(bytes(lines.block), source, self.max_record_bytes)
            dead = lines.dead + [
                DeadLetter(source, None, d.reason, d.raw, entry=fresh[lines.owners[(d.line or 1) - 1][0]].id)
                for d in bad
            ]
            rows: list[tuple[int, int]] = []
            for table, first, numbered in tables:
                at = numbered if numbered is not None else range(first, first + table.num_rows)
                rows += [lines.owners[n - 1] for n in at]
            return tables, dead, rows

        tables, dead, rows = await anyio.to_thread.run_sync(parse)
        self.skipped += sum(_count(r) for r in covered.values())
        if dead:  # written before the unit is journaled: acknowledged only once they are kept
            await anyio.to_thread.run_sync(lambda: self.dead.write(dead, self.name))
        pull = Pull(
            [m.id for m in fresh],
            [m.lease_id for m in fresh],
            [expires] * len(fresh),
            [m.attempts for m in fresh],
            rows,
        )
        unit = SourceUnit(
            name=f"{source} {fresh[0].id}+{len(fresh) - 1}",
            id=f"{self.resumes_first}{uuid.uuid4().hex}",
            fingerprint=pull.fingerprint(),
            origin=self.name,
            table=self.config.default_table,
            total=len(rows),
        )
        handle = unit.handle = self._handle(pull)
        for i, m in enumerate(fresh):
            self._inflight[m.id] = (pull, i)
        self._pulls[id(pull)] = pull
        unit = await self._units.open_unit(unit)
        handle.unit = unit
        crash_point("queue-journaled")
        self.records += len(rows)
        for table, first, numbered in tables:
            for chunk in unit.chunks(table, first, numbered):
                await send.send(chunk)
        await send.send(UnitRead(unit))

    def _handle(self, pull: Pull) -> MessagesHandle:
        return MessagesHandle(
            self._ack,
            ack_many=self._ack_many,
            counted=True,
            gather=self,
            pull=pull,
            margin=self.margin,
            give_back=self._give_back,
        )

    async def _resume(self, send: MemoryObjectSendStream[Item]) -> None:
        """Units journaled by an earlier run: their rows are in the recovered objects (uploaded first,
        with their ledger records) or were lost with the process; they are acknowledged message by
        message: those whose rows are all kept, while their leases still hold; the rest are handed back."""
        assert self._units is not None
        known = self._units.known_units(self.resumes_first)
        if not known:
            return
        again: list[SourceUnit] = []
        for k in known:
            pull = Pull.from_fingerprint(k.fingerprint)
            unit = SourceUnit(
                k.name, self._handle(pull), k.id, k.fingerprint, origin=self.name, total=len(pull.rows)
            )
            unit.table = self.config.default_table
            again.append(unit)
        opened = await self._units.open_units(again)
        for unit in opened:
            pull = _pull_of(unit)
            pull.kept = _kept_messages(pull, unit.skip)
            assert isinstance(unit.handle, MessagesHandle)
            unit.handle.unit = unit
            for i, m in enumerate(pull.ids):
                self._inflight[m] = (pull, i)
            await send.send(UnitRead(unit))
        log.info("queue leases of the last run resumed", units=len(opened))

    # -- the ledger and acknowledgements ---------------------------------------------------------------

    async def _give_back(self, unit: SourceUnit) -> None:
        """Rows of these messages could not be uploaded: the queue delivers them again after a backoff
        (and, past the consumer's max_retries, moves them to its dead-letter queue); the object
        holding them is dropped at the next attempt (its leases are given up here, and journaled so)."""
        pull = _pull_of(unit)
        now = time.time()
        held = [
            (lease, _backoff(pull.attempts[i]))
            for i, lease in enumerate(pull.leases)
            if pull.expires[i] > now
        ]
        pull.expires = [0.0] * len(pull.expires)
        self._pulls.pop(id(pull), None)
        for m in pull.ids:
            self._inflight.pop(m, None)
        unit.fingerprint = pull.fingerprint()
        if self._units is not None:
            await self._units.note(unit)
        if not held:
            return
        try:
            await self.api.ack([], held)
        except Exception as exc:  # the leases run out by themselves: the same outcome, later
            log.warning(
                "could not hand messages back; they return when their leases run out", error=describe(exc)
            )
            return
        log.warning(
            "messages handed back to the queue: their rows could not be uploaded",
            messages=len(held),
            attempts=max(pull.attempts, default=0),
        )

    async def before_upload(self, key: str, object_id: str, spans: list[tuple[SourceUnit, Ranges]]) -> None:
        rows: dict[str, Ranges] = {}
        for unit, ranges in spans:
            pull = _pull_of(unit)
            pull.objects.add(object_id)
            self._objects.setdefault(object_id, set()).add(unit.id)
            for a, b in ranges:
                for r in range(a, min(b, len(pull.rows))):
                    m, line = pull.rows[r]
                    rows.setdefault(pull.ids[m], []).append((line, line + 1))
        merged = {m: merge_ranges(r) for m, r in rows.items()}
        await self.ledger.attempting(object_id, key, merged)

    async def _ack(self) -> bool:  # never called: every unit goes through _ack_many
        return True

    async def _ack_many(self, units: list[SourceUnit]) -> list[bool | AckError | None]:
        acks: list[str] = []
        retries: list[tuple[str, float]] = []
        clean: list[SourceUnit] = []  # their ledger records may go once acknowledged
        now = time.time()
        for unit in units:
            pull = _pull_of(unit)
            expired = unit.handle is not None and unit.handle.expired()
            kept = pull.kept if pull.kept is not None else set(range(len(pull.ids)))
            for i, lease in enumerate(pull.leases):
                if pull.expires[i] <= now:
                    continue  # delivered again (or soon): the ledger keeps it from landing twice
                if expired or i not in kept:
                    retries.append((lease, 0.0))
                else:
                    acks.append(lease)
            if not expired and len(kept) == len(pull.ids):
                clean.append(unit)
        try:
            lost = await self.api.ack(acks, retries)
        except Exception as exc:
            return [AckError(f"{self.api.where}: ack: {describe(exc)}")] * len(units)
        crash_point("queue-acked")
        for unit in units:
            pull = _pull_of(unit)
            self._pulls.pop(id(pull), None)
            for m in pull.ids:
                self._inflight.pop(m, None)
        if lost:
            log.warning(
                "leases ran out before their acknowledgement: those messages are delivered again, and "
                "the ledger keeps their rows from landing twice",
                messages=lost,
            )
        else:
            await self._forget_records(clean)
        return [True] * len(units)

    async def _forget_records(self, units: list[SourceUnit]) -> None:
        for unit in units:
            for object_id in _pull_of(unit).objects:
                waiting = self._objects.get(object_id)
                if waiting is None:
                    continue
                waiting.discard(unit.id)
                if not waiting:
                    del self._objects[object_id]
                    try:
                        await self.ledger.forget(object_id)
                    except (ClientError, BotoCoreError, OSError) as exc:  # swept later: harmless
                        log.info("queue ledger record not deleted", object=object_id, error=str(exc))


def _pull_of(unit: SourceUnit) -> Pull:
    """The pull a queue unit was opened with."""
    assert isinstance(unit.handle, MessagesHandle) and unit.handle.pull is not None
    return unit.handle.pull


def _kept_messages(pull: Pull, skip: Ranges) -> set[int]:
    """Messages every row of which is in a journaled batch (their lines all kept)."""
    rows_of: dict[int, list[int]] = {}
    for r, (m, _) in enumerate(pull.rows):
        rows_of.setdefault(m, []).append(r)
    kept = set()
    for m in range(len(pull.ids)):
        if all(any(a <= r < b for a, b in skip) for r in rows_of.get(m, [])):
            kept.add(m)
    return kept


def _count(ranges: Ranges) -> int:
    return sum(b - a for a, b in ranges)


def _backoff(attempts: int) -> float:
    """Seconds before a handed-back message is delivered again: doubling with its attempts."""
    return float(min(300, 2 ** max(0, attempts)))
