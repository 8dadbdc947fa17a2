"""`ingest run`: the worker, as a daemon or a cron job (`--once`), and the end-of-run report."""

from __future__ import annotations

from typing import Annotated

import anyio
import typer

from ingest.cli.common import err, out, settings
from ingest.config import ConfigError


def run(
    once: Annotated[
        bool, typer.Option("--once", help="Take what the sources hold now, upload it all, exit (cron).")
    ] = False,
) -> None:
    """Watch the sources and upload Parquet batches to R2 (SIGTERM/SIGINT drains and exits 0)."""
    from ingest import worker
    from ingest.local.seaweed import SeaweedError
    from ingest.pipeline.spool import SpoolError
    from ingest.r2.credentials import CredentialError

    s = settings()
    try:
        bar = err if once and err.is_terminal else None  # on stderr, with the log lines
        result = anyio.run(worker.run, s, once, out, bar)
    except (ConfigError, CredentialError) as exc:
        err.print(f"config error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except SeaweedError as exc:
        err.print(f"local R2: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except (SpoolError, BaseExceptionGroup) as exc:
        spool_error = _first(exc, SpoolError)
        if spool_error is None:
            raise
        err.print(f"error: {spool_error}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    st = result.stats
    out.print(
        f"uploaded {st.records_uploaded:,} records in {_count(st.objects_uploaded, 'object')} "
        f"({st.bytes_uploaded / 1e6:.1f} MB) from {_count(st.units_acked, 'file')}",
        markup=False,
        highlight=False,
    )
    if once and out.is_terminal and st.first_key:  # where it went, and how to look at it
        where = st.first_key.rpartition("/")[0]
        for line in (
            f"objects in s3://{result.bucket}/{where}/ — list them: ingest ls --prefix {where}/",
            f"rows of the first one: ingest head {st.first_key}",
        ):
            out.print(line, markup=False, highlight=False)
    keys = st.dead_letter_keys
    if result.dead_letters or keys:
        where = f"s3://{result.bucket}/{keys[0]}" if keys else str(result.dead_letter_dir)
        more = f" (and {len(keys) - 1} more objects)" if len(keys) > 1 else ""
        out.print(
            f"dead letters: {result.dead_letters} records could not be read; source, line and reason "
            f"are in {where}{more}",
            markup=False,
            highlight=False,
        )
    if result.complete:
        return
    if st.failed_objects:
        where = str(st.failed_objects[0].path.parent)
        err.print(
            f"not uploaded: {st.failed_records:,} records in {_count(len(st.failed_objects), 'object')}, "
            f"kept in {where}",
            markup=False,
            highlight=False,
        )
    if result.pending_units:
        err.print(
            f"not acknowledged: {_count(len(result.pending_units), 'source unit')}; they are kept "
            "and taken again by the next run:",
            markup=False,
            highlight=False,
        )
        _list(result.pending_units)
    if result.unreadable:
        err.print(
            f"could not read {len(result.unreadable)} inputs; they are kept where they are and tried again "
            "on the next run:",
            markup=False,
            highlight=False,
        )
        _list(result.unreadable)
    if once:
        raise typer.Exit(1)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _list(items: dict[str, str], most: int = 20) -> None:
    """`where: why`, one per line, the first `most` of them."""
    for where, why in sorted(items.items())[:most]:
        err.print(f"  {where}: {why}", markup=False, highlight=False)
    if len(items) > most:
        err.print(f"  … and {len(items) - most} more", markup=False, highlight=False)


def _first(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` itself or the first `kind` inside it (task groups wrap what their tasks raise)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _first(inner, kind)) is not None:
                return found
    return None
