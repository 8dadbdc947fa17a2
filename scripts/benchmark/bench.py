"""Benchmark: the worker next to yardsticks on the same data, in one run (see bench_files.py).

    bash scripts/bench [--records N] [--files F] [--small-files N] [--tiny] [--json] [--keep]
    bash scripts/bench --peers PYTHON          also DuckDB, polars and dlt (PYTHON: a venv with them)
    bash scripts/bench --http | --redis        the stream sources (bench_streams.py)
    bash scripts/bench --queue [--messages N]  the Cloudflare Queues source (bench_queue.py)

Prints one table: big files (limit A, limit AB, `ingest run --once`, the two ratios, peak RSS at 1×
and 5× the input, checked against the documented bound), many small files (files/s next to a
one-process pyarrow loop) and start-up times. `--json` prints the same figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_files import (
    Cost,
    best,
    copy_inbox,
    costed,
    generate,
    limit,
    rows_in_r2,
    rows_in_table,
    rss_bound_mib,
    run_once,
    small_loop,
    start_local_r2,
    timed,
    worker_env,
)
from bench_ls import listing
from bench_peers import compare, python_of
from bench_queue import bench_queue
from bench_streams import bench_http, bench_redis

MIB = 2**20


def say(text: str, quiet: bool) -> None:
    print(text, file=sys.stderr if quiet else sys.stdout, flush=True)


def worker_run(
    work: Path, env: dict[str, str], store: int, inbox: Path, records: int, name: str
) -> tuple[Cost, tuple[float, int, str]]:
    """One `ingest run --once` on a copy of `inbox`, costed; raises if the rows in R2 differ."""
    copy_inbox(inbox, work / name, 1)
    done = costed(lambda: run_once(work, env, work / name, name), store)
    assert rows_in_r2(work, work / f"{name}.toml", worker_env(env)) == records, "rows in R2 differ"
    return done


def big_files(
    work: Path, env: dict[str, str], store: int, records: int, files: int, quiet: bool
) -> dict[str, Any]:
    inbox = work / "big"
    nbytes = generate(inbox, records, files)
    paths = sorted(str(p) for p in inbox.iterdir())
    say(f"big files: {records:,} records in {files} files, {nbytes / 1e6:.0f} MB of JSON lines", quiet)
    limit_a = best(2, lambda: costed(lambda: limit(paths, None), store)[0], key=lambda c: c.wall)
    limit_ab = best(2, lambda: costed(lambda: limit(paths, env), store)[0], key=lambda c: c.wall)
    runs = iter(range(100))

    def e2e_run() -> tuple[Cost, tuple[float, int, str]]:
        return worker_run(work, env, store, inbox, records, f"big1-{next(runs)}")

    def iceberg_run() -> tuple[Cost, tuple[float, int, str]]:
        name = f"iceberg-{next(runs)}"
        copy_inbox(inbox, work / name, 1)
        before = rows_in_table(env)
        done = costed(lambda: run_once(work, env, work / name, name, iceberg=True), store)
        assert rows_in_table(env) - before == records, "rows added to the Iceberg table differ"
        return done

    # One table for every run, as a worker commits to its table day after day; a first run (of one
    # input file) makes it.
    first = work / "iceberg-first"
    first.mkdir()
    shutil.copyfile(paths[0], first / Path(paths[0]).name)
    run_once(work, env, first, "iceberg-first", iceberg=True)

    # Best of 2, as the yardsticks, alternating with [iceberg] on (same files, same store). The peak
    # RSS of the input is the highest of both runs: a run of five batches may or may not meet the
    # moment that holds the most (see README "Performance").
    e2e_runs, iceberg_runs = [], []
    for _ in range(2):
        e2e_runs.append(e2e_run())
        iceberg_runs.append(iceberg_run())
    ice, (_, _, ice_summary) = min(iceberg_runs, key=lambda run: run[0].wall)
    commits = re.search(r"in ([\d,]+) snapshots? \(([\d,]+) catalog requests?\)", ice_summary)
    snapshots, requests = (int(g.replace(",", "")) for g in commits.groups()) if commits else (0, 0)
    e2e, (_, _, summary) = min(e2e_runs, key=lambda run: run[0].wall)
    rss1 = max(rss for _, (_, rss, _) in e2e_runs)
    copy_inbox(inbox, work / "big-5x", 5)
    e2e5, rss5, _ = run_once(work, env, work / "big-5x", "big5")
    assert rows_in_r2(work, work / "big5.toml", worker_env(env)) == 5 * records, "rows in R2 differ (5×)"
    bound = rss_bound_mib(128)
    return {
        "records": records,
        "files": files,
        "input_mb": round(nbytes / 1e6, 1),
        "limit_a_records_per_s": round(records / limit_a.wall),
        "limit_ab_records_per_s": round(records / limit_ab.wall),
        "e2e_records_per_s": round(records / e2e.wall),
        "e2e_5x_records_per_s": round(5 * records / e2e5),
        "e2e_vs_limit_a": round(limit_a.wall / e2e.wall, 3),
        "e2e_vs_limit_ab": round(limit_ab.wall / e2e.wall, 3),
        "iceberg_records_per_s": round(records / ice.wall),
        "iceberg_vs_e2e": round(e2e.wall / ice.wall, 3),
        "iceberg_snapshots_per_million": round(snapshots * 1e6 / records, 1),
        "iceberg_catalog_requests_per_million": round(requests * 1e6 / records, 1),
        **ice.as_dict("iceberg"),
        **limit_a.as_dict("limit_a"),
        **limit_ab.as_dict("limit_ab"),
        **e2e.as_dict("e2e"),
        # How close each run came to its CPU floor (its CPU and the store's, spread over every core).
        "limit_ab_of_floor": round(limit_ab.floor / limit_ab.wall, 3),
        "e2e_of_floor": round(e2e.floor / e2e.wall, 3),
        "rss_1x_mib": round(rss1 / MIB),
        "rss_1x_runs_mib": [round(rss / MIB) for _, (_, rss, _) in e2e_runs],
        "rss_5x_mib": round(rss5 / MIB),
        "rss_5x_vs_1x": round(rss5 / rss1, 3),
        "rss_bound_mib": round(bound),
        "rss_within_bound": rss5 <= bound * MIB and rss1 <= bound * MIB,
        "summary": summary,
    }


def nest(inbox: Path, layout: str, folders: int = 100) -> None:
    """Spread the files of `inbox` over `folders` subdirectories: "subdirs" (one per producer,
    `producer-007/`) or "dated" (an hourly `YYYY/MM/DD/HH/` tree); "flat" leaves them at the root."""
    if layout == "flat":
        return
    start = datetime(2024, 8, 1, tzinfo=UTC)
    for i, f in enumerate(sorted(inbox.iterdir())):
        k = i % folders
        sub = f"producer-{k:03d}" if layout == "subdirs" else f"{start + timedelta(hours=k):%Y/%m/%d/%H}"
        (inbox / sub).mkdir(parents=True, exist_ok=True)
        f.rename(inbox / sub / f.name)


def small_files(
    work: Path, env: dict[str, str], count: int, per_file: int, quiet: bool, layout: str = "flat"
) -> dict[str, Any]:
    inbox = work / f"small-{layout}"
    generate(inbox, count * per_file, count, seed=7)
    nest(inbox, layout)
    say(f"small files ({layout}): {count:,} files × {per_file} records", quiet)
    files = sorted(p for p in inbox.rglob("*.jsonl"))
    loop = best(2, lambda: small_loop(files, work / "small-loop.parquet"))
    copy_inbox(inbox, work / f"small-run-{layout}", 1)
    seconds, rss, summary = run_once(work, env, work / f"small-run-{layout}", f"small-{layout}")
    config = work / f"small-{layout}.toml"
    assert rows_in_r2(work, config, worker_env(env)) == count * per_file, "rows in R2 differ"
    return {
        "layout": layout,
        "files": count,
        "records_per_file": per_file,
        "pyarrow_loop_files_per_s": round(count / loop),
        "e2e_files_per_s": round(count / seconds),
        "e2e_vs_pyarrow_loop": round(loop / seconds, 3),
        "rss_mib": round(rss / MIB),
        "summary": summary,
    }


def startup(work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Wall time of whole commands, best of 3 (a cold first run pays for the disk cache)."""
    ingest = [sys.executable, "-m", "ingest"]
    wenv = worker_env(env)

    def helps() -> float:
        return timed([*ingest, "--help"], wenv, work)[0]

    def cors_check() -> float:
        # Exit 1 (no policy on the bench bucket) is an answer too: only the time matters here.
        argv = [*ingest, "cors", "check", "--origin", "https://app.example.com"]
        from time import perf_counter

        start = perf_counter()
        done = subprocess.run(argv, cwd=work, env=wenv, capture_output=True, text=True, timeout=120)
        if done.returncode not in (0, 1) or "error" in done.stderr.lower():
            raise SystemExit(f"cors check failed:\n{done.stderr[-2000:]}")
        return perf_counter() - start

    runs = iter(range(100))

    def once_10() -> float:
        # A file written a while ago (older than settle_seconds): start-up is measured, not the wait
        # that makes sure a writer has finished.
        inbox = work / f"ten-{next(runs)}"
        generate(inbox, 10, 1, seed=3)
        past = time.time() - 10
        for f in inbox.iterdir():
            os.utime(f, (past, past))
        return run_once(work, env, inbox, inbox.name)[0]

    return {
        "help_s": round(best(3, helps), 3),
        "cors_check_s": round(best(3, cors_check), 3),
        "run_once_10_records_s": round(best(3, once_10), 3),
    }


PEER_NAMES = {
    "duckdb": "DuckDB COPY TO 's3://' (httpfs)",
    "polars": "polars sink_parquet('s3://')",
    "dlt": "dlt, Arrow path",
    "ingest": "ingest run --once",
}


def table(result: dict[str, Any]) -> str:
    rows = big_rows(result["big"]) if "big" in result else []
    rows += peer_rows(result["peers"]) if "peers" in result else []
    for layout in ("small", "small_subdirs", "small_dated"):
        rows += small_rows(result[layout]) if layout in result else []
    rows += startup_rows(result["startup"]) if "startup" in result else []
    rows += ls_rows(result["ls"]) if "ls" in result else []
    lines = [f"{'':<40}{'figure':>20}{'peak RSS / CPU (own + store)':>30}"]
    lines += [f"{name:<40}{figure:>20}{rss:>30}" for name, figure, rss in rows]
    return "\n".join(lines)


def big_rows(big: dict[str, Any]) -> list[tuple[str, str, str]]:

    def cpu(name: str) -> str:
        return f"{big[name + '_cpu_s']:.1f} + {big[name + '_store_cpu_s']:.1f} CPU-s"

    rows = [
        ("big files", "", ""),
        ("  limit A (pyarrow, 2 processes)", f"{big['limit_a_records_per_s']:,} rec/s", cpu("limit_a")),
        ("  limit AB (+ boto3 PUT)", f"{big['limit_ab_records_per_s']:,} rec/s", cpu("limit_ab")),
        ("  ingest run --once", f"{big['e2e_records_per_s']:,} rec/s", cpu("e2e")),
        ("  ingest run --once, peak RSS", "", f"{big['rss_1x_mib']} MiB"),
        (
            "  ingest run --once, 5× input",
            f"{big['e2e_5x_records_per_s']:,} rec/s",
            f"{big['rss_5x_mib']} MiB",
        ),
        ("  ingest run --once, [iceberg] on", f"{big['iceberg_records_per_s']:,} rec/s", cpu("iceberg")),
        (
            "  snapshots, catalog requests / 1M",
            f"{big['iceberg_snapshots_per_million']:g}, {big['iceberg_catalog_requests_per_million']:g}",
            "",
        ),
        ("  iceberg / e2e", f"{big['iceberg_vs_e2e']:.2f}", ""),
        ("  e2e / limit AB", f"{big['e2e_vs_limit_ab']:.2f}", ""),
        ("  e2e / limit A", f"{big['e2e_vs_limit_a']:.2f}", ""),
        ("  peak RSS 5× / 1×", f"{big['rss_5x_vs_1x']:.2f}", f"bound {big['rss_bound_mib']} MiB"),
        ("  CPU floor / wall: limit AB", f"{big['limit_ab_of_floor']:.2f}", ""),
        ("  CPU floor / wall: e2e", f"{big['e2e_of_floor']:.2f}", ""),
    ]
    return rows


def peer_rows(peers: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [("peers (same files and store, alternating)", "", "")]
    for name in [*peers["peers"], "ingest"]:
        p = peers[name]
        cost = f"{p['cpu_s']:.1f} + {p['store_cpu_s']:.1f} CPU-s"
        rows.append((f"  {PEER_NAMES[name]}", f"{p['records_per_s']:,} rec/s", cost))
    for name in peers["peers"]:
        p = peers[name]
        ratio = f"{p['ingest_speed_ratio']:.2f}"
        rows.append((f"  ingest / {name}: speed, CPU", ratio, f"CPU/record {p['ingest_cpu_ratio']:.2f}"))
    return rows


LAYOUTS = {"flat": "", "subdirs": ", in 100 subfolders", "dated": ", in a YYYY/MM/DD/HH tree"}


def small_rows(small: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (f"small files{LAYOUTS[small['layout']]}", "", ""),
        ("  pyarrow loop (1 process)", f"{small['pyarrow_loop_files_per_s']:,} files/s", ""),
        ("  ingest run --once", f"{small['e2e_files_per_s']:,} files/s", f"{small['rss_mib']} MiB"),
        ("  e2e / pyarrow loop", f"{small['e2e_vs_pyarrow_loop']:.2f}", ""),
    ]


def ls_rows(ls: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (f"ingest ls, {ls['objects']:,} objects (best of 3)", "", ""),
        ("  from the worker's index", f"{ls['ls_indexed_s']:.2f} s", f"{ls['index_objects']} index objects"),
        ("  from every footer (index moved away)", f"{ls['ls_footers_s']:.2f} s", ""),
        (
            "  from the index of one run per object (cron)",
            f"{ls['ls_cron_s']:.2f} s",
            f"{ls['cron_index_objects']} index objects",
        ),
        ("  ingest head, one object", f"{ls['head_s']:.2f} s", ""),
    ]


def startup_rows(start: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        ("start-up (wall, best of 3)", "", ""),
        ("  ingest --help", f"{start['help_s']:.2f} s", ""),
        ("  ingest cors check", f"{start['cors_check_s']:.2f} s", ""),
        ("  run --once, 10 records", f"{start['run_once_10_records_s']:.2f} s", ""),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=5_000_000, help="big files: records (1×)")
    ap.add_argument("--files", type=int, default=20, help="big files: files")
    ap.add_argument("--small-files", type=int, default=20_000, help="small files: files")
    ap.add_argument("--small-records", type=int, default=10, help="small files: records per file")
    ap.add_argument(
        "--only",
        default="big,small,startup,ls",
        help="file scenarios, comma-separated: big,small (all three layouts),flat,subdirs,dated,startup,ls",
    )
    ap.add_argument("--ls-objects", type=int, default=5_000, help="ls: objects to list")
    ap.add_argument("--tiny", action="store_true", help="a quick run on tiny input (the test suite's)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--http", action="store_true", help="benchmark the HTTP source instead")
    ap.add_argument("--requests", type=int, default=400, help="--http: requests at full speed")
    ap.add_argument("--per-request", type=int, default=1000, help="--http: records per request")
    ap.add_argument("--connections", type=int, default=16, help="--http: connections")
    ap.add_argument(
        "--paced-rate", type=float, default=0.0, help="--http: paced requests/s (default: half of full speed)"
    )
    ap.add_argument(
        "--peers",
        "--dlt",
        metavar="PYTHON",
        default="",
        help="also time DuckDB, polars and dlt (PYTHON: a venv with them; - this one; auto: .venv-peers)",
    )
    ap.add_argument("--redis", action="store_true", help="benchmark the Redis Streams source instead")
    ap.add_argument("--queue", action="store_true", help="benchmark the Cloudflare Queues source instead")
    ap.add_argument("--messages", type=int, default=200_000, help="--queue: 1 KB messages pre-loaded")
    ap.add_argument("--entries", type=int, default=1_000_000, help="--redis: entries pre-loaded")
    ap.add_argument(
        "--max-records", type=int, default=0, help="--http, --redis: batch.max_records (0: default)"
    )
    args = ap.parse_args()
    if args.tiny:
        args.records, args.files, args.small_files, args.messages = 20_000, 4, 200, 2_000
        args.ls_objects, args.entries, args.requests, args.per_request = 100, 20_000, 40, 200

    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        if args.redis:
            figures = bench_redis(work, args.entries, args.max_records, args.json)
            if args.json:
                print(json.dumps({"redis": figures}, indent=2))
            return
        if args.queue:
            figures = bench_queue(work, args.messages, args.json)
            if args.json:
                print(json.dumps({"queue": figures}, indent=2))
            return
        if args.http:
            figures = bench_http(
                work,
                args.requests,
                args.per_request,
                args.connections,
                args.max_records,
                args.json,
                cross_a_seal=not args.tiny,
                paced_rate=args.paced_rate,
            )
            if args.json:
                print(json.dumps({"http": figures}, indent=2))
            return
        r2, env = start_local_r2(work)
        try:
            only = set(args.only.split(","))
            result: dict[str, Any] = {}
            if "big" in only:
                result["big"] = big_files(work, env, r2.pid, args.records, args.files, args.json)
            if args.peers:
                if not (work / "big").exists():
                    generate(work / "big", args.records, args.files)
                runs = iter(range(100))

                def ours() -> Cost:
                    return worker_run(work, env, r2.pid, work / "big", args.records, f"peer-{next(runs)}")[0]

                result["peers"] = compare(
                    work,
                    env,
                    r2.pid,
                    work / "big",
                    python_of(args.peers, lambda text: say(text, args.json)),
                    args.records,
                    ours,
                    lambda text: say(text, args.json),
                )
            for layout in ("flat", "subdirs", "dated"):
                if "small" in only or layout in only:
                    small = small_files(work, env, args.small_files, args.small_records, args.json, layout)
                    result["small" if layout == "flat" else f"small_{layout}"] = small
            if "startup" in only:
                result["startup"] = startup(work, env)
            if "ls" in only:
                say(f"ls: {args.ls_objects:,} objects", args.json)
                result["ls"] = listing(work, env, args.ls_objects)
        finally:
            r2.terminate()
            r2.wait(30)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print("\n" + table(result))
            print("\n" + "\n".join(r["summary"] for k, r in result.items() if "summary" in r))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
