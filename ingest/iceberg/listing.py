"""What `ingest tables` shows: each table of the namespace, its rows and files, its last snapshots."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ingest.iceberg.commits import BATCH_IDS

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

LAST_SNAPSHOTS = 5


@dataclass
class SnapshotInfo:
    id: int
    at: str  # ISO 8601, UTC
    added_records: int
    batch_ids: list[str]


@dataclass
class TableInfo:
    name: str
    location: str
    rows: int
    data_files: int
    snapshots: int
    partitioned_by: list[str]
    last: list[SnapshotInfo] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def describe_tables(catalog: Catalog, namespace: str) -> list[TableInfo]:
    """Blocking (catalog calls): run it in a thread from async code."""
    from pyiceberg.exceptions import NoSuchNamespaceError

    try:
        identifiers = catalog.list_tables(namespace)
    except NoSuchNamespaceError:
        return []
    out: list[TableInfo] = []
    for identifier in sorted(identifiers):
        table = catalog.load_table(identifier)
        current = table.current_snapshot()
        summary = current.summary.additional_properties if current and current.summary else {}
        snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
        out.append(
            TableInfo(
                name=".".join(identifier),
                location=table.location(),
                rows=int(summary.get("total-records", 0)),
                data_files=int(summary.get("total-data-files", 0)),
                snapshots=len(snapshots),
                partitioned_by=[f.name for f in table.spec().fields],
                last=[_snapshot(s) for s in snapshots[-LAST_SNAPSHOTS:][::-1]],
            )
        )
    return out


def _snapshot(s: Any) -> SnapshotInfo:
    props = s.summary.additional_properties if s.summary else {}
    return SnapshotInfo(
        id=s.snapshot_id,
        at=datetime.fromtimestamp(s.timestamp_ms / 1000, UTC).isoformat(timespec="seconds"),
        added_records=int(props.get("added-records", 0)),
        batch_ids=props.get(BATCH_IDS, "").split(),
    )


def describe(info: TableInfo) -> list[str]:
    """Lines for a terminal."""
    parts = f", partitioned by {', '.join(info.partitioned_by)}" if info.partitioned_by else ""
    lines = [
        f"{info.name}: {info.rows:,} rows in {info.data_files:,} data files, "
        f"{info.snapshots} snapshots{parts}",
        f"  at {info.location}",
    ]
    for s in info.last:
        batches = f" (batches {', '.join(s.batch_ids)})" if s.batch_ids else ""
        lines.append(f"  {s.at} snapshot {s.id}: +{s.added_records:,} rows{batches}")
    return lines
