"""The landing source driven by R2 event notifications on the local R2: presigned PUTs are ingested within
2 s with no LIST between the start and the reconcile pass (counted at a proxy in front of the store), a
notification lost on purpose is caught by the reconcile pass, and a key written again is ingested again."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tests.conftest import LocalR2
from tests.faultproxy import FaultProxy
from tests.integration.conftest import Job, readable_rows, wait_for
from tests.integration.test_queues import emulator, make_queue, queue_env, stop

RECONCILE = 15.0


def presigned_put(r2: LocalR2, key: str, body: bytes) -> None:
    """What a browser does with an upload grant: a PUT straight to the store, not through the worker."""
    url = r2.token_s3().generate_presigned_url(
        "put_object", Params={"Bucket": r2.bucket, "Key": key}, ExpiresIn=300
    )
    httpx.put(url, content=body).raise_for_status()


def lines(ids: range) -> bytes:
    return b"".join(json.dumps({"id": i}).encode() + b"\n" for i in ids)


def ids_in(job: Job) -> list[int]:
    return sorted(int(r["id"]) for r in job.rows())


def test_notified_uploads_land_fast_without_listing_and_the_reconcile_pass_catches_a_lost_one(
    job: Job, local_r2: LocalR2, tmp_path: Path
) -> None:
    _, name, _ = make_queue(local_r2)
    env = queue_env(local_r2)
    job.configure(
        sources=[
            {
                "kind": "landing",
                "settle_seconds": "200ms",
                "notifications": name,
                "reconcile_interval": f"{RECONCILE}s",
                "poll_interval": "250ms",
            }
        ],
        batch={"max_age": "200ms"},
        server={"listen": ""},
    )
    setup = job.cli("notifications", "setup", **env)
    assert setup.returncode == 0, setup.stderr
    shown = job.cli("notifications", "show", **env)
    assert name in shown.stdout and f"{job.prefix}_landing/" in shown.stdout
    landing = f"{job.prefix}_landing/"
    with FaultProxy(urlparse(local_r2.endpoint_url).port or 0) as proxy:
        job.endpoint_url = proxy.url
        worker = job.start(**env)
        try:
            wait_for(lambda: proxy.lists(landing) >= 1, 60, "the listing at start")
            started = time.monotonic()
            listed_at_start = proxy.lists(landing)
            # 1. Presigned PUTs: each in R2 within 2 s, no LIST in between.
            slowest = 0.0
            for n in range(3):
                presigned_put(
                    local_r2, f"{landing}{uuid.uuid4()}/part-{n}.jsonl", lines(range(n * 10, n * 10 + 10))
                )
                put_at = time.monotonic()
                wait_for(lambda n=n: len(ids_in(job)) == (n + 1) * 10, 10, "the upload to be ingested")
                slowest = max(slowest, time.monotonic() - put_at)
            assert slowest < 2.0, slowest
            # 2. A notification lost on purpose: only the reconcile pass finds that upload.
            emulator(local_r2, "drop-notifications", {"count": 1})
            presigned_put(local_r2, f"{landing}{uuid.uuid4()}/lost.jsonl", lines(range(30, 40)))
            time.sleep(2)
            assert len(ids_in(job)) == 30  # not notified, not listed yet
            assert proxy.lists(landing) == listed_at_start  # no LIST between the start and the reconcile pass
            assert time.monotonic() - started < RECONCILE
            wait_for(lambda: len(ids_in(job)) == 40, RECONCILE + 20, "the reconcile pass")
            assert proxy.lists(landing) > listed_at_start
            # 3. A key ingested, then written again: ingested once per write.
            again = f"{landing}{uuid.uuid4()}/again.jsonl"
            presigned_put(local_r2, again, lines(range(40, 45)))
            wait_for(lambda: len(ids_in(job)) == 45, 10, "the first write")
            wait_for(lambda: again not in job.landing_keys(), 10, "the first write to be acknowledged")
            presigned_put(local_r2, again, lines(range(45, 50)))
            wait_for(lambda: len(ids_in(job)) == 50, 10, "the second write")
        finally:
            err = stop(worker)
    assert worker.returncode == 0, err[-3000:]
    rows = readable_rows(job, tmp_path)
    assert sorted(int(r["id"]) for r in rows) == list(range(50))  # every write once
    deleted = job.cli("notifications", "delete", **env)
    assert deleted.returncode == 0, deleted.stderr
    assert "no event notification rules" in job.cli("notifications", "show", **env).stdout


def test_notifications_need_a_queue_that_exists_and_a_token(job: Job, local_r2: LocalR2) -> None:
    job.configure(sources=[{"kind": "landing", "notifications": "no-such-queue"}])
    missing = job.run_once(**queue_env(local_r2))
    assert missing.returncode == 2 and "no-such-queue" in missing.stderr, missing.stderr[-2000:]
    no_token = job.run_once()
    assert no_token.returncode == 2 and "CLOUDFLARE_API_TOKEN" in no_token.stderr, no_token.stderr[-2000:]
