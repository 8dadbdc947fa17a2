"""Shared by the Iceberg tests: a namespace of its own per test in the local R2's catalog, and data
files put under a table's location as the worker writes them."""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.config import IcebergConfig
from ingest.iceberg.catalog import connect
from ingest.iceberg.commits import DataFile, Tables
from tests.conftest import LocalR2

UTC_US = pa.timestamp("us", tz="UTC")


@pytest.fixture
def tables(local_r2: LocalR2) -> Tables:
    config = IcebergConfig(
        enabled=True,
        catalog_uri=local_r2.env["R2_CATALOG_URI"],
        warehouse=local_r2.env["R2_WAREHOUSE"],
        token=local_r2.env["R2_CATALOG_TOKEN"],
    )
    return Tables(connect(config), f"ns_{uuid.uuid4().hex[:8]}", partition_by="at")


def _put(table: Any, rows: pa.Table, day: str, n: int) -> DataFile:
    """An object under the table's location, dated as the worker writes it."""
    path = f"{table.location()}/data/{day}/ingested_{n:04d}.parquet"
    with table.io.new_output(path).create(overwrite=True) as out:
        pq.write_table(rows, out)
    return DataFile(path, f"batch-{uuid.uuid4().hex[:8]}")


def _rows(ids: range, day: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(list(ids), pa.int64()),
            "at": pa.array([day * 86_400_000_000 + i for i in ids], UTC_US),
            "name": [f"r{i}" for i in ids],
        }
    )
