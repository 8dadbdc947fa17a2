"""Landing-prefix source: objects uploaded under `{prefix}_landing/` (e.g. by browsers with an upload
grant) are claimed, copied to the spool, read like directory files, and deleted once their rows are in R2.

An S3 object is visible only once its upload completed, so whatever a listing shows is complete.
Several workers may watch one prefix: a worker claims an object by creating the marker
`{prefix}_landing/.claims/<uuid>/<name>` (the key's part after `_landing/`) with `If-None-Match: *`,
which exactly one of them wins. The marker holds the worker id, so a restarted worker resumes its own
claims. Acknowledging deletes the object, then the marker, then the local copy; every step is safe to
repeat after a crash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random_exponential,
)

from ingest.config import RetryConfig, SourceConfig
from ingest.durable.deadletters import DeadLetters
from ingest.durable.faults import crash_point, disk_full_point
from ingest.durable.files import fsync_dir, is_disk_full
from ingest.layout import CLAIMS, landing_prefix
from ingest.logs import get_logger
from ingest.parsing.formats import detect
from ingest.parsing.jsonlines import DEFAULT_MAX_RECORD
from ingest.parsing.textfields import TextFields
from ingest.r2.client import R2AccessDenied, R2Client
from ingest.r2.errors import code_of, describe, is_retryable
from ingest.sources.base import Ack, AckError, FreshUnits, SourceUnit, Units
from ingest.sources.notified import Notified, Written
from ingest.sources.reader import IGNORED_SUFFIXES, FileRead, FileSource

log = get_logger("ingest.sources.landing")
ACK_RETRY_SECONDS = 300.0  # keep trying to delete an ingested object this long
STALE_CLAIM_WARNING = 3600.0  # another worker's claim this old is probably abandoned: say so


@dataclass(frozen=True)
class Landed:
    """One landing object as listed (and as recorded beside its local copy)."""

    key: str
    etag: str
    size: int

    def as_json(self) -> str:
        return json.dumps({"key": self.key, "etag": self.etag, "size": self.size})


class LandingSource(FileSource):
    def __init__(
        self,
        config: SourceConfig,
        client: R2Client,
        bucket: str,
        prefix: str,
        worker_id: str,
        local_dir: Path,
        dead: DeadLetters,
        max_record_bytes: int = DEFAULT_MAX_RECORD,
        retry: RetryConfig | None = None,
        notified: Notified | None = None,
    ) -> None:
        self.config = config
        self.retry = retry or RetryConfig()
        self.client = client
        self.bucket = bucket
        self.landing = landing_prefix(prefix)
        self.claims = f"{self.landing}{CLAIMS}"
        self.name = f"landing:s3://{bucket}/{self.landing}"
        self.worker_id = worker_id
        self.local = local_dir
        self.dead = dead
        self.max_record_bytes = max_record_bytes
        self.poll_interval = max(0.05, config.settle_seconds)
        self._units: Units = FreshUnits()
        self._text_fields: TextFields = set()
        self._problems = {}
        self._failed = {}
        self._taken: set[str] = set()  # keys this run has taken (downloaded or reading)
        self._taken_etag: dict[str, str] = {}  # of the write taken, for keys taken after a notification
        self._owners: dict[str, str] = {}  # marker key → worker id, learned once per marker
        self._warned: set[str] = set()
        self._unlisted = False
        # R2 event notifications instead of listing (a LIST at start and every reconcile_interval)
        self.notified = notified
        self.lists = 0  # LIST requests made (what notifications save)
        self._later: dict[str, Landed] = {}  # notified while an earlier write of the key is being taken

    async def check(self) -> None:
        """With notifications: the queue exists and the token may read it (else exit 2, one line)."""
        if self.notified is not None:
            self.notified.api.once = True
            try:
                await self.notified.api.resolve()
            finally:
                self.notified.api.once = False

    async def close(self) -> None:
        if self.notified is not None:
            await self.notified.api.close()

    # -- discovery ---------------------------------------------------------------------------------

    async def _list(self) -> tuple[list[tuple[Landed, float]], dict[str, float]]:
        """(objects waiting, oldest first, with their mtime; markers → their mtime)."""
        objects: list[tuple[Landed, float]] = []
        markers: dict[str, float] = {}
        async for page in self.client.pages(self.bucket, self.landing):
            self.lists += 1
            for o in page:
                key, mtime = o["Key"], o["LastModified"].timestamp()
                if key.startswith(self.claims):
                    markers[key] = mtime
                elif self._wanted(key):
                    objects.append((Landed(key, o["ETag"].strip('"'), int(o["Size"])), mtime))
        objects.sort(key=lambda x: (x[1], x[0].key))
        return objects, markers

    def _wanted(self, key: str) -> bool:
        name = PurePosixPath(key).name
        if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
            return False
        if detect(PurePosixPath(name), self.config.format) is None:  # type: ignore[arg-type]
            if key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "landing object skipped: unknown format; name it .jsonl/.ndjson/.csv/.parquet "
                    "(optionally .gz/.zst) or set sources.format",
                    key=key,
                )
            return False
        return True

    def _marker(self, key: str) -> str:
        return self.claims + key[len(self.landing) :]

    async def _owner(self, marker: str) -> str | None:
        if marker not in self._owners:
            try:
                out = await self.client.call("get_object", Bucket=self.bucket, Key=marker)
                with closing(out["Body"]) as body:
                    self._owners[marker] = str(json.loads(await body.read()).get("worker", ""))
            except ClientError as exc:
                if code_of(exc) == "NoSuchKey":
                    return None
                raise
        return self._owners[marker]

    async def _claim(self, obj: Landed) -> bool:
        """Create the marker if nobody has; True when this worker now owns the object."""
        body = json.dumps({"worker": self.worker_id, "key": obj.key, "etag": obj.etag, "at": time.time()})
        try:
            await self.client.call(
                "put_object",
                Bucket=self.bucket,
                Key=self._marker(obj.key),
                Body=body.encode(),
                IfNoneMatch="*",
                ContentType="application/json",
            )
        except ClientError as exc:
            if code_of(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        self._owners[self._marker(obj.key)] = self.worker_id
        return True

    async def _poll(self, files: MemoryObjectSendStream[Path]) -> None:
        objects, markers = await self._list()
        present = {obj.key for obj, _ in objects}
        for obj, _mtime in objects:
            if obj.key in self._taken:
                continue
            marker = self._marker(obj.key)
            if marker in markers:
                owner = await self._owner(marker)
                if owner != self.worker_id:
                    self._note_foreign_claim(obj.key, owner, markers[marker])
                    continue
            else:
                await self._units.wait_for_room()  # backpressure: claim nothing while the spool is full
                if not await self._claim(obj):
                    continue
                crash_point("claimed")
            await self._hand_over(obj, files)
        for marker in markers:  # our marker whose object is gone: a crash between the two deletes
            key = self.landing + marker[len(self.claims) :]
            if key not in present and key not in self._taken and self._owners.get(marker) == self.worker_id:
                await self.client.call("delete_object", Bucket=self.bucket, Key=marker)

    def _note_foreign_claim(self, key: str, owner: str | None, since: float) -> None:
        if time.time() - since > STALE_CLAIM_WARNING and key not in self._warned:
            self._warned.add(key)
            log.warning(
                "landing object claimed long ago by another worker that has not finished it; start that "
                "worker (same worker.id) again, or delete the marker to release it",
                key=key,
                owner=owner,
                marker=self._marker(key),
            )

    async def _download(self, obj: Landed) -> Path | None:
        """Copy the object next to the spool (`.part`, fsync, rename): reading never depends on R2.
        A full disk waits for space (readiness says so) instead of ending the worker."""
        self.local.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(obj.key.encode()).hexdigest()[:16]
        target = self.local / f"{digest}--{PurePosixPath(obj.key).name}"
        if target.exists():
            return target

        def waiting(state: RetryCallState) -> None:
            target.with_name(target.name + ".part").unlink(missing_ok=True)
            reason = f"spool disk full at {self.local} (landing copy); free space or move spool.dir"
            self._units.disk_full(reason)
            log.error(
                "spool disk full; the landing copy waits for space",
                key=obj.key,
                retry_in=round(state.upcoming_sleep, 3),
            )

        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_disk_full),  # no stop: a full disk is waited out
            wait=wait_exponential(multiplier=self.retry.initial, max=self.retry.max),
            before_sleep=waiting,
            reraise=True,
        ):
            with attempt:
                return await self._copy(obj, target)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _copy(self, obj: Landed, target: Path) -> Path | None:
        part = target.with_name(target.name + ".part")
        try:
            out = await self.client.call("get_object", Bucket=self.bucket, Key=obj.key, IfMatch=obj.etag)
        except ClientError as exc:
            if code_of(exc) in ("NoSuchKey", "PreconditionFailed"):  # gone or replaced since the listing
                log.warning("landing object changed before it was read; releasing it", key=obj.key)
                await self.client.call("delete_object", Bucket=self.bucket, Key=self._marker(obj.key))
                return None
            raise
        with part.open("wb") as fh:
            with closing(out["Body"]) as body:
                while chunk := await body.read(1 << 20):
                    await anyio.to_thread.run_sync(fh.write, chunk)
            await anyio.to_thread.run_sync(os.fsync, fh.fileno())
        await anyio.to_thread.run_sync(_finish_copy, part, target, obj)
        self._units.disk_room()
        return target

    def _copies(self) -> list[Path]:
        """Local copies not yet acknowledged."""
        return sorted(p for p in self.local.iterdir() if _is_copy(p)) if self.local.is_dir() else []

    def pending(self) -> list[str]:
        unlisted = [f"s3://{self.bucket}/{self.landing}(not listed)"] if self._unlisted else []
        return unlisted + [str(p) for p in self._copies()]

    # -- running -----------------------------------------------------------------------------------

    async def _discover(self, files: MemoryObjectSendStream[Path], once: bool) -> None:
        for leftover in self._copies():  # copied by an earlier run, never acknowledged
            landed = _landed(leftover)
            self._taken.add(landed.key)
            self._taken_etag[landed.key] = landed.etag
            await files.send(leftover)
        if self.notified is not None and not once:
            await self._follow(files, self.notified)
            return
        while True:
            try:
                await self._poll(files)
            except (ClientError, BotoCoreError, R2AccessDenied) as exc:
                log.warning("landing prefix not reachable", error=describe(exc), retry=not once)
                self._unlisted = once  # --once: report it as not taken, exit 1
            if once:
                return
            await anyio.sleep(self.poll_interval)

    async def _follow(self, files: MemoryObjectSendStream[Path], notified: Notified) -> None:
        """Notifications: list at start and every reconcile_interval; in between, take what the
        queue says was written (pulls back off from 0.2 s to `wait` while nothing comes)."""
        cfg = self.config
        wait_cap = cfg.poll_interval if "poll_interval" in cfg.model_fields_set else 1.0
        wait, listed = 0.2, -math.inf
        notified.api.on_problem = lambda reason: self._units.source_problem(self.name, reason)
        while True:
            if time.monotonic() - listed >= cfg.reconcile_interval:
                try:
                    await self._poll(files)
                    listed = time.monotonic()
                except (ClientError, BotoCoreError, R2AccessDenied) as exc:
                    log.warning("landing prefix not reachable", error=describe(exc), retry=True)
            await self._units.wait_for_room()
            written, leases = await notified.pull(max(60.0, 4 * cfg.settle_seconds))
            for obj in [*self._later.values()]:
                if obj.key not in self._taken:
                    del self._later[obj.key]
                    written.append(Written(obj.key, obj.etag, obj.size))
            if written:
                try:
                    await self._take_notified([Landed(w.key, w.etag, w.size) for w in written], files)
                except (ClientError, BotoCoreError, R2AccessDenied) as exc:  # the reconcile LIST catches up
                    log.warning("notified landing objects not taken", error=describe(exc))
            if leases:
                await notified.api.ack(leases)
                wait = 0.2
                continue
            with anyio.move_on_after(wait):
                await anyio.sleep_forever()
            wait = min(wait * 2, wait_cap)

    async def _take_notified(self, objects: list[Landed], files: MemoryObjectSendStream[Path]) -> None:
        for obj in objects:
            if obj.key.startswith(self.claims) or not self._wanted(obj.key):
                continue
            if obj.key in self._taken:  # a later write of a key still being taken: after it
                if obj.etag != self._taken_etag.get(obj.key):
                    self._later[obj.key] = obj
                continue
            await self._units.wait_for_room()
            if not await self._claim(obj):
                owner = await self._owner(self._marker(obj.key))
                if owner != self.worker_id:
                    continue  # another worker's (or being acknowledged): the reconcile LIST says more
            crash_point("claimed")
            await self._hand_over(obj, files)

    async def _hand_over(self, obj: Landed, files: MemoryObjectSendStream[Path]) -> None:
        """A claimed object: copied next to the spool, then read like a file."""
        local = await self._download(obj)
        if local is not None:
            self._taken.add(obj.key)
            self._taken_etag[obj.key] = obj.etag
            await files.send(local)

    def _unit(self, path: Path) -> tuple[SourceUnit, Path]:
        obj = _landed(path)
        unit = SourceUnit(
            origin=self.name,
            name=obj.key,
            handle=FileRead(self._acker(path, obj)),
            id=f"landing:{self.bucket}/{obj.key}",
            fingerprint=f"{obj.etag}:{obj.size}",
            path=str(path),
            table=self.config.default_table,
        )
        return unit, Path(PurePosixPath(obj.key).name)

    async def _delete(self, key: str) -> None:
        """Delete through transient failures (503, dropped connections); deleting twice is harmless."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(ACK_RETRY_SECONDS),
                wait=wait_random_exponential(multiplier=self.retry.initial, max=self.retry.max),
                retry=retry_if_exception(is_retryable),
                reraise=True,
            ):
                with attempt:
                    await self.client.call("delete_object", Bucket=self.bucket, Key=key)
        except Exception as exc:  # any failure: the pipeline logs it and keeps running
            # The rows are in R2; a restart acknowledges again (the local copy is kept until then).
            raise AckError(f"could not delete s3://{self.bucket}/{key}: {describe(exc)}") from None

    def _acker(self, path: Path, obj: Landed) -> Ack:
        async def ack() -> None:
            await self._delete(obj.key)
            crash_point("unlanded")
            await self._delete(self._marker(obj.key))
            try:
                await anyio.to_thread.run_sync(_remove_copy, path)
            except OSError as exc:
                raise AckError(f"could not remove the local copy {path}: {exc}") from exc
            self._taken.discard(obj.key)
            self._taken_etag.pop(obj.key, None)
            log.info("landing object ingested and deleted", key=obj.key)

        return ack


def _finish_copy(part: Path, target: Path, obj: Landed) -> None:
    """The sidecar (fsynced: it is read at the next start), then the copy into place, durably."""
    disk_full_point("landing", "file")
    sidecar = _origin_file(target)
    with sidecar.open("w") as fh:
        fh.write(obj.as_json())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, target)
    fsync_dir(target.parent)


def _origin_file(copy: Path) -> Path:
    return copy.with_name(copy.name + ".origin")


def _remove_copy(copy: Path) -> None:
    copy.unlink(missing_ok=True)
    _origin_file(copy).unlink(missing_ok=True)


def _is_copy(p: Path) -> bool:
    return not p.name.endswith((".origin", ".part")) and _origin_file(p).exists()


def _landed(copy: Path) -> Landed:
    d = json.loads(_origin_file(copy).read_text())
    return Landed(d["key"], d["etag"], int(d["size"]))
