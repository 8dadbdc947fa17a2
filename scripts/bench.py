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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.json as pj
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def generate(inbox: Path, records: int, files: int) -> int:
    """~200-byte events, like the design's measurements. Returns total bytes."""
    rng = random.Random(42)
    per_file = records // files
    total = 0
    for f in range(files):
        start = f * per_file
        lines = []
        for i in range(start, start + per_file):
            lines.append(
                json.dumps(
                    {
                        "id": i,
                        "ts": f"2024-08-02T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
                        "user": f"user-{rng.randrange(100_000)}",
                        "event": rng.choice(["view", "click", "purchase", "signup"]),
                        "amount": round(rng.random() * 500, 2),
                        "ok": rng.random() < 0.9,
                        "path": "/p/" + "".join(rng.choices("abcdefghij", k=40)),
                    }
                )
            )
        data = ("\n".join(lines) + "\n").encode()
        (inbox / f"events-{f:04d}.jsonl").write_bytes(data)
        total += len(data)
    return total


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
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
    full_env |= {k: v for k, v in env.items() if k.startswith("R2_")}
    full_env.pop("R2_API_TOKEN", None)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()

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
