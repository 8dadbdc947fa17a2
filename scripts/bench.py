"""Benchmark: generate JSON-lines events, ingest them with `ingest run --once`, compare with raw pyarrow.

Run through `bash scripts/bench`. The local R2 is started first and not timed; the ingest run is a
real subprocess, and its peak RSS comes from wait4() on exactly that process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.json as pj
import pyarrow.parquet as pq
from http_load import event  # scripts/ is on the path: the same events as the HTTP load generator

ROOT = Path(__file__).resolve().parent.parent


def generate(inbox: Path, records: int, files: int) -> int:
    """~200-byte events, like the design's measurements. Returns total bytes."""
    rng = random.Random(42)
    per_file = records // files
    total = 0
    for f in range(files):
        start = f * per_file
        data = ("\n".join(event(i, rng) for i in range(start, start + per_file)) + "\n").encode()
        (inbox / f"events-{f:04d}.jsonl").write_bytes(data)
        total += len(data)
    return total


def rows_in_r2(work: Path, config: Path, env: dict[str, str]) -> int:
    """Rows in the output objects, from their footers (`ingest ls --json`)."""
    listed = subprocess.run(
        [sys.executable, "-m", "ingest", "--config", str(config), "ls", "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return sum(o["rows"] or 0 for o in json.loads(listed.stdout))


def worker_env(local: dict[str, str]) -> dict[str, str]:
    """This environment without R2 or Cloudflare settings, plus the local R2's keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
    env |= {k: v for k, v in local.items() if k.startswith("R2_")}
    env.pop("R2_API_TOKEN", None)
    return env


def _convert(path: str) -> int:
    table = pj.read_json(path)
    out = path + ".parquet.bench"
    pq.write_table(table, out, compression="zstd")
    os.unlink(out)
    return int(table.num_rows)


def raw_pyarrow(files: list[str], processes: int) -> tuple[float, int]:
    start = time.perf_counter()
    if processes == 1:
        rows = sum(_convert(f) for f in files)
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            rows = sum(pool.map(_convert, files))
    return time.perf_counter() - start, rows


def start_local_r2(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env_file = work / "local.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "local", "--dir", str(work / "r2"), "--env-file", str(env_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not env_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("local R2 did not start")
        time.sleep(0.2)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    return proc, env


def run_ingest(work: Path, env: dict[str, str]) -> tuple[float, int, str]:
    (work / "ingest.toml").write_text(
        f'[[sources]]\nkind = "directory"\npath = "{work / "inbox"}"\n'
        f'[spool]\ndir = "{work / "spool"}"\n[log]\nformat = "json"\nlevel = "warning"\n'
    )
    full_env = worker_env(env)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "--config", str(work / "ingest.toml"), "run", "--once"],
        cwd=work,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    out = (proc.stdout.read() if proc.stdout else b"").decode() + (
        proc.stderr.read() if proc.stderr else b""
    ).decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ingest run failed:\n{out}")
    return elapsed, usage.ru_maxrss * 1024, out.strip().splitlines()[-1]


def _load(url: str, token: str, *extra: str) -> dict[str, object]:
    """The load generator, in a process of its own (scripts/http_load.py: not the worker's code)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "http_load.py"), url, token, *extra],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def bench_http(work: Path, requests: int, records: int, connections: int, max_records: int = 0) -> None:
    """The HTTP source: records/s accepted (202, durable) at full speed over `connections`
    connections, then p99 time-to-202 at half that rate; then every row is checked in R2."""
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
        half_rate = float(full["records_per_s"]) / records / 2  # type: ignore[arg-type]
        paced_requests = max(20, int(half_rate * 10))  # about ten seconds at that rate
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
    print(f"{'HTTP source (durable, 202)':<34}{'records/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'statuses':>22}")
    for name, r in (
        (f"full speed, {connections} connections", full),
        (f"paced at {half_rate:.0f} req/s", paced),
    ):
        print(
            f"{name:<34}{r['records_per_s']:>12,}{r['p50_ms']:>9}{r['p99_ms']:>9}{json.dumps(r['statuses']):>22}"
        )
    print(f"\n{sent:,} records accepted, {in_r2:,} rows in R2 after the drain ({drained:.1f} s)")
    if in_r2 != sent:
        raise SystemExit("rows in R2 differ from the records accepted")


def bench_redis(work: Path, entries: int, max_records: int = 0) -> None:
    """The Redis Streams source: `entries` ~200-byte JSON entries pre-loaded, ingested end to end by one
    worker (`--once`), then again by two workers in one group; every entry checked in R2."""
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
        print(f"{'Redis Streams source':<34}{'seconds':>9}{'entries/s':>12}{'peak RSS':>11}")
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
            for proc in procs:
                _, status, usage = os.wait4(proc.pid, 0)
                peak = max(peak, usage.ru_maxrss * 1024)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise SystemExit(
                        f"worker failed: {proc.stderr.read().decode()[-3000:] if proc.stderr else ''}"
                    )
            seconds = time.perf_counter() - start
            rows = rows_in_r2(work, config, full_env)
            name = f"{workers} worker{'s' if workers > 1 else ''}, one group"
            print(f"{name:<34}{seconds:>9.2f}{entries / seconds:>12,.0f}{peak / 2**20:>8.0f} MiB", flush=True)
            if rows != entries:
                raise SystemExit(f"{rows:,} rows in R2 for {entries:,} entries")
    finally:
        r2.terminate()
        r2.wait(30)
        server.terminate()
        server.wait(30)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--http", action="store_true", help="benchmark the HTTP source instead")
    ap.add_argument("--requests", type=int, default=400, help="--http: requests at full speed")
    ap.add_argument("--per-request", type=int, default=1000, help="--http: records per request")
    ap.add_argument("--connections", type=int, default=16, help="--http: connections")
    ap.add_argument("--redis", action="store_true", help="benchmark the Redis Streams source instead")
    ap.add_argument("--entries", type=int, default=1_000_000, help="--redis: entries pre-loaded")
    ap.add_argument(
        "--max-records", type=int, default=0, help="--http, --redis: batch.max_records (0: default)"
    )
    args = ap.parse_args()

    if args.redis:
        work = Path(tempfile.mkdtemp(prefix="ingest-bench-redis-"))
        try:
            bench_redis(work, args.entries, args.max_records)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return

    if args.http:
        work = Path(tempfile.mkdtemp(prefix="ingest-bench-http-"))
        try:
            bench_http(work, args.requests, args.per_request, args.connections, args.max_records)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return

    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    inbox = work / "inbox"
    inbox.mkdir()
    print(f"generating {args.records:,} records in {args.files} files under {work} ...", flush=True)
    nbytes = generate(inbox, args.records, args.files)
    files = sorted(str(p) for p in inbox.iterdir())
    mb = nbytes / 1e6
    print(f"input: {mb:.0f} MB of JSON lines ({nbytes / args.records:.0f} bytes/record)\n")
    print(f"{'run':<28}{'seconds':>9}{'records/s':>13}{'MB/s':>9}{'peak RSS':>11}")

    def row(name: str, seconds: float, rss: int | None = None) -> None:
        rss_text = f"{rss / 2**20:.0f} MiB" if rss else "-"
        print(
            f"{name:<28}{seconds:>9.2f}{args.records / seconds:>13,.0f}{mb / seconds:>9.1f}{rss_text:>11}",
            flush=True,
        )

    for processes in (1, 2):
        seconds, rows = raw_pyarrow(files, processes)
        assert rows == args.records
        row(f"pyarrow, {processes} process{'es' if processes > 1 else ''}", seconds)
    pool_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

    r2, env = start_local_r2(work)
    try:
        seconds, rss, summary = run_ingest(work, env)
        row("ingest run --once", seconds, rss)
        print(f"\n{summary}")
        print(f"(pyarrow worker peak RSS: {pool_rss / 2**20:.0f} MiB)")
    finally:
        r2.terminate()
        r2.wait(30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
