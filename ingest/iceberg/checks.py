"""What `ingest doctor` checks of the Iceberg settings: the catalog answers, the token may write there,
and the tables take what the worker writes (blocking: run in a thread)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from ingest.config import ConfigError, Settings
from ingest.iceberg.catalog import TOKEN_HELP, connect
from ingest.iceberg.schema import iceberg_type, widens

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog


@dataclass(frozen=True)
class Finding:
    ok: bool | None  # None: information only
    detail: str


def check(settings: Settings, explicit: pa.Schema | None) -> list[Finding]:
    """`explicit`: the schema file's fields (what the worker writes whatever the input says)."""
    config = settings.iceberg
    try:
        catalog = connect(config, settings.r2.admin_api_token)
    except ConfigError as exc:
        return [Finding(False, str(exc))]
    found = [Finding(True, f"catalog at {config.catalog_uri} answers, warehouse {config.warehouse}")]
    found.append(_may_write(catalog, config.namespace))
    try:
        names = [ident[-1] for ident in catalog.list_tables(config.namespace)]
    except Exception:  # NoSuchNamespaceError: made on first use
        names = []
    if config.table and config.table not in names:
        found.append(Finding(None, f"table {config.namespace}.{config.table}: made on first use"))
    for name in names if not config.table else [n for n in names if n == config.table]:
        found.append(_takes(catalog, f"{config.namespace}.{name}", explicit, settings.output.partition_by))
    return found


def _may_write(catalog: Catalog, namespace: str) -> Finding:
    """Make and drop a table of its own: the only proof that the token may commit there."""
    from pyiceberg.exceptions import ForbiddenError, RESTError

    probe = f"{namespace}.ingest_doctor_{uuid.uuid4().hex[:8]}"
    try:
        catalog.create_namespace_if_not_exists(namespace)
        catalog.create_table(probe, schema=pa.schema([pa.field("probe", pa.int64())]))
        catalog.drop_table(probe)
    except ForbiddenError as exc:
        return Finding(
            False, f"namespace {namespace}: the token may not write there ({exc}); use {TOKEN_HELP}"
        )
    except (RESTError, OSError) as exc:
        return Finding(False, f"namespace {namespace}: making a table failed: {type(exc).__name__}: {exc}")
    return Finding(True, f"namespace {namespace}: the token may make tables and commit")


def _either(table: pa.DataType, written: pa.DataType) -> bool:
    """The written type reads as the table's, or the table can evolve to it."""
    return widens(written, table) or widens(table, written)


def _takes(catalog: Catalog, identifier: str, explicit: pa.Schema | None, partition_by: str) -> Finding:
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    table = catalog.load_table(identifier)
    have = schema_to_pyarrow(table.schema(), include_field_ids=False)
    misfits = [
        f"{f.name} is {have.field(f.name).type} in the table, {iceberg_type(f.type)} in output.schema_file"
        for f in (explicit or [])
        if f.name in have.names and not _either(have.field(f.name).type, f.type)
    ]
    if misfits:
        return Finding(False, f"table {identifier}: {'; '.join(misfits)}; its values would be dead letters")
    if partition_by and partition_by in have.names:
        kind = have.field(partition_by).type
        if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
            return Finding(
                False, f"table {identifier}: output.partition_by {partition_by} is {kind}, not a time"
            )
    return Finding(True, f"table {identifier} takes what the worker writes ({len(have)} fields)")
