"""Run by the peer interpreter of `scripts/bench --peers PYTHON`: DuckDB's COPY to the local R2.

What a data engineer with JSON lines and an R2 bucket would run: `read_json` over the inbox, one COPY
to one Parquet object (zstd) through the httpfs extension, loaded from the PyPI package
`duckdb-ext-httpfs` (pinned to DuckDB's version: DuckDB cannot download it here). The caller sets
PEER_ENDPOINT, PEER_KEY_ID, PEER_SECRET and PEER_BUCKET and times the whole process.

    python peer_duckdb.py INBOX NAME
"""

import os
import sys
from pathlib import Path

import duckdb
import duckdb_ext  # type: ignore[import-not-found]  # the PyPI package duckdb-ext-httpfs

inbox, name = sys.argv[1], sys.argv[2]
version = duckdb.__version__
found = list(Path(next(iter(duckdb_ext.__path__))).glob(f"extensions/v{version}/*/httpfs.duckdb_extension"))
if not found:
    raise SystemExit(f"no httpfs for DuckDB {version}: pip install 'duckdb-ext-httpfs=={version}.*'")
endpoint = os.environ["PEER_ENDPOINT"]
con = duckdb.connect()
con.execute(f"LOAD '{found[0]}'")
con.execute(
    "CREATE SECRET r2 (TYPE s3, KEY_ID ?, SECRET ?, ENDPOINT ?, REGION 'auto', URL_STYLE 'path', USE_SSL ?)",
    [
        os.environ["PEER_KEY_ID"],
        os.environ["PEER_SECRET"],
        endpoint.split("://", 1)[-1],
        endpoint.startswith("https://"),
    ],
)
target = f"s3://{os.environ['PEER_BUCKET']}/{name}/events.parquet"
con.execute(
    f"COPY (SELECT * FROM read_json('{inbox}/*.jsonl')) TO '{target}' (FORMAT parquet, COMPRESSION zstd)"
)
