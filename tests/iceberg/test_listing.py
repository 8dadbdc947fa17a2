"""`ingest tables` against the local R2's catalog: what a table holds and which batches made it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from ingest.iceberg.commits import Tables
from tests.conftest import LocalR2
from tests.iceberg.conftest import _put, _rows


def _ingest(
    local_r2: LocalR2, tmp_path: Path, namespace: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ingest.toml").write_text(f'[iceberg]\nnamespace = "{namespace}"\n')
    base = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
    base |= {k: v for k, v in local_r2.env.items() if k.startswith(("R2_CATALOG", "R2_WAREHOUSE"))}
    return subprocess.run(
        [sys.executable, "-m", "ingest", "--config", str(tmp_path / "ingest.toml"), "tables", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_tables_lists_rows_files_and_the_batches_of_the_last_snapshots(
    tables: Tables,
    local_r2: LocalR2,
    tmp_path: Path,
) -> None:
    table = tables.table("events", _rows(range(0)).schema)
    a, b = (
        _put(table, _rows(range(0, 40)), "1970/01/01", 1),
        _put(table, _rows(range(40, 100)), "1970/01/01", 2),
    )
    tables.commit("events", [a])
    tables.commit("events", [b])
    tables.table("empty", pa.schema([("id", pa.int64())]))

    r = _ingest(local_r2, tmp_path, tables.namespace, "--json")
    assert r.returncode == 0, r.stderr
    by_name = {t["name"]: t for t in json.loads(r.stdout)}
    events = by_name[f"{tables.namespace}.events"]
    assert events["rows"] == 100 and events["data_files"] == 2 and events["snapshots"] == 2
    assert events["partitioned_by"] == ["at_day"]
    assert [s["batch_ids"] for s in events["last"]] == [[b.batch_id], [a.batch_id]]  # newest first
    assert [s["added_records"] for s in events["last"]] == [60, 40]
    assert by_name[f"{tables.namespace}.empty"]["rows"] == 0

    human = _ingest(local_r2, tmp_path, tables.namespace)
    assert human.returncode == 0, human.stderr
    assert (
        f"{tables.namespace}.events: 100 rows in 2 data files, 2 snapshots, partitioned by at_day"
        in human.stdout
    )
    assert f"+60 rows (batches {b.batch_id})" in human.stdout


def test_tables_with_a_token_the_catalog_refuses_is_one_line_and_exit_2(
    local_r2: LocalR2, tmp_path: Path
) -> None:
    r = _ingest(
        local_r2, tmp_path, "ingest", R2_CATALOG_TOKEN=local_r2.api_token
    )  # no Data Catalog permission
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "iceberg.token" in lines[0] and "Workers R2 Data Catalog" in lines[0]
    assert local_r2.api_token not in r.stderr  # the token itself is never shown
