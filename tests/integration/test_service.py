"""The worker as a service: the systemd notify handshake over a real datagram socket, probes that follow
the store, /metrics that agree with what R2 holds, and dashboards and alerts that only query names the
worker exports."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import Job, OwnR2, free_port, readyz, wait_for, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _receive(sock: socket.socket, seconds: float) -> list[str]:
    """Every datagram received in the next `seconds` (each: newline-separated KEY=value lines)."""
    deadline = time.monotonic() + seconds
    got = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_systemd_handshake_ready_watchdog_stopping(job: Job, tmp_path: Path, abstract: bool) -> None:
    name = f"ingest-test-{uuid.uuid4().hex[:8]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify")
        sock.bind(address)
    probe = free_port()
    job.configure(server={"listen": f"127.0.0.1:{probe}"})
    with sock:
        proc = job.start(NOTIFY_SOCKET=address, WATCHDOG_USEC="400000")  # a ping every 0.2 s
        try:
            sock.settimeout(60)
            first = sock.recv(4096).decode().splitlines()
            assert first[0] == "READY=1" and first[1].startswith("STATUS=running: directory:")
            assert readyz(probe) == 200  # READY=1 came once it really works
            pings = _receive(sock, 1.0)
            assert 3 <= pings.count("WATCHDOG=1") <= 8, pings  # fed from the loop, every 0.2 s
            proc.send_signal(signal.SIGTERM)
            after = "\n".join(_receive(sock, 3.0)).splitlines()
            assert "STOPPING=1" in after and "STATUS=draining: finishing what was read" in after
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]


def _metrics(port: int) -> tuple[str, dict[str, float]]:
    """The /metrics text, and every unlabeled sample plus labeled samples summed by name."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values: Counter[str] = Counter()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})? (\S+)", line).groups()  # type: ignore[union-attr]
            values[name] += float(value)
    return text, dict(values)


def _exported(text: str) -> set[str]:
    """Every series name /metrics can carry, from its TYPE lines (labeled ones too, used or not)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        base = name.removesuffix("_total")
        names |= {name, base}
        names |= {f"{base}_total"} if kind == "counter" else set()
        names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if kind == "histogram" else set()
    return names


def _queried() -> set[str]:
    """Metric names in the Grafana dashboard's queries and the Prometheus alerts."""
    dashboard = json.loads((REPO / "config/grafana/ingest.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    alerts = yaml.safe_load((REPO / "config/prometheus/alerts.yaml").read_text())
    exprs += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    return set(re.findall(r"\bingest_[a-z0-9_]+", "\n".join(exprs)))


def test_probes_follow_the_store_and_metrics_equal_what_r2_holds(job: Job, own_r2: OwnR2) -> None:
    probe = free_port()
    job.configure(
        sources={"settle_seconds": "50ms"},
        batch={"max_records": 250, "max_age": "200ms"},
        retry={"initial": "100ms", "max": "500ms", "max_elapsed": "600s"},
        server={"listen": f"127.0.0.1:{probe}", "ready_failure_seconds": "1s"},
    )
    proc = job.start()
    try:
        wait_for(lambda: readyz(probe) == 200, 60, "the worker")
        assert httpx.get(f"http://127.0.0.1:{probe}/healthz", timeout=2).status_code == 200
        for i in range(4):  # each with one line that is not JSON: a dead letter
            lines = [json.dumps({"id": i * 500 + j}) for j in range(500)] + ["{broken"]
            (job.inbox / f"a{i}.jsonl").write_text("\n".join(lines) + "\n")
        wait_for(lambda: len(job.rows()) == 2000, 60, "the first 2,000 rows")

        text, m = _metrics(probe)
        keys = job.keys()
        s3 = job.r2.token_s3()
        sizes = sum(s3.head_object(Bucket=job.r2.bucket, Key=k)["ContentLength"] for k in keys)
        assert m["ingest_records_uploaded_total"] == 2000
        assert m["ingest_records_read_total"] == 2000
        assert m["ingest_objects_uploaded_total"] == len(keys) >= 8  # batches of at most 250
        assert m["ingest_bytes_uploaded_total"] == sizes
        assert m["ingest_dead_letters_total"] == 4
        assert m["ingest_upload_duration_seconds_count"] >= len(keys)
        assert m["ingest_ready"] == 1 and m["ingest_spool_objects"] == 0
        missing = _queried() - _exported(text)
        assert not missing, f"dashboard/alerts query names /metrics does not have: {sorted(missing)}"

        own_r2.stop()
        write_jsonl(job.inbox / "b.jsonl", [{"id": 2000 + j} for j in range(100)])
        wait_for(lambda: readyz(probe) == 503, 30, "readiness to turn false with the store gone")
        reason = httpx.get(f"http://127.0.0.1:{probe}/readyz", timeout=2).json()["reason"]
        assert reason and ("connect" in reason.lower() or "endpoint" in reason.lower()), reason
        _, m = _metrics(probe)
        assert m["ingest_ready"] == 0 and m["ingest_spool_objects"] >= 1
        assert m["ingest_spool_oldest_object_timestamp_seconds"] <= time.time()
        assert httpx.get(f"http://127.0.0.1:{probe}/healthz", timeout=2).status_code == 200  # alive

        job.r2 = own_r2.start()
        wait_for(lambda: readyz(probe) == 200, 60, "readiness back with the store")
        wait_for(lambda: len(job.rows()) == 2100, 60, "the rows written while it was down")
        ids = Counter(int(r["id"]) for r in job.rows())  # type: ignore[call-overload]
        assert set(ids) == set(range(2100)) and max(ids.values()) == 1
        # (an object is in R2 a moment before the worker drops it from its spool)
        wait_for(lambda: _metrics(probe)[1]["ingest_spool_objects"] == 0, 30, "the spool to empty")
        _, m = _metrics(probe)
        assert m["ingest_records_uploaded_total"] == 2100 and m["ingest_spool_objects"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
