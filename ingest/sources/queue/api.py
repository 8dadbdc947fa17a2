"""The Queues HTTP pull API through the official `cloudflare` SDK: pull, ack, retry, with the waits the
API asks for (429 → Retry-After) and backoff through outages; never a hot loop.

The SDK's own retries are off (`cloudflare_client`): a 429's Retry-After is honoured here, and an outage
is waited out with jittered backoff, so that many workers do not come back at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx
from cloudflare import (
    APIConnectionError,
    APIStatusError,
    AsyncCloudflare,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay
from tenacity.stop import stop_never
from tenacity.wait import wait_base, wait_random_exponential

from ingest.config import ConfigError, RetryConfig
from ingest.logs import get_logger
from ingest.r2.api import cloudflare_client

log = get_logger("ingest.sources.queue.api")
MAX_ACKS = 100  # leases per ack request
T = TypeVar("T")
PERMISSION = "a Cloudflare API token with Queues Write (CLOUDFLARE_API_TOKEN, or the source's api_token)"


class QueueRefused(ConfigError):
    """The API refused the token or does not know the queue: waiting will not help."""


@dataclass
class Calls:
    """API requests made, by kind: what a queue source costs (docs/queues.md)."""

    pull: int = 0
    ack: int = 0
    rate_limited: int = 0
    failed: int = 0
    waited: float = 0.0  # seconds spent waiting out 429s

    def total(self) -> int:
        return self.pull + self.ack


@dataclass
class Pulled:
    id: str
    body: Any
    content_type: str
    attempts: int
    lease_id: str
    timestamp_ms: float


@dataclass
class QueueApi:
    token: str
    account_id: str
    base_url: str
    retry: RetryConfig
    queue: str = ""  # name
    queue_id: str = ""
    calls: Calls = field(default_factory=Calls)
    on_problem: Callable[[str | None], None] = lambda reason: None
    once: bool = False
    _client: AsyncCloudflare | None = None
    _problem: str | None = None

    @property
    def client(self) -> AsyncCloudflare:
        if self._client is None:
            self._client = cloudflare_client(self.token, self.base_url, timeout=60.0)
        return self._client

    @property
    def where(self) -> str:
        return f"queue {self.queue or self.queue_id}"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def resolve(self) -> str:
        """The queue's id (looked up by name when only the name is configured); a refusal is one line."""
        if self.queue_id:
            await self._call(
                "get queue", lambda: self.client.queues.get(self.queue_id, account_id=self.account_id)
            )
            return self.queue_id

        async def find() -> str:
            async for q in self.client.queues.list(account_id=self.account_id):
                if q.queue_name == self.queue and q.queue_id:
                    return q.queue_id
            raise QueueRefused(
                f"sources: queue {self.queue!r} does not exist in account {self.account_id}; create it "
                f"(`wrangler queues create {self.queue}`) or fix the name"
            )

        self.queue_id = await self._call("list queues", find)
        return self.queue_id

    async def pull(self, batch_size: int, visibility_timeout: float) -> tuple[list[Pulled], int | None]:
        async def pull() -> Any:
            self.calls.pull += 1
            return await self.client.queues.messages.pull(
                self.queue_id,
                account_id=self.account_id,
                batch_size=batch_size,
                visibility_timeout_ms=int(visibility_timeout * 1000),
            )

        got = await self._call("pull", pull)
        out: list[Pulled] = []
        for m in (got.messages if got is not None else None) or []:
            meta = m.metadata if isinstance(m.metadata, dict) else {}
            out.append(
                Pulled(
                    id=str(m.id),
                    body=m.body,
                    content_type=str(meta.get("CF-Content-Type") or "json"),
                    attempts=int(m.attempts or 1),
                    lease_id=str(m.lease_id),
                    timestamp_ms=float(m.timestamp_ms or 0),
                )
            )
        backlog = got.message_backlog_count if got is not None else None
        return out, int(backlog) if backlog is not None else None

    async def ack(self, acks: list[str], retries: list[tuple[str, float]] | None = None) -> int:
        """Acknowledge leases (and ask for redelivery of others after a delay), ≤ 100 per request.
        Returns how many leases the API said were no longer held (expired: delivered again)."""
        retries = retries or []
        expired = 0
        for i in range(0, max(len(acks), len(retries)), MAX_ACKS):
            some = acks[i : i + MAX_ACKS]
            again = retries[i : i + MAX_ACKS]

            async def ack(some: list[str] = some, again: list[tuple[str, float]] = again) -> Any:
                self.calls.ack += 1
                return await self.client.queues.messages.ack(
                    self.queue_id,
                    account_id=self.account_id,
                    acks=[{"lease_id": lease} for lease in some],
                    retries=[{"lease_id": lease, "delay_seconds": round(d)} for lease, d in again],
                )

            answer = await self._call("ack", ack)
            if answer is not None and answer.ack_count is not None and answer.ack_count < len(some):
                expired += len(some) - int(answer.ack_count)
        return expired

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One API call: 429 waits Retry-After (never less than a second), transient failures back off;
        a refusal (401/403/404) is a QueueRefused at once. `--once` gives up after once_max_elapsed."""

        def failing(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.calls.failed += 1
            if isinstance(exc, RateLimitError):
                self.calls.rate_limited += 1
                log.info("queues API rate limit: waiting as asked", request=what, wait=retry_after(exc))
                return
            reason = f"{self.where}: {what} failed: {describe(exc)}"
            if reason != self._problem:
                log.warning("queues API failing; retrying", request=what, error=describe(exc))
            self._problem = reason
            self.on_problem(reason)

        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=_Wait(self.retry),
            stop=stop_after_delay(self.retry.once_max_elapsed) if self.once else stop_never,
            before_sleep=failing,
            reraise=True,
        ):
            with attempt:
                try:
                    result = await fn()
                except (AuthenticationError, PermissionDeniedError) as exc:
                    raise QueueRefused(
                        f"sources: {self.where}: the Cloudflare API refused the token ({describe(exc)}); "
                        f"use {PERMISSION}"
                    ) from None
                except NotFoundError:
                    raise QueueRefused(
                        f"sources: {self.where} (id {self.queue_id}) does not exist in account "
                        f"{self.account_id}; create it (`wrangler queues create <name>`) or fix "
                        "queue / queue_id"
                    ) from None
        if self._problem is not None:
            log.info("queues API answering again", after=self._problem)
            self._problem = None
            self.on_problem(None)
        return result


class _Wait(wait_base):
    """Retry-After for a 429 (the API says how long), jittered exponential backoff otherwise."""

    def __init__(self, retry: RetryConfig) -> None:
        self.backoff = wait_random_exponential(multiplier=retry.initial, max=retry.max)
        self.started = time.monotonic()

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RateLimitError):
            return retry_after(exc)
        return float(self.backoff(retry_state))


def retry_after(exc: RateLimitError) -> float:
    raw = exc.response.headers.get("retry-after", "")
    try:
        return max(1.0, float(raw))
    except ValueError:
        return 5.0


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, APIConnectionError | httpx.HTTPError | OSError | anyio.BrokenResourceError)


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, APIStatusError):
        errors = exc.body.get("errors") if isinstance(exc.body, dict) else None
        said = "; ".join(str(e.get("message")) for e in errors or [] if isinstance(e, dict))
        return f"{exc.status_code} {said or exc.message}"
    return f"{type(exc).__name__}: {exc}"
