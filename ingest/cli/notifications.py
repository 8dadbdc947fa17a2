"""`ingest notifications setup|show|delete`: the bucket's R2 event notification rule that sends writes
under the landing prefix to a queue (for `[[sources]] kind = "landing"` with `notifications = "<queue>"`).

Through the Cloudflare API with CLOUDFLARE_API_TOKEN, sending the bucket's jurisdiction
(`cf-r2-jurisdiction`). With no R2 configured they work on the local R2, like `ingest run`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer

from ingest.cli.app import err, out, settings

if TYPE_CHECKING:
    from cloudflare import AsyncCloudflare

    from ingest.config import Settings

notifications_app = typer.Typer(
    help="R2 event notifications: the landing prefix's writes, sent to a queue.", no_args_is_help=True
)
WRITES = ["PutObject", "CompleteMultipartUpload", "CopyObject"]
Queue = Annotated[str, typer.Option(help="The queue (name); default: the landing source's `notifications`.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(message, markup=False, highlight=False)
    return typer.Exit(code)


def _queue_of(s: Settings, queue: str) -> str:
    if queue:
        return queue
    named = [c.notifications for c in s.sources if c.kind == "landing" and c.notifications]
    if not named:
        raise _fail('usage error: --queue NAME, or a landing source with notifications = "<queue>"', 2)
    return named[0]


@asynccontextmanager
async def _api() -> AsyncIterator[tuple[Settings, AsyncCloudflare, dict[str, Any]]]:
    from ingest.local.fallback import r2_settings
    from ingest.r2.api import cloudflare_client

    async with r2_settings(settings(), err) as s:
        token = s.r2.admin_api_token.get_secret_value()
        if not token or not s.r2.account_id or not s.r2.bucket:
            raise _fail(
                "config error: CLOUDFLARE_API_TOKEN (R2 admin and Queues rights), R2_ACCOUNT_ID and "
                "R2_BUCKET_NAME are required",
                2,
            )
        where: dict[str, Any] = {"account_id": s.r2.account_id}
        if s.r2.jurisdiction != "default":
            where["cf_r2_jurisdiction"] = s.r2.jurisdiction
        async with cloudflare_client(token, s.r2.api_base_url) as cf:
            yield s, cf, where


async def _queue_id(cf: AsyncCloudflare, account_id: str, name: str) -> str:
    async for q in cf.queues.list(account_id=account_id):
        if q.queue_name == name and q.queue_id:
            return q.queue_id
    raise _fail(f"queue {name!r} does not exist; create it: `wrangler queues create {name}`")


def _said(exc: Exception) -> str:
    from ingest.sources.queue.api import describe

    return describe(exc)


@notifications_app.command("setup")
def setup(queue: Queue = "") -> None:
    """Send every write under the landing prefix (PutObject, CompleteMultipartUpload, CopyObject) to the
    queue; replaces nothing else."""
    from ingest.layout import landing_prefix

    async def go() -> None:
        async with _api() as (s, cf, where):
            name = _queue_of(s, queue)
            queue_id = await _queue_id(cf, s.r2.account_id, name)
            prefix = landing_prefix(s.output.prefix)
            rule: Any = {"prefix": prefix, "actions": WRITES, "description": "r2-ingest landing"}
            try:
                await cf.r2.buckets.event_notifications.update(
                    queue_id, bucket_name=s.r2.bucket, rules=[rule], **where
                )
            except Exception as exc:
                raise _fail(f"could not set the rule: {_said(exc)}") from None
            out.print(
                f"bucket {s.r2.bucket}: writes under {prefix} go to queue {name} ({', '.join(WRITES)})",
                markup=False,
                highlight=False,
            )

    anyio.run(go)


@notifications_app.command("show")
def show() -> None:
    """The bucket's notification rules, per queue."""

    async def go() -> None:
        async with _api() as (s, cf, where):
            try:
                got = await cf.r2.buckets.event_notifications.list(s.r2.bucket, **where)
            except Exception as exc:
                raise _fail(f"could not read the rules: {_said(exc)}") from None
            queues = got.queues or []
            if not any(q.rules for q in queues):
                out.print(f"bucket {s.r2.bucket}: no event notification rules")
            for q in queues:
                for r in q.rules or []:
                    out.print(
                        f"{q.queue_name or q.queue_id}\tprefix={r.prefix or ''!r}\tsuffix={r.suffix or ''!r}"
                        f"\t{','.join(r.actions)}\t{r.rule_id or ''}",
                        markup=False,
                        highlight=False,
                    )

    anyio.run(go)


@notifications_app.command("delete")
def delete(queue: Queue = "") -> None:
    """Remove the bucket's rules for the queue (the landing source then finds uploads by listing only
    every reconcile_interval: remove `notifications` from its config too)."""

    async def go() -> None:
        async with _api() as (s, cf, where):
            name = _queue_of(s, queue)
            queue_id = await _queue_id(cf, s.r2.account_id, name)
            try:
                await cf.r2.buckets.event_notifications.delete(queue_id, bucket_name=s.r2.bucket, **where)
            except Exception as exc:
                raise _fail(f"could not delete the rules: {_said(exc)}") from None
            out.print(f"bucket {s.r2.bucket}: rules for queue {name} deleted", markup=False, highlight=False)

    anyio.run(go)
