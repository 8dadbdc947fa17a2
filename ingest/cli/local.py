"""`ingest local`: the offline R2 (SeaweedFS + the Cloudflare API emulator) in the foreground."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import anyio
import typer

from ingest.cli.app import err, out, print_checks, settings


def local(
    directory: Annotated[Path, typer.Option("--dir", help="Where the local R2 keeps its data.")] = Path(
        ".ingest/local"
    ),
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="Write R2_* connection variables here once ready (an old file: removed at start).",
        ),
    ] = None,
    bucket: Annotated[str, typer.Option(help="Default bucket (created on first start).")] = "ingest",
    s3_port: Annotated[int, typer.Option(help="S3 port (default: a free one).")] = 0,
    api_port: Annotated[int, typer.Option(help="Cloudflare API emulator port (default: a free one).")] = 0,
    check: Annotated[bool, typer.Option("--check", help="Start, run a self-check, stop.")] = False,
    new_ports: Annotated[
        bool, typer.Option("--new-ports", help="Pick new free ports instead of those kept for --dir.")
    ] = False,
) -> None:
    """Run an offline R2 (SeaweedFS + Cloudflare API emulator) on 127.0.0.1 until SIGINT/SIGTERM."""
    from ingest.commands.doctor import diagnose
    from ingest.local.seaweed import SeaweedError
    from ingest.local.server import LocalR2

    s = settings()
    ok = True
    if env_file is not None:
        # A file left by an earlier run would tell a script waiting for it that this one is ready
        # while it is still starting, or is failing to.
        try:
            env_file.unlink(missing_ok=True)
        except OSError as exc:
            err.print(f"--env-file {env_file}: {exc.strerror}; give a file path you may write", markup=False)
            raise typer.Exit(2) from None

    async def serve() -> None:
        nonlocal ok
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with LocalR2(directory, bucket, s3_port, api_port, new_ports).running() as info:
                if env_file is not None:
                    info.write_env_file(env_file)
                out.print("[bold green]local R2 ready[/] (Ctrl-C to stop)" if not check else "local R2 ready")
                for k, v in info.env().items():
                    out.print(f"  {k}={v}", markup=False, highlight=False)
                if check:
                    for mode in ("keys", "temporary"):
                        out.print(f"self-check, {mode} credentials:")
                        checks = await diagnose(info.settings(mode))
                        print_checks(checks)
                        ok &= not any(c.ok is False for c in checks)
                    return
                async for signum in signals:
                    out.print(f"received {signal.Signals(signum).name}, stopping")
                    return

    from ingest import logs

    logs.configure(s.log.format, "warning" if check else s.log.level)
    try:
        anyio.run(serve)
    except* SeaweedError as group:
        err.print(f"local R2 stopped: {group.exceptions[0]}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if not ok:
        raise typer.Exit(1)
