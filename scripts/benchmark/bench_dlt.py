"""The peer comparison of `scripts/bench --dlt PYTHON`: dlt's Arrow path on the big-files input.

`PYTHON` is an interpreter with `dlt[parquet,filesystem,s3]` (a scratch venv: dlt is not a
dependency). dlt runs `dlt_pipeline.py` as its own process against the same local R2 as the worker;
its rows are counted back from the Parquet files it wrote there.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from bench_files import s3_client  # scripts/ is on the path

PIPELINE = Path(__file__).resolve().parent / "dlt_pipeline.py"


def dlt_arrow(work: Path, env: dict[str, str], inbox: Path, python: str, records: int) -> dict[str, Any]:
    """Best of 2 whole-process runs of dlt on `inbox`; raises if the rows in R2 differ."""
    seconds = []
    for run in range(2):
        name = f"dlt{run}"
        dlt_env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
        dlt_env |= {
            "DESTINATION__FILESYSTEM__BUCKET_URL": f"s3://{env['R2_BUCKET_NAME']}/{name}",
            "DESTINATION__FILESYSTEM__CREDENTIALS__AWS_ACCESS_KEY_ID": env["R2_ACCESS_KEY_ID"],
            "DESTINATION__FILESYSTEM__CREDENTIALS__AWS_SECRET_ACCESS_KEY": env["R2_SECRET_ACCESS_KEY"],
            "DESTINATION__FILESYSTEM__CREDENTIALS__ENDPOINT_URL": env["R2_ENDPOINT_URL"],
            "DESTINATION__FILESYSTEM__CREDENTIALS__REGION_NAME": "auto",
            "DATA_WRITER__FILE_MAX_ITEMS": "1000000",
            "DLT_DATA_DIR": str(work / f"{name}-data"),
            "DLT_PROJECT_DIR": str(work),
            "RUNTIME__LOG_LEVEL": "WARNING",
        }
        start = time.perf_counter()
        argv = [python, str(PIPELINE), str(inbox), name]
        done = subprocess.run(argv, env=dlt_env, capture_output=True, text=True, timeout=900)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"dlt failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        rows = _rows(env, f"{name}/")
        if rows != records:
            raise SystemExit(f"dlt wrote {rows} rows, not {records}")
        seconds.append(elapsed)
    return {"dlt_records_per_s": round(records / min(seconds))}


def _rows(env: dict[str, str], prefix: str) -> int:
    s3 = s3_client(env)
    rows = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["R2_BUCKET_NAME"], Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".parquet") and "/events/" in obj["Key"]:
                body = s3.get_object(Bucket=env["R2_BUCKET_NAME"], Key=obj["Key"])["Body"].read()
                rows += pq.ParquetFile(io.BytesIO(body)).metadata.num_rows
    return rows
