"""The `ls` scenario of `scripts/bench`: `ingest ls` and `ingest head` over many objects.

The worker uploads OBJECTS objects (batches of 10 records) with its defaults, so it also writes its
upload index; then whole `ingest ls --json` processes are timed (best of 3) from that index, and once
more with the index moved away, from every object's footer (fetched concurrently). `ingest head` of
one object is timed beside them. Last, the index is written again as a cron job (`run --once` once a
minute) leaves it: one run, one object, one index write each (the worker's own `UploadIndex`, which
merges a folder's small index objects), and `ls` is timed from that. The rows `ls` reports must equal
the rows uploaded.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_files import best, copy_inbox, generate, run_once, s3_client, worker_env

PER_OBJECT = 10


def _timed_cli(work: Path, config: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    argv = [sys.executable, "-m", "ingest", "--config", str(config), *args]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def listing(work: Path, env: dict[str, str], objects: int) -> dict[str, Any]:
    source = work / "ls-source"
    generate(source, objects * PER_OBJECT, 1, seed=11)
    copy_inbox(source, work / "ls-run", 1)
    run_once(work, env, work / "ls-run", "ls", extra=f"[batch]\nmax_records = {PER_OBJECT}\n")
    config, wenv = work / "ls.toml", worker_env(env)

    def ls() -> float:
        seconds, out = _timed_cli(work, config, wenv, "ls", "--json")
        listed = json.loads(out)
        rows = sum(o["rows"] or 0 for o in listed)
        if len(listed) != objects or rows != objects * PER_OBJECT:
            raise SystemExit(
                f"ls: {len(listed)} objects, {rows} rows; uploaded {objects}, {objects * PER_OBJECT}"
            )
        return seconds

    indexed = best(3, ls)
    s3, bucket = s3_client(env), env["R2_BUCKET_NAME"]
    _, out = _timed_cli(work, config, wenv, "ls", "--json")
    key = json.loads(out)[0]["key"]
    head = best(3, lambda: _timed_cli(work, config, wenv, "head", key, "--json")[0])
    moved = []  # the index, moved aside: `ls` reads every footer
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ls/_index/"):
        for obj in page.get("Contents", []):
            s3.copy_object(Bucket=bucket, Key="ls-aside/" + obj["Key"], CopySource=f"{bucket}/{obj['Key']}")
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
            moved.append(obj["Key"])
    footers = ls()
    started = time.perf_counter()
    asyncio.run(_as_cron_runs(env, {o["key"]: o["size"] for o in json.loads(out)}))
    cron_setup = time.perf_counter() - started
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ls/_index/")
    cron_index = sum(len(p.get("Contents", [])) for p in pages)
    cron = best(3, ls)
    return {
        "objects": objects,
        "index_objects": len(moved),
        "ls_indexed_s": round(indexed, 3),
        "ls_footers_s": round(footers, 3),
        "head_s": round(head, 3),
        "cron_index_objects": cron_index,
        "cron_index_writes_s": round(cron_setup, 1),
        "ls_cron_s": round(cron, 3),
    }


async def _as_cron_runs(env: dict[str, str], objects: dict[str, int]) -> None:
    """The index a cron job would have written for these objects: one run per object, each ending
    with its own index write (the worker's UploadIndex, merges included)."""
    from pydantic import SecretStr

    from ingest.logs import configure
    from ingest.pipeline.index import UploadIndex
    from ingest.r2.client import R2Client
    from ingest.r2.credentials import CredentialProvider, S3Credentials

    configure(level="warning")  # not a debug line per merge in the bench's output
    creds = S3Credentials(env["R2_ACCESS_KEY_ID"], SecretStr(env["R2_SECRET_ACCESS_KEY"]))
    async with R2Client(env["R2_ENDPOINT_URL"], CredentialProvider(creds)) as client:
        for key, size in objects.items():
            index = UploadIndex(client, env["R2_BUCKET_NAME"], "ls/")
            index.add(key, size, PER_OBJECT, "cron")
            await index.flush()
