"""The `ingest` command line: one module per command group, registered on one typer app here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ingest.cli import browser, local, run, status, token
from ingest.cli.common import State, app

app.add_typer(token.token_app, name="token")
app.add_typer(browser.cors_app, name="cors")
app.command("presign")(browser.presign_command)
__all__ = ["app", "local", "main", "run", "status"]


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config file (default: ./ingest.toml when present)."),
    ] = None,
) -> None:
    State.config_path = config


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
