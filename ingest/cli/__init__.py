"""The `ingest` command line: one module per command group, registered on one typer app here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ingest.cli import browser, init, landed, local, run, status, token
from ingest.cli.common import State, app

# In the order a newcomer uses them (`ingest --help` lists them so).
app.command()(init.init)
app.command()(local.local)
app.command()(status.doctor)
app.command()(run.run)
app.command()(status.status)
app.command()(landed.ls)
app.command()(landed.head)
app.add_typer(token.token_app, name="token")
app.add_typer(browser.cors_app, name="cors")
app.command("presign")(browser.presign_command)
__all__ = ["app", "main"]


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
