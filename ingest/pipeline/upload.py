"""Uploader: conditional PUTs (and equal-part multipart uploads) with retries and backoff.

Every request is retried on connection errors, timeouts, 5xx and 429 with exponential backoff and full
jitter. 412 on our conditional write means the key is taken: if the object there carries our batch id
it is our own earlier attempt (the answer was lost), otherwise we try the next number.
Anything else (403 scope, 404 bucket, 400) is permanent: the object stays in the spool. A key is
relative to the configured bucket, or a whole `s3://bucket/key` (an Iceberg table's location may be in
another bucket).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread
from botocore.exceptions import ClientError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from ingest import metrics
from ingest.config import RetryConfig, UploadConfig
from ingest.logs import get_logger
from ingest.pipeline.keys import KeyAllocator, KeyTemplate
from ingest.pipeline.spool import SpooledObject
from ingest.r2.client import R2AccessDenied, R2Client
from ingest.r2.errors import CLOCK_SKEW, describe, is_conflict, is_retryable, status_of

log = get_logger("ingest.pipeline.upload")
T = TypeVar("T")
BATCH_ID_META = "batch-id"  # sent as x-amz-meta-batch-id
MAX_PARTS = 10_000


class StopAt(stop_base):
    """Stop retrying once a monotonic deadline has passed (`--once` must end on time)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() >= self.deadline


class _NotPast:
    """A wait that never sleeps past the deadline (`--once` must end on time)."""

    def __init__(self, deadline: float, inner: Any) -> None:
        self.deadline, self.inner = deadline, inner

    def __call__(self, retry_state: RetryCallState) -> float:
        left = max(0.0, self.deadline - time.monotonic())
        return float(min(self.inner(retry_state), left))


class RequestHealth(Protocol):
    """Told about every failed and successful request (readiness after a long outage)."""

    def request_failed(self, reason: str) -> None: ...

    def request_succeeded(self) -> None: ...


class PermanentUploadError(Exception):
    """The store refused in a way retrying cannot fix; the object stays in the spool."""


@dataclass
class Uploaded:
    key: str
    attempts: int
    seconds: float


class Uploader:
    def __init__(
        self,
        client: R2Client,
        bucket: str,
        templates: dict[str, KeyTemplate],  # by object kind: data, deadletters
        upload: UploadConfig,
        retry: RetryConfig,
        health: RequestHealth | None = None,
    ) -> None:
        self.health = health
        self.deadline: float | None = None  # monotonic: no retry starts after it (--once)
        self._skew_said = False  # the clock warning is given once
        self.client = client
        self.bucket = bucket
        self.allocators = {k: KeyAllocator(t, self.list_keys, self.exists) for k, t in templates.items()}
        self.config = upload
        self.retry_config = retry
        self.requests = anyio.CapacityLimiter(upload.concurrency)

    # -- retries ----------------------------------------------------------------------------------

    async def _retrying(self, what: str, fn: Callable[[], Awaitable[T]], counter: list[int]) -> T:
        rc = self.retry_config
        stop: stop_base = stop_after_delay(rc.max_elapsed)
        if rc.max_attempts:
            stop = stop_any(stop, stop_after_attempt(rc.max_attempts))
        if self.deadline is not None:
            stop = stop_any(stop, StopAt(self.deadline))

        def before_sleep(state: RetryCallState) -> None:
            metrics.UPLOAD_RETRIES.inc()
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, ClientError) and status_of(exc)[1] == CLOCK_SKEW and not self._skew_said:
                self._skew_said = True
                log.warning(
                    "the store says this machine's clock is off; uploads are retried until it is "
                    "right again: fix the clock (NTP)",
                    local_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                )
            if self.health is not None:
                self.health.request_failed(describe(exc) if exc else "unknown error")
            log.warning(
                "transient failure; retrying",
                request=what,
                attempt=state.attempt_number,
                wait=round(state.upcoming_sleep, 3),
                error=describe(exc) if exc else "",
            )

        wait: Any = wait_random_exponential(multiplier=rc.initial, max=rc.max)  # full jitter
        if self.deadline is not None:
            wait = _NotPast(self.deadline, wait)
        async for attempt in AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(is_retryable),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                counter[0] += 1
                async with self.requests:
                    if self.deadline is None:
                        result = await fn()
                    else:  # --once: no request outlasts the run's deadline (TimeoutError: retryable)
                        with anyio.fail_after(max(0.0, self.deadline - time.monotonic())):
                            result = await fn()
                if self.health is not None:
                    self.health.request_succeeded()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(self, what: str, counter: list[int], op: str, **params: Any) -> dict[str, Any]:
        return await self._retrying(what, lambda: self.client.call(op, **params), counter)

    # -- keys ------------------------------------------------------------------------------------

    async def exists(self, key: str) -> bool:
        bucket, name = self.place(key)
        try:
            await self.request(f"head {key}", [0], "head_object", Bucket=bucket, Key=name)
        except ClientError as exc:
            if status_of(exc)[0] == 404:
                return False
            raise
        return True

    async def list_keys(self, prefix: str, start_after: str) -> list[str]:
        """Keys under `prefix` (a key of the bucket, or `s3://bucket/…`: then so are the keys)."""
        bucket, name = self.place(prefix)
        whole = prefix[: len(prefix) - len(name)]  # "s3://bucket/" or ""
        keys: list[str] = []
        token: str | None = None
        while True:
            params: dict[str, str] = {"Bucket": bucket, "Prefix": name}
            if start_after:
                params["StartAfter"] = self.place(start_after)[1]
            if token:
                params["ContinuationToken"] = token
            page = await self.request(f"list {prefix}", [0], "list_objects_v2", **params)
            keys += [whole + o["Key"] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return keys

    # -- objects ----------------------------------------------------------------------------------

    def place(self, key: str) -> tuple[str, str]:
        """(bucket, key in it) of a key: `s3://bucket/key`, or a key in the configured bucket."""
        if key.startswith("s3://"):
            bucket, _, rest = key[len("s3://") :].partition("/")
            return bucket, rest
        return self.bucket, key

    async def upload(
        self,
        obj: SpooledObject,
        attempting: Callable[[str], Awaitable[None]] | None = None,
        allocator: KeyAllocator | None = None,
    ) -> Uploaded:
        """Write `obj` under the first free key of its date (from `allocator`, else the one of its
        kind); returns the key.

        `attempting(key)` is called before anything is sent to a key (the journal records it). An
        object that carries the key of an attempt before a crash is looked for there first.
        """
        started = time.monotonic()
        attempts = [0]
        multipart = obj.size > self.config.multipart_threshold
        allocator = allocator or self.allocators[obj.kind]
        try:
            if obj.key is not None and await self._is_ours(obj.key, obj.object_id, attempts):
                return Uploaded(obj.key, attempts[0], time.monotonic() - started)
            body = None if multipart else await anyio.Path(obj.path).read_bytes()

            while True:
                seq = await allocator.candidate(obj.day, obj.table)
                key = allocator.key(obj.day, seq, obj.table)
                if attempting is not None:
                    await attempting(key)
                obj.key = key
                try:
                    if body is not None:
                        bucket, name = self.place(key)
                        await self.request(
                            key,
                            attempts,
                            "put_object",
                            Bucket=bucket,
                            Key=name,
                            Body=await self._body(body, obj.sha256),
                            IfNoneMatch="*",
                            ContentType=obj.content_type,
                            Metadata={BATCH_ID_META: obj.object_id},
                        )
                    else:
                        await self._multipart(obj, key, attempts)
                    return Uploaded(key, attempts[0], time.monotonic() - started)
                except ClientError as exc:
                    # NoSuchUpload: a completion whose answer was lost, retried after it had succeeded.
                    if not (is_conflict(exc) or status_of(exc)[1] == "NoSuchUpload"):
                        raise
                    if await self._is_ours(key, obj.object_id, attempts):
                        return Uploaded(key, attempts[0], time.monotonic() - started)
                    metrics.KEY_CONFLICTS.inc()
                    log.debug("key taken; trying the next free number", key=key)
                    await allocator.taken(obj.day, seq, obj.table)
        except R2AccessDenied as exc:
            raise PermanentUploadError(str(exc)) from exc
        except ClientError as exc:
            raise PermanentUploadError(f"s3://{self.place(obj.key or '')[0]}: {describe(exc)}") from exc

    async def _body(self, data: bytes, sha256: str) -> Any:
        """`data` as a `Body` (sent a slice per loop turn, signed with `sha256`: never hashed on the
        loop). Its module imports aiohttp: only once the client is built, whose thread imported it
        (an import from the loop meanwhile would see it half done)."""
        await self.client.built()
        from ingest.r2.body import Body

        return Body(data, sha256)

    async def holds(self, key: str, object_id: str) -> bool:
        """Does `key` hold the object with this batch id (an upload whose answer was lost)?"""
        try:
            return await self._is_ours(key, object_id, [0])
        except R2AccessDenied as exc:
            raise PermanentUploadError(str(exc)) from exc
        except ClientError as exc:
            raise PermanentUploadError(f"s3://{self.place(key)[0]}: {describe(exc)}") from exc

    async def _is_ours(self, key: str, object_id: str, attempts: list[int]) -> bool:
        """After a 412: is the object there the one an earlier, lost-answer attempt of ours wrote?"""
        bucket, name = self.place(key)
        try:
            head = await self.request(key, attempts, "head_object", Bucket=bucket, Key=name)
        except ClientError as exc:
            if status_of(exc)[0] == 404:
                return False
            raise
        return bool(head.get("Metadata", {}).get(BATCH_ID_META) == object_id)

    async def _multipart(self, obj: SpooledObject, key: str, attempts: list[int]) -> None:
        size = obj.size
        part_size = max(self.config.part_size, math.ceil(size / MAX_PARTS))
        count = math.ceil(size / part_size)
        bucket, name = self.place(key)
        created = await self.request(
            key,
            attempts,
            "create_multipart_upload",
            Bucket=bucket,
            Key=name,
            ContentType=obj.content_type,
            Metadata={BATCH_ID_META: obj.object_id},
        )
        upload_id = created["UploadId"]
        etags: dict[int, str] = {}
        try:
            fd = os.open(obj.path, os.O_RDONLY)
            try:

                async def part(number: int) -> None:
                    offset = (number - 1) * part_size
                    data, sha256 = await anyio.to_thread.run_sync(_read_part, fd, part_size, offset)
                    answer = await self.request(
                        f"{key} part {number}/{count}",
                        attempts,
                        "upload_part",
                        Bucket=bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=await self._body(data, sha256),
                    )
                    etags[number] = answer["ETag"]

                # Parts share the request limiter with every other upload; at most a few read ahead.
                parts_send, parts_recv = anyio.create_memory_object_stream[int](count)
                for n in range(1, count + 1):
                    parts_send.send_nowait(n)
                parts_send.close()

                async def worker() -> None:
                    async for n in parts_recv:
                        await part(n)

                async with anyio.create_task_group() as tg:
                    for _ in range(min(4, count)):
                        tg.start_soon(worker)
            finally:
                os.close(fd)
            await self.request(
                key,
                attempts,
                "complete_multipart_upload",
                Bucket=bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]},
                IfNoneMatch="*",
            )
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                try:
                    await self.client.call(
                        "abort_multipart_upload", Bucket=bucket, Key=name, UploadId=upload_id
                    )
                except Exception as exc:  # the upload id expires by itself; say so and move on
                    log.warning("could not abort multipart upload", key=key, error=describe(exc))
            raise


def _read_part(fd: int, size: int, offset: int) -> tuple[bytes, str]:
    """A part's bytes and their SHA-256 (hashed here, in a thread, not by the signer on the loop)."""
    data = os.pread(fd, size, offset)
    return data, hashlib.sha256(data).hexdigest()
