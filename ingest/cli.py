"""The `ingest` command line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.console import Console

from ingest import logs
from ingest.config import ConfigError, Settings, load_settings

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
    logs.register_secret(s.r2.auth.secret_access_key, s.r2.auth.api_token)
    logs.configure(s.log.format, s.log.level)
    return s


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config file (default: ./ingest.toml when present)."),
    ] = None,
) -> None:
    State.config_path = config


@app.command()
def local(
    directory: Annotated[Path, typer.Option("--dir", help="Where the local R2 keeps its data.")] = Path(
        ".ingest/local"
    ),
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="Write R2_* connection variables here once ready.")
    ] = None,
    bucket: Annotated[str, typer.Option(help="Default bucket (created on first start).")] = "ingest",
    s3_port: Annotated[int, typer.Option(help="S3 port (default: a free one).")] = 0,
    api_port: Annotated[int, typer.Option(help="Cloudflare API emulator port (default: a free one).")] = 0,
    check: Annotated[bool, typer.Option("--check", help="Start, run a self-check, stop.")] = False,
) -> None:
    """Run an offline R2 (SeaweedFS + Cloudflare API emulator) on 127.0.0.1 until SIGINT/SIGTERM."""
    from ingest.local.check import self_check
    from ingest.local.server import LocalR2

    s = settings()
    ok = True

    async def serve() -> None:
        nonlocal ok
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with LocalR2(directory, bucket, s3_port, api_port).running() as info:
                if env_file is not None:
                    info.write_env_file(env_file)
                out.print("[bold green]local R2 ready[/] (Ctrl-C to stop)" if not check else "local R2 ready")
                for k, v in info.env().items():
                    out.print(f"  {k}={v}", markup=False, highlight=False)
                if check:
                    ok = await self_check(info, lambda good, msg: out.print(("✓ " if good else "✗ ") + msg))
                    return
                async for signum in signals:
                    out.print(f"received {signal.Signals(signum).name}, stopping")
                    return

    logs.configure(s.log.format, "warning" if check else s.log.level)
    anyio.run(serve)
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
