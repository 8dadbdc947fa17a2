"""Benchmarks of the stream sources: HTTP push (`bench --http`) and Redis Streams (`bench --redis`).

Each starts the local R2 (not timed), runs the worker as a real subprocess, drives it from a process
of its own, and checks every row in R2 at the end.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_files import ROOT, cpu_seconds, rows_in_r2, start_local_r2, worker_env
from http_load import event

DEFAULT_BATCH = 1_000_000  # batch.max_records


def _load(url: str, token: str, *extra: str) -> dict[str, object]:
    """The load generator, in a process of its own (scripts/benchmark/http_load.py: not the worker's code)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark" / "http_load.py"), url, token, *extra],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def bench_http(
    work: Path,
    requests: int,
    records: int,
    connections: int,
    max_records: int = 0,
    quiet: bool = False,
    cross_a_seal: bool = True,
    paced_rate: float = 0.0,
) -> dict[str, Any]:
    """The HTTP source: records/s accepted (202, durable) at full speed over `connections`
    connections, then p99 time-to-202 at half that rate (or `paced_rate` requests/s: the same load
    for two versions of the worker); then every row is checked in R2. Prints
    the table (to stderr if `quiet`) and returns the figures. With `cross_a_seal` the paced phase
    sends at least a batch's records, so that a batch is sealed, encoded and uploaded within it
    (the moment the p99 is about); else about ten seconds' worth."""
    port = _free_port()
    token = "bench-token"
    (work / "ingest.toml").write_text(
        f'[[sources]]\nkind = "http"\ntoken = "{token}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[spool]\ndir = "{work / "spool"}"\n[log]\nformat = "json"\nlevel = "warning"\n'
        + (f"[batch]\nmax_records = {max_records}\n" if max_records else "")
    )
    r2, env = start_local_r2(work)
    full_env = worker_env(env)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ingest", "--config", str(work / "ingest.toml"), "run"],
        cwd=work,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1/records"
    try:
        _wait_taking(url, token, worker)
        full = _load(
            url,
            token,
            "--requests",
            str(requests),
            "--records",
            str(records),
            "--connections",
            str(connections),
        )
        half_rate = paced_rate or float(full["records_per_s"]) / records / 2  # type: ignore[arg-type]
        paced_requests = max(20, int(half_rate * 10))  # about ten seconds at that rate
        if cross_a_seal:  # any run of a batch's records holds a batch boundary
            paced_requests = max(paced_requests, math.ceil(1.05 * (max_records or DEFAULT_BATCH) / records))
        paced = _load(
            url,
            token,
            "--requests",
            str(paced_requests),
            "--records",
            str(records),
            "--connections",
            str(connections),
            "--rate",
            f"{half_rate:.2f}",
            "--first-id",
            str(requests * records),
        )
        worker.send_signal(signal.SIGTERM)
        drained = time.perf_counter()
        _, err = worker.communicate(timeout=600)
        drained = time.perf_counter() - drained
        if worker.returncode != 0:
            raise SystemExit(f"worker exited {worker.returncode}:\n{err.decode()[-3000:]}")
        in_r2 = rows_in_r2(work, work / "ingest.toml", full_env)
    finally:
        if worker.poll() is None:
            worker.kill()
        r2.terminate()
        r2.wait(30)
    sent = int(full["records"]) + int(paced["records"])  # type: ignore[call-overload]
    out = sys.stderr if quiet else sys.stdout
    print(
        f"{'HTTP source (durable, 202)':<34}{'records/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'statuses':>22}",
        file=out,
    )
    for name, r in (
        (f"full speed, {connections} connections", full),
        (f"paced at {half_rate:.0f} req/s", paced),
    ):
        print(
            f"{name:<34}{r['records_per_s']:>12,}{r['p50_ms']:>9}{r['p99_ms']:>9}{json.dumps(r['statuses']):>22}",
            file=out,
        )
    print(f"\n{sent:,} records accepted, {in_r2:,} rows in R2 after the drain ({drained:.1f} s)", file=out)
    if in_r2 != sent:
        raise SystemExit("rows in R2 differ from the records accepted")
    return {
        "full_records_per_s": full["records_per_s"],
        "full_p99_ms": full["p99_ms"],
        "paced_requests_per_s": round(half_rate, 2),
        "paced_records_per_s": paced["records_per_s"],
        "paced_p50_ms": paced["p50_ms"],
        "paced_p99_ms": paced["p99_ms"],
        "records_accepted": sent,
        "rows_read_back": in_r2,
        "max_records": max_records or "default",
        "paced_requests": paced_requests,
    }


def bench_redis(work: Path, entries: int, max_records: int = 0, quiet: bool = False) -> dict[str, Any]:
    """The Redis Streams source: `entries` JSON entries pre-loaded, ingested end to end by one worker
    (`--once`), then again by two workers in one group; every entry checked in R2. Prints the table
    (to stderr if `quiet`) and returns the figures."""
    out = sys.stderr if quiet else sys.stdout
    figures: dict[str, Any] = {"entries": entries}
    import redis as redis_py

    port = _free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(work),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    r2, env = start_local_r2(work)
    client = redis_py.Redis(port=port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis_py.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.1)
        full_env = worker_env(env)
        print(
            f"{'Redis Streams source':<34}{'seconds':>9}{'entries/s':>12}{'peak RSS':>11}"
            f"{'CPU-s workers':>15}{'CPU-s Redis':>13}",
            file=out,
        )
        for workers in (1, 2):
            stream = f"events-{workers}"
            rng = random.Random(workers)
            for start in range(0, entries, 20_000):
                with client.pipeline(transaction=False) as pipe:
                    for i in range(start, min(start + 20_000, entries)):
                        pipe.xadd(stream, {"data": event(i, rng)})
                    pipe.execute()
            prefix = f"w{workers}/"
            config = work / f"redis-{workers}.toml"
            config.write_text(
                f'[[sources]]\nkind = "redis"\nurl = "redis://127.0.0.1:{port}/0"\nstream = "{stream}"\n'
                f'[output]\nprefix = "{prefix}"\n[spool]\ndir = "{work / "spool"}"\n'
                '[log]\nformat = "json"\nlevel = "warning"\n'
                + (f"[batch]\nmax_records = {max_records}\n" if max_records else "")
            )
            command = [sys.executable, "-m", "ingest", "--config", str(config), "run", "--once"]
            redis_cpu0 = cpu_seconds(server.pid)
            start = time.perf_counter()
            procs = [
                subprocess.Popen(
                    command,
                    cwd=work,
                    env=full_env | {"INGEST_WORKER_ID": f"bench-{n}"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for n in range(workers)
            ]
            peak = 0
            workers_cpu = 0.0
            for proc in procs:
                _, status, usage = os.wait4(proc.pid, 0)
                peak = max(peak, usage.ru_maxrss * 1024)
                workers_cpu += usage.ru_utime + usage.ru_stime
                if os.waitstatus_to_exitcode(status) != 0:
                    raise SystemExit(
                        f"worker failed: {proc.stderr.read().decode()[-3000:] if proc.stderr else ''}"
                    )
            seconds = time.perf_counter() - start
            redis_cpu = cpu_seconds(server.pid) - redis_cpu0
            rows = rows_in_r2(work, config, full_env)
            name = f"{workers} worker{'s' if workers > 1 else ''}, one group"
            line = (
                f"{name:<34}{seconds:>9.2f}{entries / seconds:>12,.0f}{peak / 2**20:>8.0f} MiB"
                f"{workers_cpu:>15.1f}{redis_cpu:>13.1f}"
            )
            print(line, file=out, flush=True)
            if rows != entries:
                raise SystemExit(f"{rows:,} rows in R2 for {entries:,} entries")
            figures[f"workers_{workers}"] = {
                "entries_per_s": round(entries / seconds),
                "peak_rss_mib": round(peak / 2**20),
                "cpu_s_workers": round(workers_cpu, 2),
                "cpu_s_redis": round(redis_cpu, 2),
                "rows_read_back": rows,
            }
    finally:
        r2.terminate()
        r2.wait(30)
        server.terminate()
        server.wait(30)
    figures["two_vs_one"] = round(
        figures["workers_2"]["entries_per_s"] / figures["workers_1"]["entries_per_s"], 3
    )
    return figures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_taking(url: str, token: str, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"worker exited: {worker.stderr.read().decode() if worker.stderr else ''}")
        try:
            request = urllib.request.Request(
                url,
                data=b"",
                method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"},
            )
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 202:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the http source did not start")
