"""`ingest cors …` and `ingest presign`: what browsers need from the bucket.

Policies are validated before any API call (exit 2, every problem on its own line). With no R2
configured these commands work on the local R2, like `ingest run`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import anyio
import typer

from ingest.cli.app import err, out, r2_client, settings
from ingest.messages import count
from ingest.r2.cors.rules import CorsError, CorsRule, dumps, evaluate, holds, parse_policy

if TYPE_CHECKING:  # the S3 and Cloudflare clients are imported when a command runs, not for --help
    from ingest.config import Settings
    from ingest.r2.cors.bucket import BucketCors

cors_app = typer.Typer(help="Bucket CORS: let browsers upload to and read from R2.", no_args_is_help=True)
Via = Annotated[
    Literal["s3", "api"],
    typer.Option(help="s3: Put/Get/DeleteBucketCors with the R2 keys; api: the Cloudflare API "
                 "(CLOUDFLARE_API_TOKEN, sends the jurisdiction header)."),
]  # fmt: skip


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(message, markup=False, highlight=False)
    return typer.Exit(code)


@asynccontextmanager
async def bucket_cors(via: str, s: Settings | None = None) -> AsyncIterator[tuple[str, BucketCors]]:
    from ingest.r2.api import cloudflare_client
    from ingest.r2.cors.bucket import ApiBucketCors, S3BucketCors

    s = s or settings()
    if via == "s3":
        async with r2_client(s) as (s2, client):
            yield s2.r2.bucket, S3BucketCors(client, s2.r2.bucket)
        return
    from ingest.local.fallback import r2_settings

    async with r2_settings(s, err) as s2:
        r2 = s2.r2
        token = r2.admin_api_token.get_secret_value()
        if not token or not r2.account_id or not r2.bucket:
            raise fail(
                "config error: --via api needs CLOUDFLARE_API_TOKEN (with R2 admin rights), "
                "R2_ACCOUNT_ID and R2_BUCKET_NAME",
                2,
            )
        async with cloudflare_client(token, r2.api_base_url) as cf:
            yield r2.bucket, ApiBucketCors(cf, r2.account_id, r2.bucket, r2.jurisdiction)


# R2/API refusals by (module, class): looked up only in modules the command imported (an error of a
# class implies its module was loaded), so a command that never needed a client does not import one.
_REFUSALS = (
    ("botocore.exceptions", "ClientError"),
    ("ingest.r2.client", "R2AccessDenied"),
    ("ingest.r2.credentials", "CredentialError"),
    ("cloudflare", "APIError"),
)


def _run_r2(fn: object) -> None:
    """Run an async command body; R2/API refusals become one line and exit 1."""
    try:
        anyio.run(fn)  # type: ignore[arg-type]
    except Exception as exc:
        refusals = tuple(
            getattr(sys.modules[module], name) for module, name in _REFUSALS if module in sys.modules
        )
        if isinstance(exc, refusals):
            raise fail(f"error: {exc}") from None
        raise


@cors_app.command("get")
def cors_get(
    fmt: Annotated[Literal["s3", "wrangler"], typer.Option("--format", help="Output form.")] = "s3",
    via: Via = "s3",
) -> None:
    """Print the bucket's live CORS policy (exit 1 when it has none)."""

    async def body() -> None:
        async with bucket_cors(via) as (bucket, target):
            rules = await target.get()
        if not rules:
            raise fail(
                f"bucket {bucket} has no CORS policy; browsers cannot reach it (see `ingest cors set`)"
            )
        print(dumps(rules, fmt))

    _run_r2(body)


@cors_app.command("set")
def cors_set(
    file: Annotated[Path, typer.Argument(help="Policy JSON in the S3 or wrangler form ('-' for stdin).")],
    via: Via = "s3",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate only.")] = False,
) -> None:
    """Validate a policy like R2 does, then apply it (replacing the bucket's current policy)."""
    name = "stdin" if str(file) == "-" else str(file)
    try:
        text = sys.stdin.read() if name == "stdin" else file.read_text()
    except OSError as exc:
        raise fail(f"usage error: {name}: cannot read ({exc.strerror})", 2) from None
    try:
        rules, form = parse_policy(text)
    except CorsError as exc:
        for problem in exc.problems:
            err.print(f"{name}: {problem}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if dry_run:
        out.print(f"{name}: valid ({count(len(rules), 'rule')}, {form} form)", markup=False, highlight=False)
        return

    async def body() -> None:
        async with bucket_cors(via) as (bucket, target):
            await target.put(rules)
            live = await target.get()
        if not holds(rules, live):
            raise fail(
                f"error: bucket {bucket} holds a different policy after the update: {dumps(live, 's3')}"
            )
        out.print(
            f"applied {len(rules)} CORS rules to bucket {bucket} (via {via})", markup=False, highlight=False
        )

    _run_r2(body)


@cors_app.command("delete")
def cors_delete(via: Via = "s3") -> None:
    """Remove the bucket's CORS policy (browsers are then blocked)."""

    async def body() -> None:
        async with bucket_cors(via) as (bucket, target):
            await target.delete()
        out.print(f"removed the CORS policy of bucket {bucket}", markup=False, highlight=False)

    _run_r2(body)


@cors_app.command("check")
def cors_check(
    origin: Annotated[str, typer.Option(help="The page's origin, e.g. https://app.example.com.")],
    method: Annotated[str, typer.Option(help="GET, PUT, POST, DELETE or HEAD.")] = "GET",
    header: Annotated[
        list[str] | None, typer.Option("--header", help="A request header the page sets (repeatable).")
    ] = None,
    via: Via = "s3",
) -> None:
    """Would a browser on ORIGIN be allowed this request by the live policy? Exit 0 yes, 1 no."""
    from ingest.config.origins import origin_problem  # (the config package is not imported for --help)

    if (problem := origin_problem(origin)) is not None or origin == "*":
        raise fail(f"usage error: --origin: {problem or 'a page has one concrete origin'}", 2)
    headers = [h.split(":", 1)[0].strip() for h in header or []]
    verdict = None

    async def body() -> None:
        nonlocal verdict
        from ingest.local.fallback import r2_settings
        from ingest.r2.quick import bucket_cors_rules

        async with r2_settings(settings(), err) as s:
            # One signed GET without the S3 client's start-up; the client answers when it cannot.
            found = await anyio.to_thread.run_sync(bucket_cors_rules, s.r2) if via == "s3" else None
            if found is not None:
                rules = [CorsRule.from_s3(r) for r in found]
            else:
                async with bucket_cors(via, s) as (_bucket, target):
                    rules = await target.get()
            verdict = evaluate(rules, origin, method, headers)

    _run_r2(body)
    assert verdict is not None
    out.print(verdict.reason, markup=False, highlight=False)
    if verdict.allowed:
        exposed = ", ".join(verdict.exposed) or "none beyond the CORS-safelisted ones (no ETag)"
        out.print(f"response headers the page can read: {exposed}", markup=False, highlight=False)
        return
    raise typer.Exit(1)


def presign_command(
    key: Annotated[
        str, typer.Argument(help="Object key in the bucket, e.g. 2024/08/02/ingested_0001.parquet.")
    ],
    method: Annotated[str, typer.Option(help="GET, PUT, HEAD or DELETE (R2 has no presigned POST).")] = "GET",
    expires: Annotated[str, typer.Option(help="How long the URL works: 1s to 7d.")] = "1h",
    content_type: Annotated[str, typer.Option(help="PUT only: the Content-Type the upload must send.")] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {url, method, key, expires_at, headers}.")
    ] = False,
) -> None:
    """Print a presigned URL for one object (a browser or curl can use it without credentials)."""
    from ingest.config.quantities import parse_duration
    from ingest.r2.presign import PresignError, check_request, presign

    try:
        seconds = parse_duration(expires)
    except ValueError as exc:
        raise fail(f"usage error: --expires: {exc}", 2) from None
    try:
        check_request(method, seconds)
    except PresignError as exc:
        raise fail(f"usage error: {exc}", 2) from None
    s = settings()

    async def body() -> None:
        async with r2_client(s) as (s2, client):
            try:
                p = await presign(client, s2.r2.bucket, key, method, seconds, content_type)
            except PresignError as exc:
                raise fail(f"usage error: {exc}", 2) from None
        if as_json:
            print(json.dumps(p.as_json()))
        else:
            print(p.url)
        note = f"{p.method} s3://{s2.r2.bucket}/{key} until {p.expires_at:%Y-%m-%dT%H:%M:%SZ}"
        if p.headers:
            note += "; the request must send " + ", ".join(f"{k}: {v}" for k, v in p.headers.items())
        if p.shortened:
            note += " (cut short: the temporary credentials that signed it expire then)"
        err.print(note, markup=False, highlight=False)
        if not s.r2.configured:
            err.print(
                "warning: that local R2 ran only for this command, so the URL is dead already; run "
                "`ingest local --env-file .ingest/local.env`, load that file and presign again",
                markup=False,
                highlight=False,
            )

    _run_r2(body)
