"""`ingest run`: the worker, as a daemon or a cron job (`--once`), and the end-of-run report."""

from __future__ import annotations

import os
import platform
import sys
from enum import StrEnum
from typing import Annotated

import anyio
import typer

from ingest.cli.app import err, out, settings
from ingest.messages import count, one_line


class Only(StrEnum):
    stdin = "stdin"


class StreamFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


SWITCH_INTERVAL = 0.001  # seconds


def run(
    once: Annotated[
        bool, typer.Option("--once", help="Take what the sources hold now, upload it all, exit (cron).")
    ] = False,
    source: Annotated[
        Only | None,
        typer.Option("--source", help="stdin: read standard input to EOF instead of the configured sources."),
    ] = None,
    fmt: Annotated[
        StreamFormat, typer.Option("--format", help="With --source stdin: what standard input holds.")
    ] = StreamFormat.jsonl,
    table: Annotated[
        str | None, typer.Option("--table", help="With --source stdin: the table its records go to.")
    ] = None,
) -> None:
    """Watch the sources and upload Parquet batches to R2 (SIGTERM/SIGINT drains and exits 0)."""
    _memory_pool()
    sys.unraisablehook = _unraisable
    from ingest import worker
    from ingest.config import ConfigError, SourceConfig
    from ingest.cores import size_arrow_threads
    from ingest.local.seaweed import SeaweedError
    from ingest.pipeline.spool import SpoolError
    from ingest.r2.credentials import CredentialError
    from ingest.sources.base import SourceError

    s = settings()
    _fewer_collections()
    size_arrow_threads()  # (the worker's imports brought pyarrow)
    if source is None and (table is not None or fmt is not StreamFormat.jsonl):
        err.print("usage error: --format and --table go with --source stdin", markup=False, highlight=False)
        raise typer.Exit(2)
    if source is Only.stdin:
        if not once:
            err.print(
                "usage error: --source stdin reads to EOF and ends: add --once", markup=False, highlight=False
            )
            raise typer.Exit(2)
        try:
            only = SourceConfig(kind="stdin", format=fmt.value, table=table or "")
        except ValueError as exc:
            err.print(f"usage error: --table: {_first_error(exc)}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        s = s.model_copy(update={"sources": [only]})
    try:
        bar = err if once and err.is_terminal else None  # on stderr, with the log lines
        if any(src.kind == "http" for src in s.sources):
            # A thread wanting the GIL waits at most this long for another to hand it over (5 ms by
            # default): a request's parse, which takes it many times, no longer waits out an
            # encode's Python steps (HTTP p99 at half speed: 200 → 50-80 ms, measured). Not for the
            # other sources: the more frequent hand-overs cost throughput (see docs/performance.md).
            sys.setswitchinterval(SWITCH_INTERVAL)
        result = anyio.run(worker.run, s, once, out, bar)
    except (ConfigError, CredentialError) as exc:
        err.print(f"config error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except SeaweedError as exc:
        err.print(f"local R2: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except (SpoolError, SourceError, BaseExceptionGroup) as exc:
        config_error = _first(exc, ConfigError)  # raised inside a task group (a source's own check)
        if config_error is not None:
            err.print(f"config error: {config_error}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        stopped = _first(exc, SpoolError) or _first(exc, SourceError)
        if stopped is None:
            raise
        err.print(f"error: {stopped}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    st = result.stats
    out.print(
        f"uploaded {count(st.records_uploaded, 'record')} in {count(st.objects_uploaded, 'object')} "
        f"({st.bytes_uploaded / 1e6:.1f} MB) from {count(st.units_acked, result.unit_noun)}",
        markup=False,
        highlight=False,
    )
    if st.committed_tables:
        tables = ", ".join(sorted(st.committed_tables))
        out.print(
            f"committed {count(st.records_committed, 'record')} to Iceberg {tables} in "
            f"{count(st.snapshots, 'snapshot')} ({count(st.catalog_requests, 'catalog request')}): "
            "ingest tables",
            markup=False,
            highlight=False,
        )
    elif once and out.is_terminal and st.first_key:  # where it went, and how to look at it
        where = st.first_key.rpartition("/")[0]
        for line in (
            f"objects in s3://{result.bucket}/{where}/ — list them: ingest ls --prefix {where}/",
            f"rows of the first one: ingest head {st.first_key}",
        ):
            out.print(line, markup=False, highlight=False)
    keys = st.dead_letter_keys
    if result.dead_letters or keys:
        where = f"s3://{result.bucket}/{keys[0]}" if keys else str(result.dead_letter_dir)
        more = f" (and {count(len(keys) - 1, 'more object')})" if len(keys) > 1 else ""
        out.print(
            f"dead letters: {count(result.dead_letters, 'record')} could not be read; source, line and "
            f"reason are in {where}{more}",
            markup=False,
            highlight=False,
        )
    if result.complete:
        return
    if st.failed_objects:
        where = str(st.failed_objects[0].path.parent)
        err.print(
            f"not uploaded: {count(st.failed_records, 'record')} in "
            f"{count(len(st.failed_objects), 'object')}, kept in {where}",
            markup=False,
            highlight=False,
        )
    if result.pending_units:
        err.print(
            f"not acknowledged: {count(len(result.pending_units), 'source unit')}; they are kept "
            "and taken again by the next run:",
            markup=False,
            highlight=False,
        )
        _list(result.pending_units)
    for where, why in sorted(result.lost.items()):
        err.print(f"not ingested: {where} {why}", markup=False, highlight=False)
    if result.unreadable:
        err.print(
            f"could not read {count(len(result.unreadable), 'input')}; they are kept where they are and "
            "tried again on the next run:",
            markup=False,
            highlight=False,
        )
        _list(result.unreadable)
    if once:
        raise typer.Exit(1)


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


def _fewer_collections() -> None:
    """The data path allocates millions of short-lived objects (stream entries, rows of small
    requests): with Python's default thresholds a collection runs every 700 of them and walks every
    object the imports created. Those never become garbage (freeze them), and collections run far less
    often (the thresholds are set when `ingest.cli` is imported): measured on 1M Redis entries, 40 %
    less CPU."""
    import gc

    gc.freeze()


def _unraisable(hook: sys.UnraisableHookArgs) -> None:
    """An error Python can only ignore (raised inside a callback from C, e.g. pyarrow's handler of a
    ragged CSV row that is not UTF-8: the read then fails and says so): one log line, not a traceback
    quoting the input's bytes on the terminal."""
    from ingest.logs import get_logger

    what = one_line(f"{type(hook.exc_value).__name__}: {hook.exc_value}")
    get_logger("ingest").warning("ignored an error inside a callback", error=what)


def _memory_pool() -> None:
    """Arrow's default allocator here (mimalloc) gives freed pages back to the kernel at once, and the
    next block or batch faults them in again, each zeroed by the kernel: on the big-file bench that
    was 0.5 CPU-s per 5M records and 5 % of the wall time. Arrow's jemalloc keeps freed pages a
    second (its `dirty_decay_ms`), then returns them, so a daemon's RSS still falls when idle. Arrow
    reads the choice when pyarrow is imported, hence an environment variable, set before the worker's
    imports; one already set decides. Only where the wheels are known to include jemalloc (elsewhere
    Arrow would print a warning at every run)."""
    if sys.platform == "linux" and platform.machine() == "x86_64":
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")


def _first_error(exc: ValueError) -> str:
    """pydantic's first message, without its decoration."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(exc)
