"""Benchmark of the queue source (`bench --queue`): 1 KB JSON messages in a local Queue, pulled 100 at a
time by `ingest run --once`, next to a yardstick on the same queue service: a bare pull-and-ack loop
(the official SDK, as many pulls in flight as the worker), which ingests nothing. Reports records/s, the
ratio to the yardstick, and the Queues API calls per million records (counted by the local R2). Every
row is checked in R2 at the end.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench_files import rows_in_r2, start_local_r2, worker_env

PULLS = 2  # the queue source's default concurrency


def _counts(env: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{env['CLOUDFLARE_API_BASE_URL']}/_emulator/queues-requests",
        headers={"Authorization": f"Bearer {env['CLOUDFLARE_API_TOKEN']}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        result: dict[str, Any] = json.loads(answer.read())["result"]
        return result


def _fill(env: dict[str, str], messages: int) -> tuple[str, str]:
    from cloudflare import Cloudflare

    cf = Cloudflare(api_token=env["CLOUDFLARE_API_TOKEN"], base_url=env["CLOUDFLARE_API_BASE_URL"])
    name = f"bench-{uuid.uuid4().hex[:8]}"
    queue = cf.queues.create(account_id=env["R2_ACCOUNT_ID"], queue_name=name)
    assert queue is not None and queue.queue_id
    pad = "x" * 900  # ~1 KB per message with the other fields
    for start in range(0, messages, 100):
        batch: Any = [
            {"body": {"id": i, "kind": "view", "user": f"u{i % 997}", "pad": pad}, "content_type": "json"}
            for i in range(start, min(start + 100, messages))
        ]
        cf.queues.messages.bulk_push(queue.queue_id, account_id=env["R2_ACCOUNT_ID"], messages=batch)
    return name, queue.queue_id


async def _drain(env: dict[str, str], queue_id: str) -> int:
    """The yardstick: pull 100 and ack them, `PULLS` at a time, until the queue is empty."""
    from cloudflare import AsyncCloudflare

    taken = 0
    async with AsyncCloudflare(
        api_token=env["CLOUDFLARE_API_TOKEN"], base_url=env["CLOUDFLARE_API_BASE_URL"]
    ) as cf:

        async def puller() -> None:
            nonlocal taken
            while True:
                got = await cf.queues.messages.pull(
                    queue_id, account_id=env["R2_ACCOUNT_ID"], batch_size=100, visibility_timeout_ms=300_000
                )
                pulled = (got.messages if got else None) or []
                leases = [{"lease_id": m.lease_id} for m in pulled if m.lease_id]
                if not leases:
                    return
                [json.loads(str(m.body)) for m in pulled]  # what any consumer must do
                await cf.queues.messages.ack(queue_id, account_id=env["R2_ACCOUNT_ID"], acks=leases)  # type: ignore[arg-type]
                taken += len(leases)

        await asyncio.gather(*(puller() for _ in range(PULLS)))
    return taken


def bench_queue(work: Path, messages: int, as_json: bool = False) -> dict[str, Any]:
    r2, local = start_local_r2(work)
    env = worker_env(local) | {
        "CLOUDFLARE_API_TOKEN": local["CLOUDFLARE_API_TOKEN"],
        "CLOUDFLARE_API_BASE_URL": local["CLOUDFLARE_API_BASE_URL"],
    }
    try:
        _, yard_id = _fill(env, messages)
        start = time.perf_counter()
        drained = asyncio.run(_drain(env, yard_id))
        yard_s = time.perf_counter() - start
        if drained != messages:
            raise SystemExit(f"the yardstick took {drained:,} of {messages:,} messages")

        name, _ = _fill(env, messages)
        config = work / "queue.toml"
        config.write_text(
            f'[[sources]]\nkind = "queue"\nqueue = "{name}"\n[output]\nprefix = "queue/"\n'
            f'[spool]\ndir = "{work / "spool"}"\n[log]\nformat = "json"\nlevel = "warning"\n'
        )
        before = _counts(env)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "ingest", "--config", str(config), "run", "--once"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"worker failed: {done.stderr[-3000:]}")
        after = _counts(env)
        rows = rows_in_r2(work, config, env)
        if rows != messages:
            raise SystemExit(f"{rows:,} rows in R2 for {messages:,} messages")
    finally:
        r2.terminate()
        r2.wait(30)
    per_million = 1_000_000 / messages
    result = {
        "messages": messages,
        "records_per_s": round(messages / seconds),
        "yardstick_records_per_s": round(messages / yard_s),
        "vs_yardstick": round(yard_s / seconds, 3),
        "pulls_per_million": round((after["pull"] - before["pull"]) * per_million),
        "acks_per_million": round((after["ack"] - before["ack"]) * per_million),
    }
    if not as_json:
        print(f"{'queue source (1 KB messages, 100 per pull)':<46}{'records/s':>12}{'× yardstick':>13}")
        yard = result["yardstick_records_per_s"]
        print(f"{'pull + ack loop, no ingest (yardstick)':<46}{yard:>12,}{1:>13.2f}")
        print(f"{'ingest run --once':<46}{result['records_per_s']:>12,}{result['vs_yardstick']:>13.2f}")
        print(
            f"Queues API calls per million records: {result['pulls_per_million']:,} pulls, "
            f"{result['acks_per_million']:,} acks"
        )
    return result
