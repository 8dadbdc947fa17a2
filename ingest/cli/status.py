"""`ingest status` and `ingest doctor`: what the spool holds, and whether the setup works."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import anyio
import typer

from ingest.cli.app import err, out, print_checks, settings


def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, one object per worker.")] = False,
) -> None:
    """Spool backlog (objects, bytes, oldest), last successful upload, dead letters today."""
    import json

    from ingest.commands.status import describe, spool_status

    s = settings()
    workers = spool_status(Path(s.spool.dir))
    if as_json:
        print(json.dumps([w.as_json() for w in workers]))
        return
    if not workers:
        out.print(f"no spool at {s.spool.dir}: no worker has run with this configuration here yet")
        return
    for w in workers:
        for line in describe(w):
            out.print(line, markup=False, highlight=False)


def doctor() -> None:
    """Check config, endpoint, token, credentials and bucket behaviour; exit 1 on any ✗."""
    from ingest.commands.doctor import diagnose
    from ingest.config import ConfigError

    s = settings()
    try:
        checks = anyio.run(diagnose, s)
    except ConfigError as exc:
        err.print(f"config error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    print_checks(checks)
    if any(c.ok is False for c in checks):
        raise typer.Exit(1)
