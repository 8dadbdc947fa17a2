"""`ingest tables`: the Iceberg tables the worker commits to (R2 Data Catalog)."""

from __future__ import annotations

from typing import Annotated

import typer

from ingest.cli.app import err, out, settings


def tables(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, one object per table.")] = False,
) -> None:
    """Tables of [iceberg] namespace: rows, data files, last snapshots with their batch ids."""
    import json

    from ingest.config import ConfigError
    from ingest.iceberg.catalog import connect
    from ingest.iceberg.listing import describe, describe_tables

    s = settings()
    if not (s.iceberg.catalog_uri and s.iceberg.warehouse):
        err.print(
            "config error: iceberg.catalog_uri and iceberg.warehouse are needed "
            "(R2_CATALOG_URI, R2_WAREHOUSE)",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2)
    try:
        found = describe_tables(connect(s.iceberg, s.r2.admin_api_token), s.iceberg.namespace)
    except ConfigError as exc:
        err.print(f"config error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps([t.as_json() for t in found]))
        return
    if not found:
        out.print(f"no tables in namespace {s.iceberg.namespace}", markup=False, highlight=False)
    for info in found:
        for line in describe(info):
            out.print(line, markup=False, highlight=False)
