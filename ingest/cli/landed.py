"""`ingest ls` and `ingest head`: what landed in R2, from Parquet footers read with ranged GETs."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import typer

from ingest.cli.app import err, out, r2_client, settings
from ingest.messages import count

if TYPE_CHECKING:
    from ingest.config import Settings

T = TypeVar("T")
_DATE = re.compile(r"(\d{4})[/-](\d{2})[/-](\d{2})")


def _run(s: Settings, work: Callable[[Any, str], Awaitable[T]]) -> T:
    """Run `work(client, bucket)`; a missing or non-Parquet key, or R2 failing, is one line on stderr
    and exit 1 (caught inside, so the local R2, when it was started, stops cleanly)."""
    from ingest import logs
    from ingest.commands.landed import ObjectProblem
    from ingest.r2.errors import describe

    async def main() -> T | str:
        async with r2_client(s) as (live, client):
            try:
                return await work(client, live.r2.bucket)
            except ObjectProblem as exc:
                return str(exc)
            except Exception as exc:  # R2 unreachable, access denied: one line, not a traceback
                return describe(exc)

    logs.configure(s.log.format, "warning")  # the answer is the output; progress chatter is not
    result = anyio.run(main)
    if isinstance(result, str):
        err.print(f"error: {result}", markup=False, highlight=False)
        raise typer.Exit(1)
    return result


def ls(
    day: Annotated[
        str | None, typer.Option("--date", help="Only this day's objects: YYYY/MM/DD (or YYYY-MM-DD).")
    ] = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="List under this key prefix (default: output.prefix).")
    ] = None,
    table: Annotated[
        str | None, typer.Option("--table", help="Only this table's objects (a key template with {table}).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of objects, for scripts.")] = False,
) -> None:
    """The output objects: key, size, rows (from each Parquet footer), time and batch id."""
    from ingest.commands.landed import listing
    from ingest.layout import DEFAULT_TABLE, LEDGER, errors_prefix, index_prefix, landing_prefix
    from ingest.pipeline.keys import KeyTemplate

    s = settings()
    where = s.output.prefix if prefix is None else prefix
    template = KeyTemplate(s.output.key_template, where)
    if table is not None and not template.per_table:
        err.print(
            "--table: output.key_template has no {table}, so keys do not name tables; list with --prefix",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2)
    if table is not None:
        where = template.table_prefix(table)
    if day is not None:
        m = _DATE.fullmatch(day)
        if m is None:
            err.print(f"--date: {day!r} is not YYYY/MM/DD", markup=False, highlight=False)
            raise typer.Exit(2)
        when = date(int(m[1]), int(m[2]), int(m[3]))
        where = template.list_prefix(when, table or DEFAULT_TABLE)
    own = s.output.prefix
    # not output objects: dead letters, uploads, the worker's index and ledgers
    internal = (errors_prefix(own), landing_prefix(own), index_prefix(own), own + LEDGER)
    # The index folders that mirror the listed prefix's folder (every entry is checked against the
    # listing, so a wider folder costs reads, never a wrong figure).
    index = index_prefix(own) + where.removeprefix(own).rpartition("/")[0] if where.startswith(own) else None
    found = _run(s, lambda client, bucket: listing(client, bucket, where, internal, index))
    if as_json:
        print(json.dumps([o.as_json() for o in found]))
        return
    rows = sum(o.rows or 0 for o in found)
    size = sum(o.size for o in found)
    for o in found:
        rows_of = f"{count(o.rows, 'row'):>17}" if o.rows is not None else f"  ({o.problem})"
        out.print(
            f"{o.modified:%Y-%m-%d %H:%M:%S}  {o.size:>12,} B {rows_of}  {o.key}  {o.batch or ''}".rstrip(),
            markup=False,
            highlight=False,
        )
    total = f"{count(len(found), 'object')}, {count(rows, 'row')}, {size / 1e6:.1f} MB under {where or '/'}"
    out.print(total, markup=False, highlight=False)


def head(
    key: Annotated[str, typer.Argument(help="The object's key (as `ingest ls` prints it).")],
    rows: Annotated[int, typer.Option("--rows", "-n", min=0, help="How many rows to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Schema and rows as one JSON object.")] = False,
) -> None:
    """The schema and first rows of an uploaded object (reads its footer and first row group only)."""
    from ingest.commands.landed import head as read_head

    s = settings()
    schema, table, total = _run(s, lambda client, bucket: read_head(client, bucket, key, rows))
    records = table.to_pylist()
    if as_json:
        fields = [{"name": f.name, "type": str(f.type)} for f in schema]
        print(json.dumps({"key": key, "rows": total, "schema": fields, "first": records}, default=str))
        return
    out.print(f"{key}: {count(total, 'row')}", markup=False, highlight=False)
    for f in schema:
        out.print(f"  {f.name}: {f.type}", markup=False, highlight=False)
    if records:
        from rich.table import Table

        shown = Table(*schema.names, box=None, show_edge=False, header_style="bold")
        for record in records:
            shown.add_row(*("" if v is None else str(v) for v in record.values()))
        out.print(shown)
