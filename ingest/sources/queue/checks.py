"""`ingest doctor` for a queue source: the token may pull and acknowledge (Queues Write), the queue
exists and has an HTTP pull consumer."""

from __future__ import annotations

from typing import Any

from cloudflare import APIStatusError

from ingest.config import RetryConfig, Settings, SourceConfig
from ingest.sources.queue.api import PERMISSION, QueueApi, describe

DOCTOR_PATIENCE = 10.0  # seconds an unreachable API is retried before doctor says so


async def check_queue(settings: Settings, cfg: SourceConfig, name: str = "") -> list[tuple[bool | None, str]]:
    """(ok, detail) per finding; `name`: the queue, when it is not the source's own (notifications)."""
    token = cfg.api_token.get_secret_value() or settings.r2.admin_api_token.get_secret_value()
    if not token:
        return [(False, f"queue: no API token: set CLOUDFLARE_API_TOKEN (or api_token) to {PERMISSION}")]
    retry = RetryConfig(initial=0.2, max=2.0, once_max_elapsed=DOCTOR_PATIENCE)
    queue, queue_id = (name, "") if name else (cfg.queue, cfg.queue_id)
    api = QueueApi(token, settings.r2.account_id, settings.r2.api_base_url, retry, queue, queue_id)
    api.once = True
    out: list[tuple[bool | None, str]] = []
    try:
        queue_id = await api.resolve()
        out.append((True, f"queue: {api.where} (id {queue_id}) found; the token may read it"))
        try:  # an acknowledgement of nothing: refused without Queues Write, harmless with it
            await api.client.queues.messages.ack(
                queue_id, account_id=settings.r2.account_id, acks=[], retries=[]
            )
            out.append((True, "queue: the token may pull and acknowledge (Queues Write)"))
        except APIStatusError as exc:
            out.append((False, f"queue: the token may not acknowledge ({describe(exc)}): use {PERMISSION}"))
        if name:
            out.append(await _rule(api, settings, queue_id))
        got = await api.client.queues.get(queue_id, account_id=settings.r2.account_id)
        consumers = [c for c in (got.consumers or []) if getattr(c, "type", "") == "http_pull"] if got else []
        if not consumers:
            shown = name or cfg.queue or queue_id
            out.append(
                (
                    None,
                    f"queue: {api.where} has no HTTP pull consumer; Cloudflare serves pulls only once one "
                    f"is added: `wrangler queues consumer http add {shown}`",
                )
            )
    except Exception as exc:
        out.append((False, str(exc) if not isinstance(exc, APIStatusError) else describe(exc)))
    finally:
        await api.close()
    return out


async def _rule(api: QueueApi, settings: Settings, queue_id: str) -> tuple[bool | None, str]:
    """The bucket sends writes under the landing prefix to the queue."""
    from ingest.layout import landing_prefix

    prefix = landing_prefix(settings.output.prefix)
    where: dict[str, Any] = {"account_id": settings.r2.account_id, "bucket_name": settings.r2.bucket}
    if settings.r2.jurisdiction != "default":
        where["cf_r2_jurisdiction"] = settings.r2.jurisdiction
    try:
        got = await api.client.r2.buckets.event_notifications.get(queue_id, **where)
    except APIStatusError as exc:
        return (
            False,
            f"notifications: cannot read the bucket's rules ({describe(exc)}): the token needs R2 admin",
        )
    for rule in got.rules or []:
        if prefix.startswith(rule.prefix or "") and "PutObject" in rule.actions:
            return (True, f"notifications: writes under {prefix} go to {api.where}")
    return (
        False,
        f"notifications: no rule sends writes under {prefix} to {api.where}: `ingest notifications setup`",
    )
