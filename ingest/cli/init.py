"""`ingest init`: a commented ingest.toml to start from, and the next commands to run."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ingest.cli.app import err, out

# SourceConfig.kind's choices, spelled here so that `ingest --help` need not load pydantic
# (tests/test_cli.py checks they are the same).
SOURCE_KINDS = ("directory", "landing", "http", "stdin", "redis", "queue")
SourceKind = Enum("SourceKind", {kind: kind for kind in SOURCE_KINDS}, type=str)  # type: ignore[misc]


def init(
    path: Annotated[
        Path, typer.Argument(help="The file to write, or a directory to write ingest.toml into.")
    ] = Path("ingest.toml"),
    source: Annotated[
        list[SourceKind] | None,
        typer.Option(
            "--source", "-s", help="A source to configure (repeat for several; default: directory)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented ingest.toml for the chosen sources, with the defaults and the names to set."""
    from ingest.commands.starter import INBOX, render

    target = path / "ingest.toml" if path.is_dir() else path
    if target.exists() and not force:
        err.print(
            f"{target} exists; pass --force to overwrite it, or another path", markup=False, highlight=False
        )
        raise typer.Exit(2)
    kinds = [s.value for s in source] if source else ["directory"]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(kinds))
        if "directory" in kinds:
            (target.parent / INBOX).mkdir(exist_ok=True)
    except OSError as exc:
        err.print(
            f"{target}: cannot write it ({exc.strerror or exc}); pick another path",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2) from None
    noun = "source" if len(kinds) == 1 else "sources"
    out.print(f"wrote {target} ({', '.join(kinds)} {noun})", markup=False, highlight=False)
    if "directory" in kinds:
        out.print(
            f"files dropped into {target.parent / INBOX}/ will be ingested", markup=False, highlight=False
        )
    config = "" if target == Path("ingest.toml") else f" --config {target}"
    for line in (
        "next: set R2_ACCOUNT_ID, R2_BUCKET_NAME and a token (see the file), or nothing to try it offline;",
        f"      ingest{config} doctor   checks the configuration and the access to R2",
        f"      ingest{config} run      starts the worker (--once: takes what is there, then exits)",
    ):
        out.print(line, markup=False, highlight=False)
