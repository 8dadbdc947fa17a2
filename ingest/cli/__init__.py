"""The `ingest` command line: one module per command group, registered on one typer app here."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import threading

# Every command imports some 400 modules first; with Python's default thresholds that is a hundred
# collections walking the objects the imports made (15 ms of `cors check`'s 0.3 s, measured).
gc.set_threshold(50_000, 20, 20)
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ingest.cli import browser, init, landed, local, notifications, run, status, tables, token
from ingest.cli.app import State, app

# In the order a newcomer uses them (`ingest --help` lists them so).
app.command()(init.init)
app.command()(local.local)
app.command()(status.doctor)
app.command()(run.run)
app.command()(status.status)
app.command()(landed.ls)
app.command()(landed.head)
app.command()(tables.tables)
app.add_typer(token.token_app, name="token")
app.add_typer(browser.cors_app, name="cors")
app.add_typer(notifications.notifications_app, name="notifications")
app.command("presign")(browser.presign_command)
__all__ = ["app", "main"]


def _print_version(value: bool) -> None:
    if value:
        from ingest import __version__

        print(f"ingest {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="INGEST_CONFIG",
            help="TOML config file (default: ./ingest.toml when present); also after the command.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    State.config_path = config


def config_first(argv: list[str]) -> list[str]:
    """`ingest run --config x.toml` as people type it: the global --config/-c moves before the command.
    (Only up to a `--`; no command has an option of that name.)"""
    head, rest = argv[:1], argv[1:]
    end = rest.index("--") if "--" in rest else len(rest)
    moved: list[str] = []
    kept: list[str] = []
    i = 0
    while i < end:
        arg = rest[i]
        if arg in ("--config", "-c") and i + 1 < end:
            moved += rest[i : i + 2]
            i += 2
            continue
        if arg.startswith("--config="):
            moved.append(arg)
        else:
            kept.append(arg)
        i += 1
    return head + moved + kept + rest[end:]


def main() -> NoReturn:
    sys.argv = config_first(sys.argv)
    try:
        app()
    except KeyboardInterrupt:
        code: object = 130
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    exit_now(code)


def exit_now(code: object) -> NoReturn:
    """End without the interpreter's teardown, which frees the objects of some 400 modules one by one:
    50 ms of `ingest cors check`'s 0.3 s (measured). What of it matters is done first, in the
    interpreter's order: threads joined (and thread pools told to end), `atexit` handlers (logging
    flushes and closes its handlers), the standard streams flushed. An exception that escapes `main`
    takes the usual way (its traceback, exit 1)."""
    if not isinstance(code, int):  # `sys.exit("why")` prints why and exits 1, as the interpreter does
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    getattr(threading, "_shutdown", lambda: None)()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # e.g. a reader that went away (BrokenPipeError)
            stream.flush()
    os._exit(code)
