"""`ingest doctor` for a queue source: the token may pull and acknowledge (Queues Write), the queue
exists and has an HTTP pull consumer."""

from __future__ import annotations

from cloudflare import APIStatusError

from ingest.config import RetryConfig, Settings, SourceConfig
from ingest.sources.queue.api import PERMISSION, QueueApi, describe

DOCTOR_PATIENCE = 10.0  # seconds an unreachable API is retried before doctor says so


async def check_queue(settings: Settings, cfg: SourceConfig) -> list[tuple[bool | None, str]]:
    """(ok, detail) per finding."""
    token = cfg.api_token.get_secret_value() or settings.r2.admin_api_token.get_secret_value()
    if not token:
        return [(False, f"queue: no API token: set CLOUDFLARE_API_TOKEN (or api_token) to {PERMISSION}")]
    retry = RetryConfig(initial=0.2, max=2.0, once_max_elapsed=DOCTOR_PATIENCE)
    api = QueueApi(token, settings.r2.account_id, settings.r2.api_base_url, retry, cfg.queue, cfg.queue_id)
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
        got = await api.client.queues.get(queue_id, account_id=settings.r2.account_id)
        consumers = [c for c in (got.consumers or []) if getattr(c, "type", "") == "http_pull"] if got else []
        if not consumers:
            name = cfg.queue or queue_id
            out.append(
                (
                    None,
                    f"queue: {api.where} has no HTTP pull consumer; Cloudflare serves pulls only once one "
                    f"is added: `wrangler queues consumer http add {name}`",
                )
            )
    except Exception as exc:
        out.append((False, str(exc) if not isinstance(exc, APIStatusError) else describe(exc)))
    finally:
        await api.close()
    return out
