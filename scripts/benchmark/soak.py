"""Soak: the daemon under a steady load for a long time; memory and the journal must stay flat.

    .venv/bin/python scripts/benchmark/soak.py [--minutes 30] [--rate 20000] [--json]

Starts the local R2 and `ingest run` (the daemon, directory source, defaults), writes `--rate` records/s
into its directory (a file every half second, staged and renamed in, as a real producer would), samples
the worker's RSS and the journal's size and rows every 10 s, then stops the worker (SIGTERM, a drain)
and checks that every row written is in R2. Pass: the highest RSS of the last 5 minutes within 10 % of
the highest of minutes 5 to 10 (RSS saws up and down as batches fill and are written: single samples
would compare phases, not levels), the journal's rows back to zero and its file not growing after the
first 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_files import rows_in_r2, start_local_r2, worker_env
from http_load import event

SAMPLE = 10.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def waiting(inbox: Path) -> int:
    """Files not taken yet (the claim directory `.ingest/` is not one)."""
    return sum(1 for p in inbox.iterdir() if not p.name.startswith("."))


def journal(spool: Path) -> tuple[float, int]:
    """(size of the journal's files in MiB, its rows: units, spans and objects)."""
    files = list(spool.glob("*/journal.db*"))
    size = sum(f.stat().st_size for f in files) / 2**20
    rows = 0
    for db in spool.glob("*/journal.db"):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            for table in ("units", "spans", "objects"):
                rows += con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return size, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=int, default=20_000, help="records per second")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-soak-"))
    inbox, staging, spool = work / "inbox", work / "staging", work / "spool"
    for d in (inbox, staging):
        d.mkdir()
    config = work / "soak.toml"
    with socket.socket() as probe:  # its own probe port: nothing else on the machine is disturbed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.write_text(
        f'[[sources]]\nkind = "directory"\npath = "{inbox}"\n[spool]\ndir = "{spool}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n[log]\nformat = "json"\nlevel = "warning"\n'
    )
    r2, env = start_local_r2(work)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ingest", "--config", str(config), "run"],
        env=worker_env(env),
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=(work / "worker.log").open("wb"),
    )
    rng = random.Random(1)
    written = 0
    samples: list[dict[str, float]] = []
    start = time.monotonic()
    next_sample = start
    per_file = args.rate // 2
    # One file's worth of events, written again and again (the writer must not be what limits the rate;
    # rows are counted, so repeated ids do not matter).
    body = ("\n".join(event(i, rng) for i in range(per_file)) + "\n").encode()
    try:
        while time.monotonic() - start < args.minutes * 60:
            tick = time.monotonic()
            staged = staging / f"f{written:012d}.jsonl"
            staged.write_bytes(body)
            staged.rename(inbox / staged.name)
            written += per_file
            if tick >= next_sample:
                size, rows = journal(spool)
                sample = {"t": round(tick - start), "rss_mib": round(rss_mib(worker.pid), 1)}
                sample |= {"journal_mib": round(size, 2), "journal_rows": rows}
                samples.append(sample | {"waiting_files": waiting(inbox)})
                if not args.json:
                    print(samples[-1], flush=True)
                next_sample += SAMPLE
            time.sleep(max(0.0, 0.5 - (time.monotonic() - tick)))
        deadline = time.monotonic() + 300
        while waiting(inbox) and time.monotonic() < deadline:
            time.sleep(1)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(300)
        in_r2 = rows_in_r2(work, config, worker_env(env))
        size, rows = journal(spool)
    finally:
        if worker.poll() is None:
            worker.kill()
        r2.terminate()
        r2.wait(30)
    at5 = next((s for s in samples if s["t"] >= 300), samples[len(samples) // 2])
    last = samples[-1]
    early = [s["rss_mib"] for s in samples if 300 <= s["t"] < 600] or [at5["rss_mib"]]
    late = [s["rss_mib"] for s in samples if s["t"] >= last["t"] - 300]
    result = {
        "minutes": args.minutes,
        "rate": args.rate,
        "achieved_rate": round(written / (args.minutes * 60)),
        "written": written,
        "in_r2": in_r2,
        "exit_code": code,
        "rss_max_minutes_5_to_10_mib": max(early),
        "rss_max_last_5_minutes_mib": max(late),
        "rss_late_vs_early": round(max(late) / max(early), 3),
        "journal_mib_5min": at5["journal_mib"],
        "journal_mib_end": last["journal_mib"],
        "journal_rows_after_drain": rows,
        "journal_mib_after_drain": round(size, 2),
    }
    result["ok"] = (
        in_r2 == written and code == 0 and result["rss_late_vs_early"] <= 1.10 and rows == 0
        and last["journal_mib"] <= at5["journal_mib"] * 1.10 + 1
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
