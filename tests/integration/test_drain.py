"""Graceful drain: SIGTERM finishes what it can within shutdown_timeout, exits 0, loses nothing."""

from __future__ import annotations

import signal
import time
from collections import Counter
from urllib.parse import urlparse

from tests.faultproxy import FaultProxy, Faults
from tests.integration.conftest import Job, logs_of, wait_for, write_jsonl


def test_sigterm_during_slow_uploads_exits_0_within_shutdown_timeout_and_restart_completes(job: Job) -> None:
    total = 0
    for i in range(10):
        write_jsonl(job.inbox / f"f{i}.jsonl", [{"id": total + j} for j in range(2000)])
        total += 2000
    slow = Faults(delay=1.0, delay_seconds=4.0)  # every request to the store takes 4 s
    with FaultProxy(urlparse(job.r2.endpoint_url).port or 0, slow) as proxy:
        job.endpoint_url = proxy.url
        job.configure(
            worker={"shutdown_timeout": "3s"},
            sources={"settle_seconds": "50ms"},
            batch={"max_records": 2000, "max_age": "300ms"},
            upload={"concurrency": 2},
        )
        proc = job.start()
        try:
            spooled = lambda: list((job.dir / "spool").glob("*/objects/*.parquet"))  # noqa: E731
            wait_for(lambda: len(spooled()) >= 3, 60, "batches waiting in the spool")
            wait_for(lambda: proxy.seen["delay"] > 0, 30, "uploads under way through the slow proxy")
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert took < 3 + 3, f"exit took {took:.1f} s with shutdown_timeout 3 s"
    events = [e.get("event") for e in logs_of(err)]
    assert "stopping intake; finishing what was read" in events
    assert any(str(e).startswith("shutdown_timeout reached") for e in events)
    left = len(list((job.dir / "spool").glob("*/objects/*.parquet")))
    assert left > 0  # the rest stayed in the spool

    job.endpoint_url = ""
    job.configure(sources={"settle_seconds": "50ms"})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-2000:]
    ids = Counter(int(x["id"]) for x in job.rows())  # type: ignore[call-overload]
    assert set(ids) == set(range(total)) and max(ids.values()) == 1
    assert not list((job.dir / "spool").glob("*/objects/*.parquet"))
