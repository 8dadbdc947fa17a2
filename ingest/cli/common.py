"""What every command shares: the app, the two consoles, loading settings (exit 2 on a bad config)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from ingest import logs
from ingest.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from ingest.doctor import Check

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
    try:
        s = load_settings(State.config_path)
    except ConfigError as exc:
        err.print(f"config error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    logs.register_secret(s.r2.auth.secret_access_key, s.r2.auth.api_token, s.r2.admin_api_token)
    logs.configure(s.log.format, s.log.level)
    return s


def print_checks(checks: list[Check]) -> None:
    for c in checks:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "·"}[c.ok]
        out.print(f"{mark} {c.name}: ", end="")
        out.print(c.detail, markup=False, highlight=False)
