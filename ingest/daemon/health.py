"""Health and progress of a running worker: what the probes answer and what a run reports.

Kept apart from the pipeline so the HTTP server and the CLI can read them without importing the data
path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: the server and the CLI read health without importing the data path
    from ingest.pipeline.spool import SpooledObject


@dataclass
class Health:
    """Readiness for probes: false while any problem is open (store refusal, spool full, disk full),
    or while requests to the store have kept failing for `failure_seconds` (an outage or a wrong
    endpoint must not look healthy while objects pile up)."""

    problems: dict[str, str] = field(default_factory=dict)
    last_upload: float | None = None  # wall clock
    failure_seconds: float = 30.0
    failing_since: float | None = None  # monotonic; first failure since the last success
    last_failure: str = ""

    @property
    def ready(self) -> bool:
        return not self.open_problems

    @property
    def reason(self) -> str:
        return "; ".join(self.open_problems.values())

    @property
    def open_problems(self) -> dict[str, str]:
        out = dict(self.problems)
        if self.failing_since is not None:
            failing = time.monotonic() - self.failing_since
            if failing >= self.failure_seconds:
                out["store"] = f"requests to the store have failed for {failing:.0f}s: {self.last_failure}"
        return out

    def request_failed(self, reason: str) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.last_failure = reason

    def request_succeeded(self) -> None:
        self.failing_since = None

    def fail(self, reason: str, kind: str = "upload") -> None:
        self.problems[kind] = reason

    def clear(self, kind: str) -> None:
        self.problems.pop(kind, None)


@dataclass
class Stats:
    units_claimed: int = 0
    units_acked: int = 0
    records_read: int = 0
    records_uploaded: int = 0
    objects_uploaded: int = 0
    bytes_uploaded: int = 0
    first_key: str = ""  # the first data object uploaded in this run (for "look at it" hints)
    records_committed: int = 0  # in committed Iceberg snapshots
    committed_tables: set[str] = field(default_factory=set)
    snapshots: int = 0
    catalog_requests: int = 0
    dead_letter_keys: list[str] = field(default_factory=list)
    failed_objects: list[SpooledObject] = field(default_factory=list)

    @property
    def failed_records(self) -> int:
        return sum(o.records for o in self.failed_objects if o.kind == "data")
