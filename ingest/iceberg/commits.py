"""Tables made on first use and evolved by name, and data files added to them exactly once.

Every snapshot the worker commits carries the batch ids of the objects it adds (`ingest.batch-ids` in
its summary). Before adding, the table's snapshots are read again: a batch already there (a commit whose
answer was lost, a worker that crashed after committing, a second replica) is not added twice. Two
writers committing to one table at once get the catalog's commit conflict; the loser refreshes the
table, checks again and retries with backoff, so no commit is lost.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from ingest.iceberg.schema import DoesNotFit, iceberg_schema
from ingest.logs import get_logger

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = get_logger("ingest.iceberg.commits")
BATCH_IDS = "ingest.batch-ids"  # space-separated, in the summary of every snapshot the worker commits
CONFLICT_ATTEMPTS = 20


@dataclass(frozen=True)
class DataFile:
    """An uploaded object to add: its full `s3://bucket/key` path and the batch id it carries."""

    path: str
    batch_id: str


class Tables:
    """One namespace's tables (blocking calls: run them in a thread)."""

    def __init__(self, catalog: Catalog, namespace: str, partition_by: str = "") -> None:
        self.catalog = catalog
        self.namespace = namespace
        self.partition_by = partition_by
        self._tables: dict[str, Table] = {}

    def table(self, name: str, schema: pa.Schema) -> Table:
        """The table `name`, created from `schema` if new (partitioned by day of `partition_by` when
        the schema has it), its schema evolved by name to take `schema`: new fields are added, and
        the promotions Iceberg allows (int → long, float → double) applied. Raises DoesNotFit when a
        field's type cannot become the table's."""
        from pyiceberg.exceptions import CommitFailedException, ValidationError

        wanted = iceberg_schema(schema)
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = self._load_or_create(f"{self.namespace}.{name}", wanted)
        for attempt in _retrying():
            with attempt:
                if _covers(table, wanted):
                    return table
                try:
                    with table.update_schema() as update:
                        update.union_by_name(wanted)
                except ValidationError as exc:
                    raise DoesNotFit(f"table {self.namespace}.{name}: {exc}") from None
                except CommitFailedException:
                    table.refresh()
                    raise
        return table

    def _load_or_create(self, identifier: str, schema: pa.Schema) -> Table:
        """The table; a new one is created with its partitioning in one commit (a table someone else
        made keeps the partitioning it has)."""
        from pyiceberg.exceptions import NoSuchTableError
        from pyiceberg.transforms import DayTransform

        try:
            return self.catalog.load_table(identifier)
        except NoSuchTableError:
            pass
        self.catalog.create_namespace_if_not_exists(self.namespace)
        field = self.partition_by
        by_day = field in schema.names and (
            pa.types.is_timestamp(schema.field(field).type) or pa.types.is_date(schema.field(field).type)
        )
        try:
            with self.catalog.create_table_transaction(identifier, schema=schema) as create:
                if by_day:
                    with create.update_spec() as spec:
                        spec.add_field(field, DayTransform(), f"{field}_day")
        except Exception as exc:
            # Another worker made it first: TableAlreadyExistsError, or (a catalog that applies the
            # staged updates to the table that now exists) a duplicate partition field.
            try:
                return self.catalog.load_table(identifier)
            except NoSuchTableError:
                raise exc from None
        return self.catalog.load_table(identifier)

    def preload(self, name: str) -> None:
        """Load table `name` if it exists (a new one is made by `table` with the first schema)."""
        from pyiceberg.exceptions import NoSuchTableError

        with contextlib.suppress(NoSuchTableError):
            self._tables[name] = self.catalog.load_table(f"{self.namespace}.{name}")

    def names(self) -> list[str]:
        """The namespace's tables."""
        return [ident[-1] for ident in self.catalog.list_tables(self.namespace)]

    def location(self, name: str) -> str:
        table = self._tables.get(name) or self.catalog.load_table(f"{self.namespace}.{name}")
        self._tables[name] = table
        return str(table.location())

    def committed(self, table: Table) -> set[str]:
        """Batch ids in the table's snapshots."""
        out: set[str] = set()
        for snapshot in table.snapshots():
            ids = snapshot.summary.additional_properties.get(BATCH_IDS) if snapshot.summary else None
            if ids:
                out.update(ids.split())
        return out

    def commit(self, name: str, files: list[DataFile], recovering: bool = False) -> list[DataFile]:
        """Add `files` to table `name` in one snapshot, leaving out those already committed; returns
        the files this call added. `recovering`: also leave out files the table already references
        (a batch whose snapshot was expired since), at the cost of reading its manifests."""
        from pyiceberg.exceptions import CommitFailedException

        table = self._tables.get(name) or self.catalog.load_table(f"{self.namespace}.{name}")
        self._tables[name] = table
        added: list[DataFile] = []
        for attempt in _retrying():
            with attempt:
                done = self.committed(table)
                todo = [f for f in files if f.batch_id not in done]
                if recovering and todo:
                    present = set(table.inspect.files().column("file_path").to_pylist())
                    todo = [f for f in todo if f.path not in present]
                if not todo:
                    return []
                try:
                    table.add_files(
                        [f.path for f in todo],
                        snapshot_properties={BATCH_IDS: " ".join(f.batch_id for f in todo)},
                        check_duplicate_files=False,
                    )
                except CommitFailedException:
                    log.info("iceberg commit conflict; retrying", table=name, files=len(todo))
                    table.refresh()
                    raise
                added = todo
        return added


def _retrying() -> Retrying:
    from pyiceberg.exceptions import CommitFailedException

    return Retrying(
        retry=retry_if_exception_type(CommitFailedException),
        stop=stop_after_attempt(CONFLICT_ATTEMPTS),
        wait=wait_random_exponential(multiplier=0.05, max=2.0),
        reraise=True,
    )


def _covers(table: Table, schema: pa.Schema) -> bool:
    """The table already has every field of `schema` with a type its values read as."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    have = schema_to_pyarrow(table.schema(), include_field_ids=False)
    for field in schema:
        if field.name not in have.names:
            return False
        if not _reads_as(field.type, have.field(field.name).type):
            return False
    return True


def _reads_as(data: pa.DataType, table: pa.DataType) -> bool:
    if data.equals(table):
        return True
    promotions: dict[Any, Any] = {pa.int32(): pa.int64(), pa.float32(): pa.float64()}
    if promotions.get(data) == table:
        return True
    if pa.types.is_large_string(table) and pa.types.is_string(data):
        return True
    # (nested types that differ: union_by_name decides, and is a no-op when nothing changes)
    return bool(pa.types.is_large_binary(table) and pa.types.is_binary(data))
