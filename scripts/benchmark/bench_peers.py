"""The peer comparison of `scripts/bench --peers PYTHON`: the tools a user could pick instead.

On the big-files input and the same local R2, whole processes of another interpreter (PYTHON, a
scratch venv: none of these is a dependency of ingest), each a peer's fastest plain use:
- DuckDB: `COPY (SELECT * FROM read_json(...)) TO 's3://…'` through httpfs (`peer_duckdb.py`);
- polars: `scan_ndjson(file).sink_parquet('s3://…')`, one object per file (`peer_polars.py`);
- dlt: its Arrow path, the filesystem destination (`peer_dlt.py`).
A peer whose package PYTHON lacks is left out and said. Rounds alternate the peers and the worker's
`ingest run --once` (the machine is shared: noise falls on all alike); each figure is the best of its
runs, with the CPU-seconds of that run (its process tree, and the store's meanwhile). Every run's rows
are counted back from the Parquet footers it wrote in R2; a difference ends the benchmark.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from bench_files import Cost, costed, s3_client  # scripts/ is on the path

HERE = Path(__file__).resolve().parent
# name: (module PYTHON must have, script, pip line to say when it lacks it)
PEERS = {
    "duckdb": ("duckdb_ext", "peer_duckdb.py", "duckdb==1.4.4 duckdb-ext-httpfs==1.4.4.20260205"),
    "polars": ("polars", "peer_polars.py", "polars"),
    "dlt": ("dlt", "peer_dlt.py", "dlt[parquet,filesystem,s3]"),
}


def available(python: str, say: Callable[[str], None]) -> list[str]:
    """The peers PYTHON can run; the others are said, with what to install."""
    found = []
    for name, (module, _, pip) in PEERS.items():
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=120)
        if probe.returncode == 0:
            found.append(name)
        else:
            say(f"peers: {name} left out ({python} -m pip install '{pip}')")
    return found


def _env(peer: str, env: dict[str, str], work: Path, name: str) -> dict[str, str]:
    """The peer's environment: the local R2's address and keys in the peer's own spelling."""
    own = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_", "PEER_"))}
    own |= {
        "PEER_ENDPOINT": env["R2_ENDPOINT_URL"],
        "PEER_KEY_ID": env["R2_ACCESS_KEY_ID"],
        "PEER_SECRET": env["R2_SECRET_ACCESS_KEY"],
        "PEER_BUCKET": env["R2_BUCKET_NAME"],
    }
    if peer == "dlt":
        own |= {
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
    return own


def _run(peer: str, python: str, work: Path, env: dict[str, str], inbox: Path, name: str) -> None:
    script = HERE / PEERS[peer][1]
    done = subprocess.run(
        [python, str(script), str(inbox), name],
        env=_env(peer, env, work, name),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"{peer} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def rows_under(env: dict[str, str], prefix: str) -> int:
    """Rows in the Parquet objects under `prefix` (dlt's own state files, outside its table, left out)."""
    s3 = s3_client(env)
    rows = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["R2_BUCKET_NAME"], Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if not key.endswith(".parquet") or "/_dlt" in key:
                continue
            body = s3.get_object(Bucket=env["R2_BUCKET_NAME"], Key=key)["Body"].read()
            rows += pq.ParquetFile(io.BytesIO(body)).metadata.num_rows
    return rows


def compare(
    work: Path,
    env: dict[str, str],
    store: int,
    inbox: Path,
    python: str,
    records: int,
    worker: Callable[[], Cost],
    say: Callable[[str], None],
    rounds: int = 2,
) -> dict[str, Any]:
    """Best of `rounds` for each available peer and for the worker, alternating; their figures and
    the worker's speed over each peer's (above 1: the worker is faster)."""
    peers = available(python, say)
    costs: dict[str, list[Cost]] = {name: [] for name in [*peers, "ingest"]}
    for r in range(rounds):
        for peer in peers:
            name = f"{peer}{r}"
            say(f"peers: {peer}, round {r + 1}")
            cost, _ = costed(lambda p=peer, n=name: _run(p, python, work, env, inbox, n), store)  # type: ignore[misc]
            rows = rows_under(env, f"{name}/")
            if rows != records:
                raise SystemExit(f"{peer} wrote {rows} rows to R2, not {records}")
            costs[peer].append(cost)
        say(f"peers: ingest run --once, round {r + 1}")
        costs["ingest"].append(worker())
    best = {name: min(runs, key=lambda c: c.wall) for name, runs in costs.items()}
    ours = best["ingest"]
    result: dict[str, Any] = {"python": python, "peers": peers}
    for name, cost in best.items():
        result[name] = {
            "records_per_s": round(records / cost.wall),
            "cpu_s": round(cost.cpu, 2),
            "store_cpu_s": round(cost.store_cpu, 2),
            "cpu_us_per_record": round(cost.cpu * 1e6 / records, 3),
            "rows_read_back": records,
            # this project's speed over theirs, and its CPU per record over theirs
            "ingest_speed_ratio": round(cost.wall / ours.wall, 3),
            "ingest_cpu_ratio": round(ours.cpu / cost.cpu, 3) if cost.cpu else None,
        }
    return result


# `--peers auto`: a scratch venv with these, made once (the versions the docs' figures were measured with)
PINNED = [
    "duckdb==1.4.4",
    "duckdb-ext-httpfs==1.4.4.20260205",  # DuckDB cannot download httpfs here; pinned to DuckDB's version
    "polars==2.1.0",
    "dlt[parquet,filesystem,s3]==1.31.0",
]
AUTO_VENV = HERE.parents[1] / ".venv-peers"


def python_of(path: str, say: Callable[[str], None]) -> str:
    """PYTHON as given; this interpreter for `-`; for `auto`, the scratch venv `.venv-peers` (made
    and filled with PINNED the first time)."""
    if path == "-":
        return sys.executable
    if path != "auto":
        return path
    python = AUTO_VENV / "bin" / "python"
    if not python.exists():
        say(f"peers: making {AUTO_VENV} with {', '.join(PINNED)}")
        subprocess.run([sys.executable, "-m", "venv", str(AUTO_VENV)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PINNED], check=True, timeout=1800)
    return str(python)
