"""`ingest run` as a daemon: settling files, probes, permanent refusals, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import Job, free_port, logs_of, readyz, wait_for, write_jsonl


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out, err


def test_file_still_being_written_is_taken_only_when_complete(job: Job) -> None:
    port = free_port()
    job.configure(
        sources={"settle_seconds": "1s"},
        batch={"max_age": "300ms"},
        server={"listen": f"127.0.0.1:{port}"},
    )
    proc = job.start()
    try:
        wait_for(lambda: readyz(port) is not None, 60, "the probe server")
        assert readyz(port) == 200
        path = job.inbox / "growing.jsonl"
        written = 0
        with path.open("w") as fh:
            for _ in range(12):  # ~3 s of writing, never idle for the 1 s settle time
                fh.write("".join(json.dumps({"id": written + i}) + "\n" for i in range(10)))
                fh.flush()
                written += 10
                time.sleep(0.25)
                assert path.exists(), "claimed while still being written"
        assert job.keys() == []
        wait_for(lambda: not path.exists() and job.keys(), 30, "the finished file to be ingested")
        ids = sorted(int(r["id"]) for r in job.rows())  # type: ignore[call-overload]
        assert ids == list(range(written))  # all of it, in one piece: never a partial read

        # Temporary and hidden files are never taken; renaming into place makes them eligible.
        tmp = write_jsonl(job.inbox / "next.jsonl.tmp", [{"id": 1000}])
        hidden = write_jsonl(job.inbox / ".hidden.jsonl", [{"id": 1001}])
        time.sleep(2.5)
        assert tmp.exists() and hidden.exists()
        tmp.rename(job.inbox / "next.jsonl")
        wait_for(lambda: len(job.rows()) == written + 1, 30, "the renamed file")
    finally:
        _, err = _stop(proc)
    assert any(e.get("event") == "uploaded" for e in logs_of(err))


def _refused(reason: str) -> bool:
    return "denied" in reason.lower() or "403" in reason


def _readiness(port: int) -> dict[str, Any]:
    try:
        answer: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
        return answer
    except httpx.HTTPError:
        return {"reason": ""}


def test_permanent_refusal_keeps_data_local_and_fails_readiness(job: Job) -> None:
    """A bucket the credentials may not use: no retry storm, data kept, /readyz 503, --once exits 1."""
    write_jsonl(job.inbox / "a.jsonl", [{"id": i} for i in range(30)])
    job.configure()
    r = job.run_once(R2_BUCKET_NAME="not-our-bucket")
    assert r.returncode == 1, r.stderr
    assert "not uploaded: 30 records in 1 object, kept in" in r.stderr
    assert "not acknowledged: 1 source unit;" in r.stderr
    assert not any(e.get("event") == "transient failure; retrying" for e in logs_of(r.stderr))
    kept = list((job.dir / "spool").glob("*/objects/*.parquet"))
    assert len(kept) == 1
    claimed = [p for p in (job.inbox / ".ingest" / "claimed").rglob("*--a.jsonl")]
    assert len(claimed) == 1
    assert f"  {claimed[0]}: rows in an object that was not uploaded" in r.stderr.splitlines()
    status = subprocess.run(
        [*job.command()[:-1], "status", "--json"], env=job.env(), capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    (worker,) = json.loads(status.stdout)
    assert worker["backlog_objects"] == 1 and worker["backlog_bytes"] == kept[0].stat().st_size
    assert worker["unacknowledged_units"] == 1 and not worker["running"]
    assert worker["last_upload_at"] is None

    port = free_port()
    job.configure(server={"listen": f"127.0.0.1:{port}"}, batch={"max_age": "300ms"})
    proc = job.start(R2_BUCKET_NAME="not-our-bucket")
    try:
        # (503 also while it starts: wait for the refusal itself, then it stays not ready)
        wait_for(lambda: _refused(_readiness(port)["reason"]), 60, "readiness to say: refused")
        for _ in range(3):
            answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            assert answer.status_code == 503 and _refused(answer.json()["reason"])
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        assert "ingest_upload_failures_total" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    finally:
        _stop(proc)
    # With the right bucket, the kept claim is picked up again and nothing is lost.
    r = job.run_once()
    assert r.returncode == 0, r.stderr
    assert sorted(int(x["id"]) for x in job.rows()) == list(range(30))  # type: ignore[call-overload]
    assert not Path(claimed[0]).exists()


def test_sigterm_finishes_the_files_already_taken_and_exits_0(job: Job) -> None:
    port = free_port()
    job.configure(
        sources={"settle_seconds": "100ms"},
        batch={"max_records": 50_000},
        server={"listen": f"127.0.0.1:{port}"},
    )
    proc = job.start()
    try:
        wait_for(lambda: readyz(port) == 200, 60, "the worker to be ready")
        rows = [{"id": i, "pad": "x" * 100} for i in range(400_000)]
        staged = write_jsonl(job.dir / "big.jsonl", rows)
        staged.rename(job.inbox / "big.jsonl")
        wait_for(lambda: not (job.inbox / "big.jsonl").exists(), 30, "the file to be claimed")
        proc.send_signal(signal.SIGTERM)  # mid-file: the rest of it must still be read and uploaded
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = logs_of(err)
    stop = next(
        i for i, e in enumerate(events) if e.get("event") == "stopping intake; finishing what was read"
    )
    before = sum(
        e["records"] for e in events[:stop] if e.get("event") == "uploaded" and e.get("kind") == "data"
    )
    assert before < 400_000, "SIGTERM came after the whole file was uploaded: nothing was left to finish"
    ids = [int(r["id"]) for r in job.rows()]  # type: ignore[call-overload]
    assert len(ids) == len(set(ids)) == 400_000
    assert not list((job.inbox / ".ingest" / "claimed").rglob("*big.jsonl"))  # acknowledged


def test_probes_and_uploads_do_not_wait_for_a_slow_journal(job: Job) -> None:
    port = free_port()
    job.configure(
        sources={"settle_seconds": "50ms"},
        batch={"max_age": "100ms"},
        server={"listen": f"127.0.0.1:{port}"},
    )
    proc = job.start(INGEST_JOURNAL_DELAY="2")  # every journal commit takes 2 s
    try:
        wait_for(lambda: readyz(port) is not None, 60, "the probe server")
        for i in range(3):
            write_jsonl(job.inbox / f"f{i}.jsonl", [{"id": i * 10 + n} for n in range(10)])
        latencies = []
        deadline = time.monotonic() + 20
        with httpx.Client(timeout=5) as http:
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.1)
        latencies.sort()
        assert latencies[int(len(latencies) * 0.95)] < 0.1, latencies[-5:]  # while commits take 2 s
        wait_for(lambda: len(job.rows()) == 30, 120, "every row, through the slow journal")
    finally:
        _stop(proc)


def test_a_taken_probe_port_is_a_config_error_said_after_the_sources_own(job: Job) -> None:
    """Exit 2 naming server.listen when the port is taken; but a source's config error comes first
    (the port used to be bound first: fixing the port only revealed the next error)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        job.configure(server={"listen": f"127.0.0.1:{port}"})
        busy = subprocess.run(
            job.command(), cwd=job.dir, env=job.env(), capture_output=True, text=True, timeout=120
        )
        assert busy.returncode == 2, busy.stderr
        assert (
            busy.stderr.strip()
            .splitlines()[-1]
            .startswith(f"config error: server.listen: cannot listen on '127.0.0.1:{port}'")
        )
        job.configure(server={"listen": f"127.0.0.1:{port}"}, sources={"path": str(job.dir / "no-such-dir")})
        both = subprocess.run(
            job.command(), cwd=job.dir, env=job.env(), capture_output=True, text=True, timeout=120
        )
        assert both.returncode == 2, both.stderr
        last = both.stderr.strip().splitlines()[-1]
        assert "sources.0.path" in last and "does not exist" in last and "server.listen" not in both.stderr
