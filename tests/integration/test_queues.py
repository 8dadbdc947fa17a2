"""The queue source against the local R2's Queues, through the official SDK: records land exactly once,
leases are acknowledged, poison messages are dead letters with their id, 429s are waited out."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudflare import Cloudflare

from tests.conftest import LocalR2
from tests.integration.conftest import Job, readable_rows, wait_for


def make_queue(r2: LocalR2, **consumer: Any) -> tuple[Cloudflare, str, str]:
    cf = r2.cf()
    name = f"q-{uuid.uuid4().hex[:10]}"
    queue = cf.queues.create(account_id=r2.account_id, queue_name=name)
    assert queue is not None and queue.queue_id
    if consumer:
        cf.queues.consumers.create(queue.queue_id, account_id=r2.account_id, type="http_pull", **consumer)
    return cf, name, queue.queue_id


def push(cf: Cloudflare, r2: LocalR2, queue_id: str, bodies: list[dict[str, Any]]) -> None:
    for i in range(0, len(bodies), 100):
        cf.queues.messages.bulk_push(queue_id, account_id=r2.account_id, messages=bodies[i : i + 100])  # type: ignore[arg-type]


def json_messages(ids: range) -> list[dict[str, Any]]:
    return [{"body": {"id": i, "pad": "x" * 900}, "content_type": "json"} for i in ids]


def backlog(cf: Cloudflare, r2: LocalR2, queue_id: str) -> int:
    """Messages still in the queue (leased or not), without leasing any."""
    counts = httpx.get(
        f"{r2.api_base_url}/_emulator/queues-requests", headers={"Authorization": f"Bearer {r2.root_token}"}
    )
    counts.raise_for_status()
    got = cf.queues.messages.pull(queue_id, account_id=r2.account_id, batch_size=1, visibility_timeout_ms=1)
    assert got is not None
    return int(got.message_backlog_count or 0)


def emulator(r2: LocalR2, path: str, body: dict[str, object] | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {r2.root_token}"}
    if body is None:
        r = httpx.get(f"{r2.api_base_url}/_emulator/{path}", headers=headers)
    else:
        r = httpx.post(f"{r2.api_base_url}/_emulator/{path}", headers=headers, json=body)
    r.raise_for_status()
    result: dict[str, Any] = r.json()["result"]
    return result


def queue_job(job: Job, name: str, **source: Any) -> None:
    job.configure(
        sources={"kind": "queue", "queue": name, "visibility_timeout": "20s", **source},
        batch={"max_age": "500ms"},
    )
    # `sources` merges into the default directory source: replace it whole.
    job.config["sources"] = [{"kind": "queue", "queue": name, "visibility_timeout": "20s", **source}]
    from tests.integration.conftest import write_toml

    write_toml(job.dir / "ingest.toml", job.config)


def queue_env(r2: LocalR2) -> dict[str, str]:
    return {"CLOUDFLARE_API_TOKEN": r2.root_token, "CLOUDFLARE_API_BASE_URL": r2.api_base_url}


def ids_of(rows: list[dict[str, Any]]) -> list[int]:
    return sorted(int(r["id"]) for r in rows)


def test_every_body_kind_lands_once_and_poison_messages_are_dead_letters_with_their_id(
    job: Job, local_r2: LocalR2, tmp_path: Path
) -> None:
    cf, name, queue_id = make_queue(local_r2)
    bodies: list[dict[str, Any]] = json_messages(range(0, 250))
    bodies += [{"body": [{"id": 250}, {"id": 251}, {"id": 252}], "content_type": "json"}]  # an array
    bodies += [{"body": '{"id": 253}\n{"id": 254}\n', "content_type": "text"}]  # NDJSON text
    ndjson = b'{"id": 255, "name": "\xc3\xa9t\xc3\xa9"}\n{"id": 256}\n'
    bodies += [{"body": base64.b64encode(ndjson).decode(), "content_type": "bytes"}]
    bodies += [{"body": "not json at all {", "content_type": "text"}]  # poison: bad JSON
    bodies += [{"body": 42, "content_type": "json"}]  # poison: not an object
    bodies += [{"body": "@@@ not base64", "content_type": "bytes"}]  # poison
    bodies += [{"body": '{"id": 257}\n{"id": \n', "content_type": "text"}]  # one good line, one bad
    push(cf, local_r2, queue_id, bodies)

    queue_job(job, name)
    done = job.run_once(**queue_env(local_r2))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = readable_rows(job, tmp_path)
    assert ids_of(rows) == list(range(258))
    assert [r["name"] for r in rows if r["id"] == 255] == ["été"]
    letters = job.dead_letters()
    assert len(letters) == 4
    assert all(letter.get("entry") for letter in letters)  # the message id
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert "not an object" in reasons and "base64" in reasons
    assert backlog(cf, local_r2, queue_id) == 0  # every lease acknowledged, poison ones included


def queued(r2: LocalR2, queue_id: str) -> int:
    """Messages still in the queue, leased or not (the local R2's count; leases nothing)."""
    return int(emulator(r2, "queues-requests")["backlog"].get(queue_id, 0))


def second_worker(job: Job, name: str) -> Job:
    """Another worker on the same queue and prefix: its own id, spool and config file."""
    other = Job(job.r2, job.dir / name, job.prefix, job.endpoint_url)
    other.dir.mkdir(exist_ok=True)
    other.config = json.loads(json.dumps(job.config))
    other.config["spool"] = {"dir": str(other.dir / "spool")}
    other.config["worker"] = {"id": name}
    from tests.integration.conftest import write_toml

    write_toml(other.dir / "ingest.toml", other.config)
    return other


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return err


def test_50k_messages_two_workers_every_record_once_every_lease_acked(
    job: Job, local_r2: LocalR2, tmp_path: Path
) -> None:
    cf, name, queue_id = make_queue(local_r2)
    n = 50_000
    push(cf, local_r2, queue_id, json_messages(range(n)))
    queue_job(job, name, concurrency=2)
    job.config["worker"] = {"id": "a"}
    job.config["server"] = {"listen": ""}  # two daemons on one host: no probe port each
    from tests.integration.conftest import write_toml

    write_toml(job.dir / "ingest.toml", job.config)
    other = second_worker(job, "b")
    env = queue_env(local_r2)
    a = job.start(**env)
    b = other.start(**env)
    try:
        wait_for(lambda: queued(local_r2, queue_id) == 0, 300, "the queue to be drained")
    finally:
        err_a, err_b = stop(a), stop(b)
    assert a.returncode == 0 and b.returncode == 0, (err_a[-2000:], err_b[-2000:])
    ids = ids_of(job.rows())
    assert len(ids) == n and ids == list(range(n))  # every record, none twice
    both = [json.loads(line) for line in (err_a + err_b).splitlines() if line.startswith("{")]
    done = [e for e in both if e.get("event") == "queue source done"]
    assert len(done) == 2 and all(e["records"] > 0 for e in done)  # both workers took a share
    assert sum(e["skipped_as_already_in_r2"] for e in done) == 0  # no lease ran out: none came back
    assert not any(k for k in job.all_keys() if "/_ledger/" in k)  # acknowledged: records deleted


def _crash_and_take_over(
    job: Job, local_r2: LocalR2, point: str, tmp_path: Path, two_days: bool = False
) -> None:
    cf, name, queue_id = make_queue(local_r2)
    n = 600
    messages = json_messages(range(n))
    if two_days:  # each batch becomes one object per day (output.partition_by), uploaded one at a time
        for i, m in enumerate(messages):
            m["body"]["at"] = f"2024-08-0{1 + i % 2}T12:00:00Z"
    push(cf, local_r2, queue_id, messages)
    queue_job(job, name, visibility_timeout="4s", batch_size=100)
    job.config["batch"] = {"max_age": "300ms", "max_records": 250}
    job.config["worker"] = {"id": "a"}
    if two_days:
        job.config["output"] |= {"partition_by": "at"}
        job.config["upload"] = {"concurrency": 1}
    from tests.integration.conftest import write_toml

    write_toml(job.dir / "ingest.toml", job.config)
    env = queue_env(local_r2)
    crashed = job.run_once(**env, INGEST_CRASH_AT=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    time.sleep(4.5)  # the dead worker's leases run out: the queue delivers the messages again
    other = second_worker(job, "b")
    took = other.run_once(**env)
    assert took.returncode == 0, took.stderr[-2000:]
    assert ids_of(job.rows()) == list(range(n)), point
    # The dead worker comes back: what it kept in its spool must not land a second time.
    back = job.run_once(**env)
    assert back.returncode == 0, back.stderr[-2000:]
    rows = readable_rows(job, tmp_path)
    assert ids_of(rows) == list(range(n)), point
    assert queued(local_r2, queue_id) == 0


@pytest.mark.parametrize("point", ["queue-journaled", "spooled", "put", "uploaded"])
def test_a_worker_killed_holding_leases_loses_nothing_and_lands_nothing_twice(
    job: Job, local_r2: LocalR2, tmp_path: Path, point: str
) -> None:
    _crash_and_take_over(job, local_r2, point, tmp_path)


def test_a_worker_killed_between_the_day_objects_of_a_batch_loses_nothing(
    job: Job, local_r2: LocalR2, tmp_path: Path
) -> None:
    """A batch split into one object per day, the worker killed once the first is in R2: the ledger
    record of that object names only its own rows, so the heir ingests the other day's rows (it
    used to skip them as "already in R2": every row of the batch was recorded for each object)."""
    _crash_and_take_over(job, local_r2, "uploaded", tmp_path, two_days=True)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["queue-pulled", "encoded", "queue-acked", "acked"])
def test_a_worker_killed_at_the_other_steps_loses_nothing(
    job: Job, local_r2: LocalR2, tmp_path: Path, point: str
) -> None:
    _crash_and_take_over(job, local_r2, point, tmp_path)


def test_429_from_the_queues_api_is_waited_out_and_loses_nothing(job: Job, local_r2: LocalR2) -> None:
    cf, name, queue_id = make_queue(local_r2)
    push(cf, local_r2, queue_id, json_messages(range(500)))
    queue_job(job, name)
    before = emulator(local_r2, "queues-requests")["rate_limited"]
    emulator(local_r2, "queues-rate-limit", {"seconds": 3, "retry_after": 2})
    started = time.monotonic()
    done = job.run_once(**queue_env(local_r2))
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - started >= 3  # it waited for the limit to pass
    assert ids_of(job.rows()) == list(range(500))
    limited = emulator(local_r2, "queues-requests")["rate_limited"] - before
    # Retry-After 2 s over a 3 s limit: about two 429s per puller, never a hot loop.
    assert 1 <= limited <= 8, limited
    assert queued(local_r2, queue_id) == 0


def _random_kill(job: Job, local_r2: LocalR2, seed: int) -> None:
    import random

    rng = random.Random(seed)
    cf, name, queue_id = make_queue(local_r2)
    n = 20_000  # A is still at work when it is killed
    push(cf, local_r2, queue_id, json_messages(range(n)))
    queue_job(job, name, visibility_timeout="4s", concurrency=2)
    job.config["batch"] = {"max_age": "300ms", "max_records": 700}
    job.config["worker"] = {"id": "a"}
    job.config["server"] = {"listen": ""}
    from tests.integration.conftest import write_toml

    write_toml(job.dir / "ingest.toml", job.config)
    env = queue_env(local_r2)
    a = job.start(**env)
    time.sleep(rng.uniform(1.5, 4.0))  # start-up, then somewhere in the middle of the work
    os.kill(a.pid, signal.SIGKILL)
    a.communicate(timeout=30)
    other = second_worker(job, "b")
    b = other.start(**env)
    b_started = time.monotonic()
    try:
        wait_for(lambda: queued(local_r2, queue_id) == 0, 120, "the queue to be drained")
        time.sleep(max(0.0, 4 - (time.monotonic() - b_started)))  # B's start-up is over: SIGTERM drains
    finally:
        err = stop(b)
    assert b.returncode == 0, err[-2000:]
    back = job.run_once(**env)  # the killed worker returns with what its spool kept
    assert back.returncode == 0, back.stderr[-2000:]
    assert ids_of(job.rows()) == list(range(n)), seed


def test_a_worker_killed_at_a_random_moment_loses_nothing_and_lands_nothing_twice(
    job: Job, local_r2: LocalR2
) -> None:
    _random_kill(job, local_r2, 1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_random_kills_more_seeds(job: Job, local_r2: LocalR2, seed: int) -> None:
    _random_kill(job, local_r2, seed)


def read_only_keys(r2: LocalR2) -> dict[str, str]:
    import asyncio

    from ingest.r2.api import cloudflare_client
    from ingest.r2.tokens import create_bucket_token

    async def create() -> tuple[str, str]:
        async with cloudflare_client(r2.root_token, r2.api_base_url) as cf:
            made = await create_bucket_token(cf, r2.account_id, r2.bucket, permission="read")
        return made.access_key_id, made.secret_access_key

    key, secret = asyncio.run(create())
    return {"R2_ACCESS_KEY_ID": key, "R2_SECRET_ACCESS_KEY": secret}


def test_messages_that_cannot_be_uploaded_are_retried_then_reach_the_dead_letter_queue(
    job: Job, local_r2: LocalR2
) -> None:
    cf, dlq_name, dlq_id = make_queue(local_r2)
    cf, name, queue_id = make_queue(local_r2, dead_letter_queue=dlq_name, settings={"max_retries": 2})
    push(cf, local_r2, queue_id, json_messages(range(50)))
    queue_job(job, name, visibility_timeout="30s")
    job.config["server"] = {"listen": ""}
    from tests.integration.conftest import write_toml

    write_toml(job.dir / "ingest.toml", job.config)
    env = queue_env(local_r2) | read_only_keys(local_r2)  # R2 refuses every PUT (403)
    worker = job.start(**env)
    try:
        # Delivered, refused, handed back after 2 s, 4 s: after max_retries (2) the queue moves them.
        wait_for(lambda: queued(local_r2, dlq_id) == 50, 90, "the messages to reach the dead-letter queue")
        assert worker.poll() is None  # the worker goes on
        assert queued(local_r2, queue_id) == 0
    finally:
        err = stop(worker)
    assert "handed back to the queue" in err
    assert job.keys() == []
    # With writable credentials again, what its spool kept is not uploaded: the DLQ holds those messages.
    back = job.run_once(**queue_env(local_r2))
    assert back.returncode == 0, back.stderr[-2000:]
    assert job.keys() == []
    assert queued(local_r2, dlq_id) == 50
