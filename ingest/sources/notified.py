"""R2 event notifications for the landing source: which objects were written, read from the queue the
bucket's notification rule sends them to (instead of listing the prefix every few seconds).

A message is `{account, action, bucket, object: {key, size, eTag}, eventTime}`. Only writes count
(`PutObject`, `CompleteMultipartUpload`, `CopyObject`); the rest, and anything that is not such a message,
is acknowledged and ignored. Messages are acknowledged once the objects they name are taken (claimed and
copied, or found taken): the objects themselves stay in the landing prefix until ingested, so a message
lost anyway is made up for by the reconcile LIST.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingest.config import ConfigError, Settings, SourceConfig
from ingest.layout import landing_prefix
from ingest.logs import get_logger, register_secret

if TYPE_CHECKING:  # the Cloudflare SDK is imported only by a landing source that has notifications
    from ingest.sources.queue.api import QueueApi

log = get_logger("ingest.sources.notified")
WRITES = ("PutObject", "CompleteMultipartUpload", "CopyObject")


@dataclass(frozen=True)
class Written:
    key: str
    etag: str
    size: int


class Notified:
    @classmethod
    def of(cls, settings: Settings, cfg: SourceConfig, index: int) -> Notified:
        """The queue a landing source's notifications arrive on (`notifications = "<queue>"`)."""
        token = cfg.api_token.get_secret_value() or settings.r2.admin_api_token.get_secret_value()
        if not token:
            raise ConfigError(
                f"sources.{index}.notifications: reading the queue needs a Cloudflare API token with "
                "Queues Write; set CLOUDFLARE_API_TOKEN (or api_token)"
            )
        if not settings.r2.account_id:
            raise ConfigError("r2.account_id: required to read R2 event notifications (R2_ACCOUNT_ID)")
        register_secret(token)
        from ingest.sources.queue.api import QueueApi

        api = QueueApi(
            token, settings.r2.account_id, settings.r2.api_base_url, settings.retry, cfg.notifications
        )
        return cls(api, settings.r2.bucket, landing_prefix(settings.output.prefix))

    def __init__(self, api: QueueApi, bucket: str, prefix: str, batch_size: int = 100) -> None:
        self.api, self.bucket, self.prefix, self.batch_size = api, bucket, prefix, batch_size
        self.messages = 0

    async def pull(self, visibility_timeout: float) -> tuple[list[Written], list[str]]:
        """The objects written under the prefix that the next messages name, and the messages' leases."""
        messages, _ = await self.api.pull(self.batch_size, visibility_timeout)
        self.messages += len(messages)
        out: list[Written] = []
        for m in messages:
            written = self._written(m.body)
            if written is not None:
                out.append(written)
        return out, [m.lease_id for m in messages]

    def _written(self, body: object) -> Written | None:
        try:
            event = json.loads(body) if isinstance(body, str | bytes) else body
            if not isinstance(event, dict) or event.get("action") not in WRITES:
                return None
            obj = event["object"]
            key = str(obj["key"])
            if event.get("bucket") != self.bucket or not key.startswith(self.prefix):
                return None
            return Written(key, str(obj.get("eTag") or "").strip('"'), int(obj.get("size") or 0))
        except (ValueError, KeyError, TypeError):
            log.warning("notification that is not an R2 event notification: ignored", body=str(body)[:200])
            return None
