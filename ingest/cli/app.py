"""What every command shares: the app, the two consoles, loading settings (exit 2 on a bad config)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:  # pydantic, structlog and the clients load when a command runs, not for --help
    from ingest.commands.doctor import Check
    from ingest.config import Settings
    from ingest.r2.client import R2Client

app = typer.Typer(
    name="ingest",
    help="Batch records from sources into dated Parquet objects on Cloudflare R2.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class State:
    config_path: Path | None = None


def settings() -> Settings:
    """Load the configuration or exit 2 with a one-line message naming the key."""
    from ingest.config import ConfigError, load_settings

    try:
        s = load_settings(State.config_path)
    except ConfigError as exc:
        err.print(f"config error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    from ingest import logs

    logs.register_secret(s.r2.auth.secret_access_key, s.r2.auth.api_token, s.r2.admin_api_token)
    logs.configure(s.log.format, s.log.level)
    return s


def print_checks(checks: list[Check]) -> None:
    for c in checks:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "·"}[c.ok]
        out.print(f"{mark} {c.name}: ", end="")
        out.print(c.detail, markup=False, highlight=False)


@asynccontextmanager
async def r2_client(s: Settings) -> AsyncIterator[tuple[Settings, R2Client]]:
    """Settings (the local R2's, started for the command, when none is configured) and an S3 client
    for them. Imported lazily: `ingest --help` must not pay for aioboto3 and the Cloudflare SDK."""
    from ingest.local.fallback import r2_settings
    from ingest.r2.client import R2Client
    from ingest.r2.credentials import provider_from_settings
    from ingest.r2.endpoint import endpoint_url

    async with r2_settings(s, err) as s2:
        r2 = s2.r2
        if not r2.bucket:
            err.print("config error: r2.bucket: required (R2_BUCKET_NAME)", markup=False, highlight=False)
            raise typer.Exit(2)
        async with (
            await provider_from_settings(r2, s2.output.prefix) as provider,
            R2Client(endpoint_url(r2.account_id, r2.jurisdiction, r2.endpoint_url), provider) as client,
        ):
            yield s2, client
