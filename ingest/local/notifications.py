"""R2 event notifications in the local R2: rules per bucket and queue, and messages for the writes that
really reached SeaweedFS.

The rules API is spelled as the official SDK (cloudflare 5.x `client.r2.buckets.event_notifications`)
calls it: `PUT …/event_notifications/r2/{bucket}/configuration/queues/{queue_id}` (`rules`: `actions`,
`prefix`, `suffix`, `description`), `GET …/configuration`, `GET` and `DELETE …/queues/{queue_id}`, with the
`cf-r2-jurisdiction` header. Messages come from the store's own change feed: `weed filer.meta.tail`
(SeaweedFS's filer metadata subscription) on `/buckets/`, not from the requests this emulator sees, so a
browser's presigned PUT straight to the S3 port is notified like any other write.

What the feed tells apart: a new or replaced object is `PutObject`, unless it was assembled from parts
(`X-Seaweedfs-Upload-Id`): `CompleteMultipartUpload`; a removed one is `DeleteObject`. A server-side copy
looks like a PUT in the feed, so it is notified as `PutObject` (R2 says `CopyObject`).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import Process

from ingest.local.emulator import ApiError
from ingest.logs import get_logger

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.routing import Route

    from ingest.local.emulator import Emulator
    from ingest.local.queues import Queues

log = get_logger("ingest.local.notifications")
ACTIONS = ("PutObject", "CopyObject", "DeleteObject", "CompleteMultipartUpload", "LifecycleDeletion")
BUCKETS = "/buckets/"
UPLOADS = ".uploads"  # SeaweedFS keeps multipart parts under /buckets/<bucket>/.uploads/
ETAG = "Seaweed-X-Amz-ETag"
UPLOAD_ID = "X-Seaweedfs-Upload-Id"


class Notifications:
    def __init__(self, emulator: Emulator, queues: Queues, weed: str, filer: str) -> None:
        self.emulator, self.queues = emulator, queues
        self.weed, self.filer = weed, filer  # the binary, and the filer's host:port
        self.rules: dict[str, dict[str, list[dict[str, Any]]]] = {}  # bucket → queue id → rules
        self.delivered = 0
        self._wanted = anyio.Event()  # set once a rule exists: the feed starts then
        self._last_ns = 0  # the last event delivered (a restarted feed skips what it saw)
        self.dropping = 0  # test hook: the next N matching events are dropped (a lost notification)

    def routes(self, acct: str) -> list[Route]:
        r = self.emulator._route
        base = f"{acct}/event_notifications/r2/{{bucket}}/configuration"
        return [
            r(base, self.list_rules, "GET"),
            r(f"{base}/queues/{{queue_id}}", self.update, "PUT"),
            r(f"{base}/queues/{{queue_id}}", self.get, "GET"),
            r(f"{base}/queues/{{queue_id}}", self.delete, "DELETE"),
            r("/_emulator/drop-notifications", self.drop, "POST"),
        ]

    async def drop(self, request: Request) -> Any:
        """Test hook: lose the next `count` notifications that a rule matches."""
        self.emulator._require_root(request)
        self.dropping = int((await self.emulator._body(request)).get("count", 1))
        return {"dropping": self.dropping}

    async def _bucket(self, request: Request, write: bool) -> str:
        self.emulator._require_admin(request, write=write)
        bucket = str(request.path_params["bucket"])
        await self.emulator._require_bucket(bucket, request)
        return bucket

    def _queue_name(self, queue_id: str) -> str:
        queue = self.queues.queues.get(queue_id)
        if queue is None:
            raise ApiError(404, 11000, "Queue does not exist")
        return queue.name

    async def update(self, request: Request) -> Any:
        bucket = await self._bucket(request, write=True)
        queue_id = str(request.path_params["queue_id"])
        self._queue_name(queue_id)
        rules = (await self.emulator._body(request)).get("rules")
        if not isinstance(rules, list) or not rules:
            raise ApiError(400, 10040, "rules: a non-empty list is required")
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        made: list[dict[str, Any]] = []
        for i, rule in enumerate(rules):
            actions = rule.get("actions") if isinstance(rule, dict) else None
            if not isinstance(actions, list) or not actions or any(a not in ACTIONS for a in actions):
                raise ApiError(400, 10040, f"rules[{i}].actions: some of {', '.join(ACTIONS)}")
            made.append(
                {
                    "ruleId": uuid.uuid4().hex,
                    "createdAt": now,
                    "prefix": str(rule.get("prefix") or ""),
                    "suffix": str(rule.get("suffix") or ""),
                    "actions": actions,
                    "description": str(rule.get("description") or ""),
                }
            )
        self.rules.setdefault(bucket, {}).setdefault(queue_id, []).extend(made)
        self._wanted.set()
        return None

    async def list_rules(self, request: Request) -> Any:
        bucket = await self._bucket(request, write=False)
        queues = [
            {"queueId": q, "queueName": self._queue_name(q), "rules": rules}
            for q, rules in self.rules.get(bucket, {}).items()
            if q in self.queues.queues
        ]
        return {"bucketName": bucket, "queues": queues}

    async def get(self, request: Request) -> Any:
        bucket = await self._bucket(request, write=False)
        queue_id = str(request.path_params["queue_id"])
        rules = self.rules.get(bucket, {}).get(queue_id, [])
        return {"queueId": queue_id, "queueName": self._queue_name(queue_id), "rules": rules}

    async def delete(self, request: Request) -> Any:
        bucket = await self._bucket(request, write=True)
        queue_id = str(request.path_params["queue_id"])
        body: dict[str, Any] = {}
        if await request.body():
            body = await self.emulator._body(request)
        ids = body.get("ruleIds")
        rules = self.rules.get(bucket, {}).get(queue_id, [])
        kept = [r for r in rules if isinstance(ids, list) and r["ruleId"] not in ids]
        self.rules.setdefault(bucket, {})[queue_id] = kept
        return None

    # -- the change feed -------------------------------------------------------------------------------

    async def feed(self) -> None:
        """Follow the filer's metadata changes from the first rule on, until cancelled; a feed that ends
        (SeaweedFS restarted) is started again from the last event it delivered."""
        await self._wanted.wait()
        since = time.time_ns()
        while True:
            ago = max(1.0, (time.time_ns() - max(since, self._last_ns)) / 1e9 + 1)
            command = [self.weed, "filer.meta.tail", f"-filer={self.filer}", f"-pathPrefix={BUCKETS}"]
            command.append(f"-timeAgo={ago:.3f}s")
            try:
                process = await anyio.open_process(command, stderr=None)
            except OSError as exc:
                log.error("cannot follow the SeaweedFS change feed", error=str(exc))
                return
            try:
                await self._read(process)
            finally:
                with anyio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.terminate()
                        await process.wait()
            await anyio.sleep(0.5)

    async def _read(self, process: Process) -> None:
        assert process.stdout is not None
        decoder = json.JSONDecoder()
        text = ""
        async for chunk in process.stdout:
            text += chunk.decode("utf-8", "replace")
            while True:
                start = len(text) - len(text.lstrip())
                if start == len(text):
                    text = ""
                    break
                try:
                    event, end = decoder.raw_decode(text, start)
                except json.JSONDecodeError:
                    break  # the rest of the event has not arrived yet
                text = text[end:]
                if isinstance(event, dict):
                    self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        stamp = int(event.get("tsNs") or 0)
        if stamp and stamp <= self._last_ns:
            return  # seen before a restart of the feed
        self._last_ns = max(self._last_ns, stamp)
        change = event.get("eventNotification") or {}
        new, old = change.get("newEntry"), change.get("oldEntry")
        entry = new or old
        directory = str(event.get("directory") or "")
        if not entry or entry.get("isDirectory") or not directory.startswith(BUCKETS):
            return
        bucket, _, folder = directory[len(BUCKETS) :].partition("/")
        key = f"{folder}/{entry['name']}" if folder else str(entry["name"])
        if key.startswith(UPLOADS + "/") or not bucket:
            return
        if new:
            extended = new.get("extended") or {}
            action = "CompleteMultipartUpload" if UPLOAD_ID in extended else "PutObject"
            size = int((new.get("attributes") or {}).get("fileSize") or 0)
            obj: dict[str, Any] = {"key": key, "size": size, "eTag": _etag(new)}
        else:
            action, obj = "DeleteObject", {"key": key}
        when = datetime.fromtimestamp(stamp / 1e9 if stamp else time.time(), UTC)
        body = {
            "account": self.emulator.state.account_id,
            "action": action,
            "bucket": bucket,
            "object": obj,
            "eventTime": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        for queue_id, rules in self.rules.get(bucket, {}).items():
            if not any(_matches(rule, key, action) for rule in rules):
                continue
            if self.dropping:
                self.dropping -= 1
                log.info("notification dropped on purpose (test hook)", key=key, action=action)
                continue
            self.queues.deliver(queue_id, body)
            self.delivered += 1


def _matches(rule: dict[str, Any], key: str, action: str) -> bool:
    return action in rule["actions"] and key.startswith(rule["prefix"]) and key.endswith(rule["suffix"])


def _etag(entry: dict[str, Any]) -> str:
    extended = entry.get("extended") or {}
    if ETAG in extended:
        return base64.b64decode(extended[ETAG]).decode("ascii", "replace")
    md5 = (entry.get("attributes") or {}).get("md5") or ""
    return base64.b64decode(md5).hex() if md5 else ""
