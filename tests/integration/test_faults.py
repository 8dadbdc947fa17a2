"""Faults injected for real: a misbehaving TCP proxy in front of SeaweedFS, and SeaweedFS stopped."""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from ingest.local.seaweed import free_port_pairs
from tests.conftest import start_local_r2, stop_local_r2
from tests.faultproxy import FaultProxy, Faults
from tests.integration.conftest import Job, logs_of, write_jsonl


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


def _wait_port_closed(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} still open")


def test_seaweedfs_stopped_for_ten_seconds_mid_run(job: Job, tmp_path: Path) -> None:
    s3_port, api_port = free_port_pairs(2)
    own = start_local_r2(tmp_path / "own-r2", s3_port=s3_port, api_port=api_port)
    try:
        job.r2 = own
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
        stop_local_r2(own)
        _wait_port_closed(s3_port)
        time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
        restarted = start_local_r2(tmp_path / "own-r2", s3_port=s3_port, api_port=api_port)
        own = restarted
        job.r2 = restarted
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, "".join(first) + err
        events = logs_of("".join(first) + err)
        assert any(e.get("event") == "transient failure; retrying" for e in events)
        _assert_exactly_once(job, total)
    finally:
        stop_local_r2(own)
