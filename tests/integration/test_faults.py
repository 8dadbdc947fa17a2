"""Faults injected for real: a misbehaving TCP proxy in front of SeaweedFS, and SeaweedFS stopped."""

from __future__ import annotations

import signal
import time
from collections import Counter
from urllib.parse import urlparse

import httpx

from tests.faultproxy import FaultProxy, Faults
from tests.integration.conftest import Job, OwnR2, free_port, logs_of, readyz, wait_for, write_jsonl


def _fill(job: Job, files: int, per_file: int) -> int:
    for i in range(files):
        write_jsonl(
            job.inbox / f"f{i:03d}.jsonl", [{"id": i * per_file + j, "v": j} for j in range(per_file)]
        )
    return files * per_file


def _assert_exactly_once(job: Job, total: int) -> None:
    ids = Counter(int(r["id"]) for r in job.rows())  # type: ignore[call-overload]
    assert sum(ids.values()) == total
    assert set(ids) == set(range(total))
    assert max(ids.values()) == 1


def test_drops_delays_and_503s_still_upload_every_row_exactly_once(job: Job) -> None:
    total = _fill(job, 20, 500)
    faults = Faults(drop=0.1, drop_response=0.15, unavailable=0.15, delay=0.1, delay_seconds=0.5, seed=7)
    with FaultProxy(urlparse(job.r2.endpoint_url).port or 0, faults) as proxy:
        job.endpoint_url = proxy.url
        job.configure(batch={"max_records": 200}, upload={"concurrency": 4})
        r = job.run_once()
    assert r.returncode == 0, r.stderr
    for mode in ("drop", "drop_response", "unavailable", "delay", "pass"):
        assert proxy.seen[mode] > 0, proxy.seen
    events = logs_of(r.stderr)
    assert any(e.get("event") == "transient failure; retrying" for e in events)
    uploaded = [e["key"] for e in events if e.get("event") == "uploaded"]
    assert len(uploaded) == total // 200 and sorted(uploaded) == job.keys()
    _assert_exactly_once(job, total)


def test_seaweedfs_stopped_for_ten_seconds_mid_run(job: Job, own_r2: OwnR2) -> None:
    total = _fill(job, 60, 200)
    job.configure(batch={"max_records": 50}, upload={"concurrency": 2})
    proc = job.start("--once")
    assert proc.stderr is not None
    first: list[str] = []
    for line in proc.stderr:  # wait for the first object, then pull the plug
        first.append(line)
        if '"uploaded"' in line:
            break
    stopped = time.monotonic()
    own_r2.stop()
    time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
    job.r2 = own_r2.start()
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, "".join(first) + err
    events = logs_of("".join(first) + err)
    assert any(e.get("event") == "transient failure; retrying" for e in events)
    _assert_exactly_once(job, total)


def test_store_down_thirty_seconds_with_a_small_spool_pauses_intake_and_loses_nothing(
    job: Job, own_r2: OwnR2
) -> None:
    probe = free_port()
    job.configure(
        sources={"settle_seconds": "50ms"},
        batch={"max_records": 400, "max_age": "200ms"},
        upload={"concurrency": 2},
        spool={"dir": str(job.dir / "spool"), "max_bytes": "24KiB"},
        retry={"initial": "100ms", "max": "1s", "max_elapsed": "600s"},
        server={"listen": f"127.0.0.1:{probe}"},
    )
    proc = job.start()
    try:
        wait_for(lambda: readyz(probe) == 200, 60, "the worker")
        first = _fill(job, 2, 400)
        wait_for(lambda: len(job.keys()) == 2, 30, "the first objects")

        own_r2.stop()
        down = time.monotonic()
        total = first
        for i in range(40):  # 40 files of 400 rows arrive while the store is down
            staged = job.dir / f"s{i}.jsonl"
            write_jsonl(staged, [{"id": total + j, "pad": f"{total + j:x}" * 8} for j in range(400)])
            staged.rename(job.inbox / f"later{i:03d}.jsonl")
            total += 400
        wait_for(lambda: readyz(probe) == 503, 30, "readiness to turn false")
        reason = httpx.get(f"http://127.0.0.1:{probe}/readyz", timeout=2).json()["reason"]
        assert "spool.max_bytes" in reason and "intake paused" in reason
        waiting = lambda: len(list(job.inbox.glob("later*.jsonl")))  # noqa: E731
        time.sleep(max(0.0, 30 - (time.monotonic() - down)))
        assert waiting() > 20, "intake went on although the spool was full"
        spool = sum(p.stat().st_size for p in (job.dir / "spool").glob("*/objects/*.parquet"))
        assert spool < 24 * 1024 + 3 * 16 * 1024  # bounded: the mark plus what was in flight

        job.r2 = own_r2.start()
        wait_for(lambda: waiting() == 0 and readyz(probe) == 200, 120, "intake to resume and drain")
        wait_for(lambda: sum(1 for _ in job.rows()) == total, 60, "every row in R2")
        _assert_exactly_once(job, total)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    events = [e.get("event") for e in logs_of(err)]
    assert "spool over spool.max_bytes; intake paused" in events
    assert "spool below its low-water mark; intake resumed" in events


def test_an_unreachable_store_turns_readiness_false_and_once_gives_up_in_its_own_time(job: Job) -> None:
    job.endpoint_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    write_jsonl(job.inbox / "a.jsonl", [{"id": i} for i in range(5)])
    probe = free_port()
    job.configure(
        sources={"settle_seconds": "50ms"},
        batch={"max_age": "100ms"},
        retry={"initial": "100ms", "max": "500ms", "max_elapsed": "24h", "once_max_elapsed": "3s"},
        server={"listen": f"127.0.0.1:{probe}", "ready_failure_seconds": "2s"},
    )
    started = time.monotonic()
    r = job.run_once(timeout=60)
    assert r.returncode == 1, r.stderr
    assert time.monotonic() - started < 30  # not retry.max_elapsed (24 h)
    assert "not uploaded: 5 records in 1 object, kept in" in r.stderr
    retries = [e for e in logs_of(r.stderr) if e.get("event") == "transient failure; retrying"]
    assert retries and all(e["level"] == "warning" and "wait" in e and e["error"] for e in retries)

    proc = job.start()
    try:
        wait_for(lambda: readyz(probe) is not None, 60, "the probe server")
        wait_for(lambda: readyz(probe) == 503, 20, "readiness to turn false")
        reason = httpx.get(f"http://127.0.0.1:{probe}/readyz", timeout=2).json()["reason"]
        assert "requests to the store have failed for" in reason
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
