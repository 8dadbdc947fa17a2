"""The commit stage (Iceberg on): uploaded objects → snapshots of their tables → units acknowledged.

An object for an Iceberg table is placed under the table's location (`<location>/data/YYYY/MM/DD/
ingested_NNNN.parquet`, in the location's bucket, with the usual sequence and conditional PUT), after
the table is made or evolved to take its schema. Once uploaded it is journaled `uploaded` and waits
here; every `commit_interval` (or when a table has `max_objects_per_commit` waiting, or when the run
ends) each table's waiting objects go into one snapshot whose summary carries their batch ids. Only
then is each object journaled as done and its batch counted, so a unit is acknowledged only after the
snapshot holding all of its rows is committed. After a crash, objects journaled `uploaded` are
committed again with `recovering`: the table's snapshots (and files) are checked first, so nothing is
added twice.

The catalog is reached in a thread, one call at a time. While it is down or answers 5xx/429, calls
wait with backoff; after `server.ready_failure_seconds` readiness turns false with the reason, and
uploads go on into R2 and the spool meanwhile.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import pyarrow.parquet as pq
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_random_exponential

from ingest.config import ConfigError, Settings
from ingest.daemon.health import Health
from ingest.durable.deadletters import DeadLetter, DeadLetters
from ingest.iceberg.catalog import CatalogUnreachable, connect
from ingest.iceberg.commits import DataFile, Tables
from ingest.iceberg.schema import DoesNotFit
from ingest.logs import get_logger
from ingest.pipeline.encode import INGESTED_AT
from ingest.pipeline.keys import Exists, KeyAllocator, KeyTemplate, ListKeys
from ingest.pipeline.spool import SpooledObject
from ingest.pipeline.upload import StopAt
from ingest.r2.errors import describe

if TYPE_CHECKING:
    import pyarrow as pa

log = get_logger("ingest.pipeline.commit")
T = TypeVar("T")
DATA_KEYS = "/data/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet"  # after the table's location

Committed = Callable[[list[SpooledObject]], Awaitable[None]]


def iceberg_name(table: str) -> str:
    """A routed table's name as an Iceberg identifier (`-` is not one)."""
    return table.replace("-", "_")


class Connection:
    """The catalog, reached in a thread of its own from the moment the worker starts: pyiceberg's
    import and the first requests overlap the rest of the start. `result()` waits for it and raises
    what connecting raised (a ConfigError is said at start, exit 2)."""

    def __init__(self, settings: Settings) -> None:
        self.config = settings.iceberg
        self.token = settings.r2.admin_api_token
        self.partition_by = settings.output.partition_by or INGESTED_AT
        self.requests = 0  # HTTP requests to the catalog (cost: what R2 Data Catalog bills and limits)
        self._done = threading.Event()
        self._tables: Tables | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._connect, name="iceberg-connect", daemon=True).start()

    def _connect(self) -> None:
        try:
            self._tables = self.open()
            # pyiceberg's modules and models are some 10^5 objects that live as long as the process:
            # out of the cyclic GC's reach, they no longer make every full collection slower (in a
            # profile of a 5M-record run, collections took a sixth of the time Iceberg added).
            gc.freeze()
        except BaseException as exc:  # handed to result()
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> Tables:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._tables is not None
        return self._tables

    def open(self) -> Tables:
        """Connected, the namespace made if new (blocking)."""
        catalog = connect(self.config, self.token)
        session = getattr(catalog, "_session", None)  # pyiceberg's requests.Session: count requests
        if session is not None:
            session.hooks["response"].append(self._counted)
        self.requests += 1  # the GET /v1/config of connect
        tables = Tables(catalog, self.config.namespace, self.partition_by)
        _namespace(tables)
        if self.config.table:  # loaded now, not when the first object waits for it
            tables.preload(self.config.table)
        return tables

    def _counted(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return response


def _namespace(tables: Tables) -> None:
    """The namespace exists (made now if new): a token that may not write there is refused now."""
    from pyiceberg.exceptions import ForbiddenError, RESTError

    namespace = tables.namespace
    try:
        tables.catalog.create_namespace_if_not_exists(namespace)
    except ForbiddenError as exc:
        raise ConfigError(f"iceberg.namespace {namespace}: the token may not write there ({exc})") from None
    except (RESTError, OSError) as exc:
        raise CatalogUnreachable(f"iceberg.namespace {namespace}: {type(exc).__name__}: {exc}") from None


class Committer:
    def __init__(
        self,
        settings: Settings,
        health: Health,
        dead: DeadLetters,
        list_keys: ListKeys,
        exists: Exists,
        connection: Connection | None = None,
    ) -> None:
        self.config = settings.iceberg
        self.retry = settings.retry
        self.health = health
        self.dead = dead
        self._list_keys, self._exists = list_keys, exists
        self.connection = connection or Connection(settings)
        self.deadline: float | None = None  # monotonic (--once): no catalog call is retried after it
        self._tables: Tables | None = None
        self._calls = anyio.CapacityLimiter(1)  # pyiceberg's objects are not shared between threads
        self._placed: dict[str, tuple[pa.Schema, KeyAllocator]] = {}
        self._waiting: dict[str, list[tuple[SpooledObject, bool]]] = {}  # table → (object, recovering)
        self._wake = anyio.Event()
        self._uploads_done = False
        self._failing_since: float | None = None
        self.dead_letters_written = False  # rows that could not fit their table (seal them)
        self.snapshots = 0  # committed by this run

    @property
    def requests(self) -> int:
        return self.connection.requests

    # -- start ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """The catalog reached (see Connection): a refused token, a missing catalog or a namespace the
        token may not write in is a ConfigError (exit 2). A catalog that is only unreachable now is
        retried when the first table is needed."""
        try:
            self._tables = await anyio.to_thread.run_sync(self.connection.result)
        except CatalogUnreachable as exc:
            log.warning("the Iceberg catalog is not reachable; commits wait for it", error=str(exc))

    # -- placing objects ----------------------------------------------------------------------------

    def table_of(self, obj: SpooledObject) -> str:
        return self.config.table or iceberg_name(obj.table)

    def qualified(self, obj: SpooledObject) -> str:
        return f"{self.config.namespace}.{self.table_of(obj)}"

    async def place(self, obj: SpooledObject) -> KeyAllocator | None:
        """Where `obj` goes: its table made or evolved to take its schema, the allocator of keys under
        the table's location. None: its rows cannot fit the table; they are dead letters now."""
        name = self.table_of(obj)
        schema = await anyio.to_thread.run_sync(pq.read_schema, obj.path)
        placed = self._placed.get(name)
        if placed is not None and placed[0].equals(schema):
            return placed[1]

        def table() -> str:
            return str(self._ready().table(name, schema).location())

        try:
            location = await self._catalog(f"table {name}", table)
        except DoesNotFit as exc:
            await self._dead_letters(obj, f"{exc}; change the field's type in the table or fix the input")
            return None
        allocator = placed[1] if placed is not None else self._allocator(location)
        self._placed[name] = (schema, allocator)
        return allocator

    def _allocator(self, location: str) -> KeyAllocator:
        base = location.rstrip("/").replace("{", "{{").replace("}", "}}")
        return KeyAllocator(KeyTemplate(base + DATA_KEYS), self._list_keys, self._exists)

    async def _dead_letters(self, obj: SpooledObject, reason: str) -> None:
        def write() -> None:  # a row group at a time: an object may be as big as a batch
            where, line = f"{obj.table} object {obj.object_id}", 0
            for group in pq.ParquetFile(obj.path).iter_batches():
                letters = []
                for row in group.to_pylist():
                    line += 1
                    letters.append(DeadLetter(where, line, reason, json.dumps(row, default=str)))
                self.dead.write(letters)

        log.error("an object's rows do not fit its Iceberg table; they are dead letters", error=reason)
        await anyio.to_thread.run_sync(write)
        self.dead_letters_written = True

    # -- committing ---------------------------------------------------------------------------------

    def add(self, obj: SpooledObject, recovering: bool = False) -> None:
        """`obj` is in R2 (`obj.key`): commit it with the next snapshot of its table."""
        waiting = self._waiting.setdefault(self.table_of(obj), [])
        waiting.append((obj, recovering))
        if len(waiting) >= self.config.max_objects_per_commit:
            self._wake.set()

    def uploads_done(self) -> None:
        """No object will be added any more: commit what waits, then `run` returns."""
        self._uploads_done = True
        self._wake.set()

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiting.values())

    async def run(self, committed: Committed, once: bool) -> None:
        """Commit every `commit_interval` (`--once`: as soon as the uploads are done) until the uploads
        are done and nothing waits; `committed(objects)` is told about each snapshot's objects."""
        while True:
            if not (self._uploads_done or (once and self._wake.is_set())):
                with anyio.move_on_after(float("inf") if once else self.config.commit_interval):
                    await self._wake.wait()
            self._wake = anyio.Event()
            for name in list(self._waiting):
                while self._waiting.get(name):
                    group = self._waiting[name][: self.config.max_objects_per_commit]
                    try:
                        await self._commit(name, group)
                    except Exception as exc:  # --once past its deadline: the next run commits them
                        log.error(
                            "objects uploaded but not committed to their Iceberg table; the next run "
                            "commits them",
                            table=name,
                            objects=len(self._waiting[name]),
                            error=describe(exc),
                        )
                        self.health.fail(f"Iceberg commits to {name} failed: {describe(exc)}", "catalog")
                        self._waiting.pop(name)
                        break
                    del self._waiting[name][: len(group)]
                    await committed([obj for obj, _ in group])
            if self._uploads_done and not self.waiting:
                return

    async def _commit(self, name: str, group: list[tuple[SpooledObject, bool]]) -> None:
        files = [DataFile(obj.key or "", obj.object_id) for obj, _ in group]
        recovering = any(r for _, r in group)
        started = time.monotonic()

        def commit() -> list[DataFile]:
            return self._ready().commit(name, files, recovering)

        added = await self._catalog(f"commit {name}", commit)
        self.snapshots += 1 if added else 0
        log.info(
            "committed",
            table=f"{self.config.namespace}.{name}",
            objects=len(added),
            already=len(files) - len(added),
            records=sum(obj.records for obj, _ in group),
            seconds=round(time.monotonic() - started, 3),
        )

    async def commit_found(self, path: str, object_id: str) -> None:
        """An object another worker uploaded (a source's ledger says so) that may be in no snapshot:
        committed to the table whose location holds it, unless its batch id or path is there."""

        def commit() -> list[DataFile]:
            tables = self._ready()
            for name in tables.names():
                if path.startswith(tables.location(name).rstrip("/") + "/data/"):
                    return tables.commit(name, [DataFile(path, object_id)], recovering=True)
            log.warning("an object found in R2 is under no table's location; not committed", key=path)
            return []

        added = await self._catalog("commit a found object", commit)
        if added:
            self.snapshots += 1
            log.info("committed an object another worker uploaded", key=path, batch=object_id)

    # -- the catalog ----------------------------------------------------------------------------------

    def _ready(self) -> Tables:
        if self._tables is None:
            self._tables = self.connection.open()
        return self._tables

    async def _catalog(self, what: str, fn: Callable[[], T]) -> T:
        """`fn` in a thread, retried with backoff while the catalog fails (never on DoesNotFit)."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = describe(exc) if isinstance(exc, Exception) else "unknown error"
            now = time.monotonic()
            self._failing_since = self._failing_since or now
            if now - self._failing_since >= self.health.failure_seconds or not _transient(exc):
                self.health.fail(
                    f"the Iceberg catalog has failed for {now - self._failing_since:.0f}s ({reason}); "
                    "uploads go on, commits wait",
                    "catalog",
                )
            log.warning(
                "Iceberg catalog call failed; retrying",
                call=what,
                attempt=state.attempt_number,
                wait=round(state.upcoming_sleep, 3),
                error=reason,
            )

        result: Any = None
        async for attempt in AsyncRetrying(
            stop=StopAt(self.deadline) if self.deadline is not None else stop_never,
            wait=wait_random_exponential(multiplier=self.retry.initial, max=self.retry.max),
            retry=retry_if_exception(_retryable),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                result = await anyio.to_thread.run_sync(fn, limiter=self._calls)
        if self._failing_since is not None:
            log.info("the Iceberg catalog answers again", call=what)
        self._failing_since = None
        self.health.clear("catalog")
        return result  # type: ignore[no-any-return]


def _retryable(exc: BaseException) -> bool:
    """Worth another try: the catalog down or busy, or refusing (a daemon waits for the operator);
    not a value that cannot fit, a bad setting, or a bug."""
    from pyiceberg.exceptions import RESTError

    if isinstance(exc, CatalogUnreachable):
        return True
    if isinstance(exc, DoesNotFit | ConfigError):
        return False
    return _transient(exc) or isinstance(exc, RESTError)


def _transient(exc: BaseException | None) -> bool:
    """Down, overloaded or in a conflict (retried quietly at first), rather than refusing."""
    from pyiceberg.exceptions import (
        CommitFailedException,
        CommitStateUnknownException,
        ServerError,
        ServiceUnavailableError,
        TooManyRequestsError,
    )

    transient = (
        OSError,
        CatalogUnreachable,
        CommitFailedException,
        CommitStateUnknownException,
        ServerError,
        ServiceUnavailableError,
        TooManyRequestsError,
    )
    return isinstance(exc, transient)
