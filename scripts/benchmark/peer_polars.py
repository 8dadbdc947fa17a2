"""Run by the peer interpreter of `scripts/bench --peers PYTHON`: polars' `sink_parquet` to the local R2.

`scan_ndjson(file).sink_parquet('s3://…')`, one object per input file (zstd, polars' default), through
polars' own object store. The caller sets PEER_ENDPOINT, PEER_KEY_ID, PEER_SECRET and PEER_BUCKET and
times the whole process.

    python peer_polars.py INBOX NAME
"""

import os
import sys
from pathlib import Path

import polars as pl

inbox, name = sys.argv[1], sys.argv[2]
storage = {
    "aws_access_key_id": os.environ["PEER_KEY_ID"],
    "aws_secret_access_key": os.environ["PEER_SECRET"],
    "aws_endpoint_url": os.environ["PEER_ENDPOINT"],
    "aws_region": "auto",
    "aws_allow_http": "true",
}
for path in sorted(Path(inbox).glob("*.jsonl")):
    target = f"s3://{os.environ['PEER_BUCKET']}/{name}/{path.stem}.parquet"
    pl.scan_ndjson(path).sink_parquet(target, compression="zstd", storage_options=storage)
