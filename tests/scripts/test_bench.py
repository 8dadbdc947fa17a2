"""`scripts/bench` keeps working: run on a tiny input, every figure present. Not a timed test: the
figures are not judged here (the machine is shared), only that each scenario ran and its rows are in
R2 (the benchmark itself fails when the rows read back differ from the rows generated)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> dict[str, Any]:
    """`bench.py --tiny --json ARGS`, without this environment's R2 settings: its figures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark" / "bench.py"), *args, "--tiny", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow  # a benchmark, if a tiny one: `bash scripts/test -m slow tests/scripts`
def test_bench_runs_every_scenario_on_a_tiny_input() -> None:
    result = _bench()
    big, start = result["big"], result["startup"]
    assert big["records"] == 20_000 and "20,000 records" in big["summary"]
    for name in ("limit_a_records_per_s", "limit_ab_records_per_s", "e2e_records_per_s", "rss_1x_mib"):
        assert big[name] > 0, name
    assert big["e2e_vs_limit_ab"] > 0 and big["e2e_vs_limit_a"] > 0
    assert big["rss_within_bound"], big
    # [iceberg] on: every row scanned back through the catalog (the bench checks), its cost counted.
    assert big["iceberg_records_per_s"] > 0 and big["iceberg_vs_e2e"] > 0, big
    assert big["iceberg_snapshots_per_million"] > 0 and big["iceberg_catalog_requests_per_million"] > 0, big
    assert len(big["rss_1x_runs_mib"]) == 2 and big["rss_1x_mib"] == max(big["rss_1x_runs_mib"]), big
    # CPU accounting: the worker's and the pool's CPU are seen, and no run used more CPU than its
    # wall time on every core (a double count or a missed process would break one or the other).
    assert big["e2e_cpu_s"] > 0 and big["limit_a_cpu_s"] > 0 and big["limit_ab_cpu_s"] > 0
    assert big["e2e_store_cpu_s"] >= 0 and big["limit_ab_store_cpu_s"] >= 0
    assert 0 < big["e2e_of_floor"] <= 1.05 and 0 < big["limit_ab_of_floor"] <= 1.05, big
    for layout in ("small", "small_subdirs", "small_dated"):  # flat, in 100 folders, in a dated tree
        small = result[layout]
        assert small["files"] == 200 and "from 200 files" in small["summary"], layout
        assert small["e2e_files_per_s"] > 0 and small["pyarrow_loop_files_per_s"] > 0, layout
        assert small["e2e_vs_pyarrow_loop"] > 0, layout
    assert all(start[k] > 0 for k in ("help_s", "cors_check_s", "run_once_10_records_s"))
    # `ingest ls` over the worker's objects, from its index, from every footer and from the index of
    # one run per object (the bench fails unless each reports every object and every row it
    # uploaded); `ingest head` beside them. 100 runs' index writes leave fewer than 16 objects.
    ls = result["ls"]
    assert ls["objects"] == 100 and ls["index_objects"] >= 1, ls
    assert ls["ls_indexed_s"] > 0 and ls["ls_footers_s"] > 0 and ls["head_s"] > 0, ls
    assert ls["ls_cron_s"] > 0 and 1 <= ls["cron_index_objects"] < 16, ls


@pytest.mark.slow
def test_bench_peers_run_on_a_tiny_input() -> None:
    """DuckDB, polars and dlt beside the worker (a scratch venv, `--peers auto`), each run's rows
    counted back from R2 by the bench."""
    peers = _bench("--peers", "auto", "--only", "none")["peers"]
    assert peers["peers"] == ["duckdb", "polars", "dlt"], peers
    for name in ("duckdb", "polars", "dlt", "ingest"):
        p = peers[name]
        assert p["rows_read_back"] == 20_000 and p["records_per_s"] > 0 and p["cpu_s"] > 0, (name, p)
        assert p["ingest_speed_ratio"] > 0 and p["ingest_cpu_ratio"] > 0, (name, p)


@pytest.mark.slow
def test_bench_http_and_redis_run_on_a_tiny_input() -> None:
    http = _bench("--http")["http"]
    assert http["rows_read_back"] == http["records_accepted"] > 0, http
    assert http["full_records_per_s"] > 0 and http["paced_p99_ms"] > 0 and http["paced_p50_ms"] > 0, http
    redis = _bench("--redis")["redis"]
    assert redis["entries"] == 20_000, redis
    for workers in ("workers_1", "workers_2"):
        assert redis[workers]["rows_read_back"] == 20_000 and redis[workers]["entries_per_s"] > 0, redis
        assert redis[workers]["cpu_s_workers"] > 0 and redis[workers]["cpu_s_redis"] > 0, redis
    assert redis["two_vs_one"] > 0, redis


@pytest.mark.slow
def test_bench_queue_runs_on_a_tiny_input() -> None:
    queue = _bench("--queue")["queue"]
    assert queue["messages"] == 2_000  # and every row was read back (the bench fails otherwise)
    assert queue["records_per_s"] > 0 and queue["yardstick_records_per_s"] > 0 and queue["vs_yardstick"] > 0
    assert queue["pulls_per_million"] >= 10_000 and queue["acks_per_million"] >= 10_000  # ≤ 100 per call
