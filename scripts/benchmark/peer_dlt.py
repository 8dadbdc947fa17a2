"""Run by the peer interpreter of `scripts/bench --peers PYTHON` (dlt is not a dependency of ingest).

dlt's fastest path on the benchmark's files: one Arrow table per file (pyarrow `read_json`), the
filesystem destination writing Parquet to the local R2 through s3fs, in files of 1M rows like the
worker's objects (dlt's default, one file per table, uploaded 0.7 s slower: measured). The caller
sets the destination and credentials in dlt's environment variables and times the whole process.

    python peer_dlt.py INBOX NAME
"""

import glob
import sys
from collections.abc import Iterator

import dlt
import pyarrow as pa
import pyarrow.json as pj

FILES = sorted(glob.glob(sys.argv[1] + "/*.jsonl"))


@dlt.resource(name="events", write_disposition="append")
def events() -> Iterator[pa.Table]:
    for path in FILES:
        yield pj.read_json(path)


pipeline = dlt.pipeline(pipeline_name=sys.argv[2], destination="filesystem", dataset_name=sys.argv[2])
info = pipeline.run(events(), loader_file_format="parquet")
if info.has_failed_jobs:
    raise SystemExit(f"dlt: failed load jobs: {info}")
