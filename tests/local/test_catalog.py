"""The local R2's Data Catalog: the official SDK manages it, PyIceberg uses it as it uses R2's (catalog URI,
warehouse, Cloudflare API token), the real SeaweedFS Iceberg catalog behind it keeps the tables."""

from __future__ import annotations

import io
import uuid
from typing import Any

import boto3
import cloudflare
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from pyiceberg.exceptions import ForbiddenError, NoSuchTableError, RESTError, UnauthorizedError

from tests.conftest import LocalR2, duck

# The SDK marks the r2-catalog paths deprecated (in favour of basin-catalog); both are served.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Literal names from Cloudflare's API docs (never imported from the product).
CATALOG_WRITE = "Workers R2 Data Catalog Write"
CATALOG_READ = "Workers R2 Data Catalog Read"
ITEM_WRITE = "Workers R2 Storage Bucket Item Write"


def _token(r2: LocalR2, catalog: str | None, bucket_write: bool = True) -> str:
    cf = r2.cf()
    groups = {g.name: g.id for g in cf.user.tokens.permission_groups.list()}
    policies: list[dict[str, Any]] = []
    if catalog:
        policies.append(
            {
                "effect": "allow",
                "resources": {f"com.cloudflare.api.account.{r2.account_id}": "*"},
                "permission_groups": [{"id": groups[catalog]}],
            }
        )
    if bucket_write:
        policies.append(
            {
                "effect": "allow",
                "resources": {f"com.cloudflare.edge.r2.bucket.{r2.account_id}_default_{r2.bucket}": "*"},
                "permission_groups": [{"id": groups[ITEM_WRITE]}],
            }
        )
    return str(cf.user.tokens.create(name=f"catalog-{uuid.uuid4().hex[:6]}", policies=policies).value)


def _vended_s3(table: Any) -> Any:
    """An S3 client with the credentials the catalog vended with the table."""
    props = table.io.properties
    return boto3.client(
        "s3",
        endpoint_url=props["s3.endpoint"],
        aws_access_key_id=props["s3.access-key-id"],
        aws_secret_access_key=props["s3.secret-access-key"],
        region_name="auto",
    )


def _put_parquet(table: Any, rows: pa.Table, name: str) -> str:
    """Write a data file under the table's location with the credentials the catalog vended."""
    s3 = _vended_s3(table)
    bucket, _, path = table.location().removeprefix("s3://").partition("/")
    buf = io.BytesIO()
    pq.write_table(rows, buf)
    key = f"{path}/data/2026/12/05/{name}"
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    return f"s3://{bucket}/{key}"


def test_pyiceberg_creates_commits_and_scans_a_table_with_the_catalog_token(local_r2: LocalR2) -> None:
    catalog = local_r2.catalog()
    namespace = f"ns_{uuid.uuid4().hex[:8]}"
    catalog.create_namespace(namespace)
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("at", pa.timestamp("us", tz="UTC"))])
    table = catalog.create_table(f"{namespace}.events", schema=schema)
    rows = pa.table(
        {"id": [1, 2, 3], "name": ["a", "é", "c"], "at": pa.array([0, 1, 2], pa.timestamp("us", tz="UTC"))}
    )
    path = _put_parquet(table, rows, "ingested_0001.parquet")
    table.add_files([path], snapshot_properties={"ingest.batch-ids": "batch-1"})

    again = local_r2.catalog().load_table(f"{namespace}.events")  # another client, through the catalog
    assert again.scan().to_arrow().sort_by("id").to_pylist() == rows.to_pylist()
    [snapshot] = again.snapshots()
    assert snapshot.summary["ingest.batch-ids"] == "batch-1"
    assert [t.file.file_path for t in again.scan().plan_files()] == [path]
    assert str(again.schema().find_field("at").field_type) == "timestamptz"
    # The data file itself opens in DuckDB too (fetched with the vended credentials).
    local = _fetch(again, path)
    assert duck(f"SELECT count(*) FROM read_parquet('{local}')") == [(3,)]


def _fetch(table: Any, path: str) -> str:
    with table.io.new_input(path).open() as f:
        data = f.read()
    out = f"/tmp/catalog-{uuid.uuid4().hex}.parquet"
    with open(out, "wb") as fh:
        fh.write(data)
    return out


def test_the_catalog_asks_for_a_cloudflare_token_with_data_catalog_permission(local_r2: LocalR2) -> None:
    with pytest.raises(UnauthorizedError):
        local_r2.catalog(token="not-a-token").list_namespaces()
    with pytest.raises(ForbiddenError, match=CATALOG_READ):
        local_r2.catalog(token=local_r2.api_token).list_namespaces()  # R2 storage only
    reader = local_r2.catalog(token=_token(local_r2, CATALOG_READ))
    assert isinstance(reader.list_namespaces(), list)  # reading: allowed
    with pytest.raises(ForbiddenError, match=CATALOG_WRITE):
        reader.create_namespace(f"ns_{uuid.uuid4().hex[:8]}")  # writing: refused
    with pytest.raises(ForbiddenError, match="no R2 storage permission"):
        local_r2.catalog(token=_token(local_r2, CATALOG_WRITE, bucket_write=False)).list_namespaces()


def test_vended_credentials_are_the_tokens_own_and_reach_only_its_bucket(local_r2: LocalR2) -> None:
    catalog = local_r2.catalog()
    namespace = f"ns_{uuid.uuid4().hex[:8]}"
    catalog.create_namespace(namespace)
    table = catalog.create_table(f"{namespace}.t", schema=pa.schema([("id", pa.int64())]))
    s3 = _vended_s3(table)
    local_r2.cf().r2.buckets.create(account_id=local_r2.account_id, name=f"other-{uuid.uuid4().hex[:8]}")
    others = [b.name for b in local_r2.cf().r2.buckets.list(account_id=local_r2.account_id).buckets or []]
    other = next(b for b in others if b and b.startswith("other-"))
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=other, Key="x", Body=b"x")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_the_sdk_manages_the_catalog_and_a_disabled_one_serves_nothing(local_r2: LocalR2) -> None:
    cf, account = local_r2.cf(), local_r2.account_id
    got = cf.r2_data_catalog.get(local_r2.bucket, account_id=account)
    assert got is not None and got.status == "active" and got.name == f"{account}_{local_r2.bucket}"
    listed = cf.r2_data_catalog.list(account_id=account)
    assert listed is not None and [w.bucket for w in listed.warehouses] == [local_r2.bucket]
    with pytest.raises(cloudflare.BadRequestError, match="catalog for its bucket"):
        cf.r2_data_catalog.enable("some-other-bucket", account_id=account)
    with pytest.raises(cloudflare.PermissionDeniedError):  # a bucket token may not manage catalogs
        local_r2.cf(local_r2.api_token).r2_data_catalog.disable(local_r2.bucket, account_id=account)

    cf.r2_data_catalog.disable(local_r2.bucket, account_id=account)
    try:
        after = cf.r2_data_catalog.get(local_r2.bucket, account_id=account)
        assert after is not None and after.status == "inactive"
        with pytest.raises(RESTError, match="not enabled"):
            local_r2.catalog().list_namespaces()
    finally:
        enabled = cf.r2_data_catalog.enable(local_r2.bucket, account_id=account)
    assert enabled is not None and enabled.id == got.id
    assert isinstance(local_r2.catalog().list_namespaces(), list)

    updated = cf.r2_data_catalog.maintenance_configs.update(
        local_r2.bucket, account_id=account, compaction={"state": "enabled", "target_size_mb": "256"}
    )
    assert updated is not None
    config = cf.r2_data_catalog.maintenance_configs.get(local_r2.bucket, account_id=account)
    assert config is not None and config.maintenance_config.compaction is not None
    assert config.maintenance_config.compaction.target_size_mb == "256"


def test_a_missing_table_is_the_iceberg_error_pyiceberg_knows(local_r2: LocalR2) -> None:
    with pytest.raises(NoSuchTableError):
        local_r2.catalog().load_table("nowhere.nothing")
