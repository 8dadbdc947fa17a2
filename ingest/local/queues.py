"""Cloudflare Queues in the local R2's API emulator: queues, push, and HTTP pull consumers with leases.

Spelled as the official SDK (cloudflare 5.x `client.queues`) calls it: `POST /accounts/{id}/queues`
(`queue_name`), list, get, delete; `…/messages` (push: `body`, `content_type`, `delay_seconds`),
`…/messages/batch` (`messages`), `…/messages/pull` (`batch_size` ≤ 100, `visibility_timeout_ms`) and
`…/messages/ack` (`acks` and `retries` by `lease_id`). A pulled message is leased for the visibility
timeout; unacknowledged, it is delivered again with `attempts` + 1. Kept in memory (a restart of the
local R2 empties its queues).
"""

from __future__ import annotations

import heapq
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ingest.local.emulator import ApiError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.routing import Route

    from ingest.local.emulator import Emulator

MAX_BATCH = 100
DEFAULT_VISIBILITY_MS = 30_000


@dataclass
class Message:
    id: str
    body: str
    content_type: str
    timestamp_ms: float
    visible_at: float  # monotonic: delivered no earlier
    attempts: int = 0
    lease_id: str | None = None


@dataclass
class Queue:
    id: str
    name: str
    created_on: str
    messages: dict[str, Message] = field(default_factory=dict)  # by id, in arrival order
    # (visible from, arrival, id): the next messages a pull may take; an entry whose time no longer
    # matches its message (acknowledged, leased again, retried) is skipped when it comes up
    ready: list[tuple[float, int, str]] = field(default_factory=list)
    leases: dict[str, str] = field(default_factory=dict)  # lease id → message id
    arrivals: int = 0

    def put(self, message: Message) -> None:
        self.messages[message.id] = message
        self.schedule(message)

    def schedule(self, message: Message) -> None:
        self.arrivals += 1
        heapq.heappush(self.ready, (message.visible_at, self.arrivals, message.id))

    consumer: dict[str, Any] | None = None  # the http_pull consumer: settings, dead_letter_queue

    def as_json(self) -> dict[str, Any]:
        return {
            "queue_id": self.id,
            "queue_name": self.name,
            "created_on": self.created_on,
            "modified_on": self.created_on,
            "producers": [],
            "producers_total_count": 0,
            "consumers": [self.consumer] if self.consumer else [],
            "consumers_total_count": 1 if self.consumer else 0,
            "settings": {"delivery_delay": 0, "message_retention_period": 345600},
        }


class Queues:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.queues: dict[str, Queue] = {}
        self._limited_until = 0.0  # test hook: every Queues request answers 429 until then
        self._retry_after = 1
        self.requests = {"pull": 0, "ack": 0, "push": 0, "rate_limited": 0}  # served, for tests

    def routes(self, acct: str) -> list[Route]:
        r = self.emulator._route
        base = f"{acct}/queues"
        return [
            r(base, self.create, "POST"),
            r(base, self.list_queues, "GET"),
            r(f"{base}/{{queue_id}}", self.get, "GET"),
            r(f"{base}/{{queue_id}}", self.delete, "DELETE"),
            r(f"{base}/{{queue_id}}/messages", self.push, "POST"),
            r(f"{base}/{{queue_id}}/messages/batch", self.bulk_push, "POST"),
            r(f"{base}/{{queue_id}}/messages/pull", self.pull, "POST"),
            r(f"{base}/{{queue_id}}/messages/ack", self.ack, "POST"),
            r(f"{base}/{{queue_id}}/consumers", self.add_consumer, "POST"),
            r("/_emulator/queues-rate-limit", self.rate_limit, "POST"),
            r("/_emulator/queues-requests", self.counts, "GET"),
        ]

    async def rate_limit(self, request: Request) -> Any:
        """Test hook: answer 429 with `Retry-After: retry_after` to Queues requests for `seconds`."""
        self.emulator._require_root(request)
        body = await self.emulator._body(request)
        seconds = float(body.get("seconds", 0))
        self._limited_until = time.monotonic() + seconds
        self._retry_after = int(body.get("retry_after", max(1, round(seconds))))
        return {"rate_limited_for": seconds}

    async def counts(self, request: Request) -> Any:
        """Test hook: how many pull/ack/push requests were served, and how many got a 429."""
        self.emulator._require_root(request)
        return {**self.requests, "backlog": {q.id: len(q.messages) for q in self.queues.values()}}

    def deliver(self, queue_id: str, body: dict[str, Any]) -> None:
        """A message from inside the local R2 (an event notification), as a producer's `json` one."""
        queue = self.queues.get(queue_id)
        if queue is not None:
            queue.put(_message({"body": body, "content_type": "json"}, 0.0))

    async def add_consumer(self, request: Request) -> Any:
        """An HTTP pull consumer: `settings.max_retries` (default 3) deliveries, then the message goes
        to `dead_letter_queue` (by name), or is dropped when there is none."""
        self._require(request, write=True)
        queue = self._queue(request)
        body = await self.emulator._body(request)
        if body.get("type") != "http_pull":
            raise ApiError(400, 11004, "type: the local R2 serves http_pull consumers only")
        given = body.get("settings")
        settings: dict[str, Any] = given if isinstance(given, dict) else {}
        queue.consumer = {
            "consumer_id": uuid.uuid4().hex,
            "queue_name": queue.name,
            "type": "http_pull",
            "created_on": queue.created_on,
            "dead_letter_queue": body.get("dead_letter_queue") or "",
            "settings": {"max_retries": 3, **settings},
        }
        return queue.consumer

    def _exhausted(self, queue: Queue, message: Message) -> bool:
        """Delivered max_retries + 1 times already: moved to the dead-letter queue."""
        limit = int((queue.consumer or {}).get("settings", {}).get("max_retries", 3))
        if message.attempts <= limit:
            return False
        target = (queue.consumer or {}).get("dead_letter_queue")
        for other in self.queues.values():
            if other.name == target:
                message.lease_id, message.visible_at, message.attempts = None, 0.0, 0
                other.put(message)
        return True

    def _require(self, request: Request, write: bool) -> None:
        if time.monotonic() < self._limited_until:
            self.requests["rate_limited"] += 1
            raise ApiError(
                429,
                971,
                "Please wait and consider throttling your request speed",
                {"Retry-After": str(self._retry_after)},
            )
        if not self.emulator._caps(self.emulator._bearer(request)).queues_allow(write):
            need = "Queues Write" if write else "Queues Read"
            raise ApiError(403, 10000, f"Authentication error: token lacks {need} permission")

    def _queue(self, request: Request) -> Queue:
        queue = self.queues.get(str(request.path_params["queue_id"]))
        if queue is None:
            raise ApiError(404, 11000, "Queue does not exist")
        return queue

    async def create(self, request: Request) -> Any:
        self._require(request, write=True)
        name = (await self.emulator._body(request)).get("queue_name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, 11001, "queue_name: required")
        if any(q.name == name for q in self.queues.values()):
            raise ApiError(409, 11009, f"A queue with name {name} already exists")
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        queue = Queue(uuid.uuid4().hex, name, now)
        self.queues[queue.id] = queue
        return queue.as_json()

    async def list_queues(self, request: Request) -> Any:
        self._require(request, write=False)
        return [q.as_json() for q in self.queues.values()]

    async def get(self, request: Request) -> Any:
        self._require(request, write=False)
        return self._queue(request).as_json()

    async def delete(self, request: Request) -> Any:
        self._require(request, write=True)
        del self.queues[self._queue(request).id]
        return None

    async def push(self, request: Request) -> Any:
        self._require(request, write=True)
        self.requests["push"] += 1
        queue = self._queue(request)
        queue.put(_message(await self.emulator._body(request), 0.0))
        return None

    async def bulk_push(self, request: Request) -> Any:
        self._require(request, write=True)
        self.requests["push"] += 1
        queue = self._queue(request)
        body = await self.emulator._body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or len(messages) > MAX_BATCH:
            raise ApiError(400, 11002, f"messages: a list of at most {MAX_BATCH} messages is required")
        delay = float(body.get("delay_seconds") or 0)
        for m in messages:
            if isinstance(m, dict):
                queue.put(_message(m, delay))
        return None

    async def pull(self, request: Request) -> Any:
        self._require(request, write=True)
        self.requests["pull"] += 1
        queue = self._queue(request)
        body = await self.emulator._body(request)
        size = int(body.get("batch_size") or 5)
        if not 1 <= size <= MAX_BATCH:
            raise ApiError(400, 11003, f"batch_size: between 1 and {MAX_BATCH}")
        visibility = float(body.get("visibility_timeout_ms") or DEFAULT_VISIBILITY_MS) / 1000
        now = time.monotonic()
        out: list[dict[str, Any]] = []
        while queue.ready and len(out) < size and queue.ready[0][0] <= now:
            visible_at, _, message_id = heapq.heappop(queue.ready)
            message = queue.messages.get(message_id)
            if message is None or message.visible_at != visible_at:
                continue  # acknowledged, or scheduled again since
            if self._exhausted(queue, message):
                del queue.messages[message_id]
                continue
            if message.lease_id is not None:
                queue.leases.pop(message.lease_id, None)  # that lease ran out
            message.attempts += 1
            message.lease_id = uuid.uuid4().hex
            message.visible_at = now + visibility
            queue.leases[message.lease_id] = message.id
            queue.schedule(message)  # delivered again once the lease runs out
            out.append(
                {
                    "id": message.id,
                    "body": message.body,
                    "attempts": message.attempts,
                    "lease_id": message.lease_id,
                    "timestamp_ms": message.timestamp_ms,
                    "metadata": {"CF-Content-Type": message.content_type},
                }
            )
        return {"messages": out, "message_backlog_count": len(queue.messages)}

    async def ack(self, request: Request) -> Any:
        self._require(request, write=True)
        self.requests["ack"] += 1
        queue = self._queue(request)
        body = await self.emulator._body(request)
        acks = {a.get("lease_id") for a in body.get("acks") or [] if isinstance(a, dict)}
        retries = {
            r.get("lease_id"): float(r.get("delay_seconds") or 0)
            for r in body.get("retries") or []
            if isinstance(r, dict)
        }
        now = time.monotonic()
        acked, retried, warnings = 0, 0, list[str]()
        for lease in acks:
            message = _held(queue, lease, now)
            if message is not None:
                del queue.messages[message.id]
                acked += 1
        for lease, delay in retries.items():
            message = _held(queue, lease, now)
            if message is not None:
                message.visible_at, message.lease_id = now + delay, None
                queue.schedule(message)
                retried += 1
        if acked < len(acks):
            warnings.append(f"{len(acks) - acked} lease(s) unknown or expired: not acknowledged")
        return {"ackCount": acked, "retryCount": retried, "warnings": warnings}


def _held(queue: Queue, lease: object, now: float) -> Message | None:
    """The message a lease still holds (None: unknown, acknowledged, or run out)."""
    message_id = queue.leases.pop(str(lease), None)
    message = queue.messages.get(message_id) if message_id is not None else None
    if message is None or message.lease_id != lease or message.visible_at <= now:
        return None
    return message


def _message(spec: dict[str, Any], delay: float) -> Message:
    kind = str(spec.get("content_type") or "json")
    raw = spec.get("body")
    # Pulled as sent: json as its JSON text, text as the text, bytes as the base64 the producer sent.
    body = str(raw) if kind in ("text", "bytes") else json.dumps(raw)
    wait = float(spec.get("delay_seconds") or delay)
    return Message(uuid.uuid4().hex, str(body), kind, time.time() * 1000, time.monotonic() + wait)
