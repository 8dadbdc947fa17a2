"""The file scenarios of `scripts/bench`: big files, many small files, start-up; with their yardsticks.

Every figure comes from a real subprocess against the local R2 (started once, not timed); peak RSS
from wait4() on exactly that process. The yardsticks run on the same files in the same run:
- limit A: pyarrow `read_json` → `write_table(zstd)` in 2 processes, no upload;
- limit AB: the same plus a plain boto3 PUT of each Parquet file to the same local R2;
- the small-files loop: one process, `read_json` per file, one `write_table` at the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq
from http_load import event  # scripts/ is on the path: the same events as the HTTP load generator

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
# Peak RSS bound (see README "Performance"): the interpreter and its imports, the batches in memory
# (the open one, one queued, and ENCODERS being encoded, each held twice while it is cast and written),
# and what the readers hold (per reader two blocks of raw text, one read while the other is parsed,
# and the parsed rows; ITEM_BUFFER chunks in flight).
BASE_MIB = 200


def rss_bound_mib(max_bytes_mib: float) -> float:
    from ingest.parsing.jsonlines import READ_BLOCK
    from ingest.pipeline import ENCODERS, ITEM_BUFFER
    from ingest.sources.reader import READERS

    block = READ_BLOCK / 2**20
    return BASE_MIB + max_bytes_mib * (2 + 2 * ENCODERS) + block * (3 * READERS + ITEM_BUFFER)


def generate(inbox: Path, records: int, files: int, seed: int = 42) -> int:
    """~200-byte events, like the design's measurements. Returns total bytes."""
    inbox.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    per_file = records // files
    total = 0
    for f in range(files):
        start = f * per_file
        data = ("\n".join(event(i, rng) for i in range(start, start + per_file)) + "\n").encode()
        (inbox / f"events-{f:05d}.jsonl").write_bytes(data)
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


def rows_in_table(env: dict[str, str]) -> int:
    """Rows of the Iceberg table `bench.events` (0 before it exists), from the catalog's manifests."""
    from pyiceberg.catalog.rest import RestCatalog

    catalog = RestCatalog(
        "r2", uri=env["R2_CATALOG_URI"], warehouse=env["R2_WAREHOUSE"], token=env["R2_CATALOG_TOKEN"]
    )
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        table = catalog.load_table("bench.events")
    except (NoSuchTableError, NoSuchNamespaceError):
        return 0
    # The data files' row counts (as `ingest ls` reads footers): a scan would hold every row in this
    # process, and a child forked from a big parent reports the parent's peak RSS as its own.
    return sum(table.inspect.files().column("record_count").to_pylist())


def worker_env(local: dict[str, str]) -> dict[str, str]:
    """This environment without R2 or Cloudflare settings, plus the local R2's keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
    env |= {k: v for k, v in local.items() if k.startswith("R2_")}
    env.pop("R2_API_TOKEN", None)
    return env


def start_local_r2(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env_file = work / "local.env"
    env_file.unlink(missing_ok=True)  # an old one would be read before this store is up
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


def run_once(
    work: Path, env: dict[str, str], inbox: Path, name: str, iceberg: bool = False, extra: str = ""
) -> tuple[float, int, str]:
    """`ingest run --once` on `inbox` with the defaults (durability on), as its own process;
    `iceberg`: also committed to the local catalog's table `bench.events`, as a worker does once its
    table exists (see rows_in_table); `extra`: more TOML sections."""
    config = work / f"{name}.toml"
    table = '[iceberg]\nenabled = true\nnamespace = "bench"\ntable = "events"\n'
    config.write_text(
        f'[[sources]]\nkind = "directory"\npath = "{inbox}"\n'
        f'[spool]\ndir = "{work / ("spool-" + name)}"\n[output]\nprefix = "{name}/"\n'
        '[log]\nformat = "json"\nlevel = "warning"\n' + (table if iceberg else "") + extra
    )
    argv = [sys.executable, "-m", "ingest", "--config", str(config), "run", "--once"]
    seconds, rss, out = timed(argv, worker_env(env), work)
    return seconds, rss, out.strip().splitlines()[-1] if out.strip() else ""


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    """Run a process: (wall seconds, its own peak RSS in bytes from wait4, its output); a non-zero
    exit ends the benchmark, saying why."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    out = (proc.stdout.read() if proc.stdout else b"") + (proc.stderr.read() if proc.stderr else b"")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.decode()[-3000:]}")
    return elapsed, usage.ru_maxrss * 1024, out.decode()


# -- CPU ---------------------------------------------------------------------------------------


@dataclass
class Cost:
    """What one measured run took: wall seconds, CPU seconds of the processes it ran (the worker, or
    the yardstick's pool), and CPU seconds the local R2 spent meanwhile. The store runs on the same
    2 cores: (cpu + store_cpu) / 2 is the fastest the run could have been on this machine."""

    wall: float
    cpu: float
    store_cpu: float

    @property
    def floor(self) -> float:
        return (self.cpu + self.store_cpu) / CORES

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_cpu_s": round(self.cpu, 2), f"{prefix}_store_cpu_s": round(self.store_cpu, 2)}


CORES = os.cpu_count() or 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and its live descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total / tick


def costed(fn: Callable[[], T], store_pid: int) -> tuple[Cost, T]:
    """Run `fn`, which runs (and waits for) child processes, and what it cost: the children's CPU
    from getrusage, this process's own, and the store's from /proc."""

    def spent() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    cpu0, store0, start = spent(), cpu_seconds(store_pid), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    return Cost(wall, spent() - cpu0, cpu_seconds(store_pid) - store0), result


# -- yardsticks ----------------------------------------------------------------------------------


def _convert(path: str, put: dict[str, str] | None = None) -> int:
    table = pj.read_json(path)
    out = path + ".parquet.bench"
    pq.write_table(table, out, compression="zstd")
    if put is not None:
        _put(out, put)
    os.unlink(out)
    return int(table.num_rows)


_s3: Any = None


def s3_client(env: dict[str, str]) -> Any:
    """A plain boto3 client for the local R2 (the yardsticks' and the row counts' own)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["R2_ENDPOINT_URL"],
        aws_access_key_id=env["R2_ACCESS_KEY_ID"],
        aws_secret_access_key=env["R2_SECRET_ACCESS_KEY"],
        region_name="auto",
    )


def _put(path: str, env: dict[str, str]) -> None:
    global _s3
    if _s3 is None:
        _s3 = s3_client(env)
    with open(path, "rb") as fh:
        _s3.put_object(Bucket=env["R2_BUCKET_NAME"], Key=f"limit-ab/{os.path.basename(path)}", Body=fh)


def _convert_and_put(args: tuple[str, dict[str, str]]) -> int:
    return _convert(args[0], args[1])


def limit(files: list[str], env: dict[str, str] | None) -> float:
    """Limit A (env None) or limit AB (PUT too): seconds for all files in 2 processes."""
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        if env is None:
            rows = sum(pool.map(_convert, files))
        else:
            rows = sum(pool.map(_convert_and_put, [(f, env) for f in files]))
    assert rows > 0
    return time.perf_counter() - start


def small_loop(files: list[Path], out: Path) -> float:
    """One process: `read_json` per file, one `write_table` of them all."""
    start = time.perf_counter()
    tables = [pj.read_json(str(f)) for f in files]
    pq.write_table(pa.concat_tables(tables, promote_options="default"), out, compression="zstd")
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def best(n: int, fn: Callable[[], T], key: Callable[[T], Any] | None = None) -> T:
    """The fastest of n runs (this machine is shared: the others met more noise)."""
    return min((fn() for _ in range(n)), key=key)


SETTLED_AGO = 60.0  # seconds: the copies' mtime, as for files written before the run


def copy_inbox(source: Path, target: Path, times: int) -> None:
    """`times` copies of every file (distinct names) in `target`, dated SETTLED_AGO in the past: the
    worker takes a file only once it has held still for `settle_seconds` (a writer may still be at
    it), and the yardsticks do not wait, so a copy made just before the run would time that wait."""
    target.mkdir(parents=True, exist_ok=True)
    then = time.time() - SETTLED_AGO
    for k in range(times):
        for f in source.rglob("*"):  # in the same folders (a nested inbox stays nested)
            if f.is_dir():
                continue
            copy = target / f.relative_to(source).with_name(f"{k}-{f.name}")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, copy)
            os.utime(copy, (then, then))
    os.sync()  # the copies on disk before the run: their writeback would stall the worker's fsyncs
