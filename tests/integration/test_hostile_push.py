"""The HTTP source under hostile-but-legal use (issue 30): concurrent repeats of one Idempotency-Key,
reserved table names, deep, wide and badly encoded records, array bodies, and what readiness means.
Real worker, real local R2, objects read back with pyarrow, polars and DuckDB."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import Job, logs_of, readable_rows, readyz, wait_for
from tests.integration.test_http import TOKEN, Worker, ndjson
from tests.integration.test_http import _no_worker_outlives_its_test as _no_worker_outlives_its_test


def _ids(job: Job, tmp: Path) -> Counter[int]:
    return Counter(int(r["id"]) for r in readable_rows(job, tmp))


def _parallel(n: int, send: Any) -> list[httpx.Response]:
    """`send(i)` from n threads released at once."""
    answers: list[httpx.Response | None] = [None] * n
    gate = threading.Barrier(n)

    def one(i: int) -> None:
        gate.wait()
        answers[i] = send(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert all(a is not None for a in answers), "a request got no answer"
    return [a for a in answers if a is not None]


# -- 1. one Idempotency-Key sent concurrently ---------------------------------------------------------


def test_twenty_concurrent_posts_of_one_key_ingest_it_once_and_all_get_the_first_answer(
    job: Job, tmp_path: Path
) -> None:
    worker = Worker(job).start()
    bodies = {k: ndjson([{"id": k * 1000 + i, "pad": "x" * 30} for i in range(1000)]) for k in range(3)}

    def send(i: int) -> httpx.Response:
        k = i % 3
        return worker.post(bodies[k], idempotency_key=f"key-{k}", timeout=60)

    started = time.monotonic()
    answers = _parallel(60, send)
    assert time.monotonic() - started < 30  # nobody waited for a shutdown to be answered
    assert [a.status_code for a in answers] == [202] * 60
    for k in range(3):
        mine = [a for i, a in enumerate(answers) if i % 3 == k]
        assert len({a.json()["request_id"] for a in mine}) == 1  # the first answer, replayed
        assert sum(a.headers.get("idempotent-replayed") == "true" for a in mine) == 19

    # One key, two different bodies at once: one is taken, the other refused, never both.
    for round_ in range(5):
        pair = _parallel(
            2,
            lambda i, r=round_: worker.post(
                ndjson([{"id": 10_000 + r * 2 + i}]), idempotency_key=f"race-{r}"
            ),
        )
        assert sorted(a.status_code for a in pair) == [202, 422], [a.text for a in pair]
    worker.stop()
    ids = _ids(job, tmp_path)
    assert max(ids.values()) == 1
    assert {i for i in ids if i < 10_000} == set(range(3000))
    assert len([i for i in ids if i >= 10_000]) == 5


# -- 6. names the worker uses itself ------------------------------------------------------------------


def test_tables_named_like_the_workers_own_prefixes_are_refused(job: Job, tmp_path: Path) -> None:
    template = "{prefix}{table}/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet"
    worker = Worker(job, output={"prefix": job.prefix, "key_template": template}).start()
    for name in ("_landing", "_errors", "_anything"):
        refused = worker.post(ndjson([{"id": 1}]), table=name)
        assert refused.status_code == 400 and "reserved" in refused.json()["error"], refused.text
    assert worker.post(ndjson([{"id": 2}]), table="events").status_code == 202
    worker.stop()
    assert job.landing_keys() == [] and job.error_keys() == []
    assert [r["id"] for r in readable_rows(job, tmp_path)] == [2]
    job.configure(sources=[{"kind": "http", "token": TOKEN, "table": "_errors"}])
    bad = job.run_once()
    assert bad.returncode == 2 and "reserved" in bad.stderr and "Traceback" not in bad.stderr


# -- 7, 9, 10, 15. records no reader can open, arrays, BOMs ---------------------------------------------


def _deep(levels: int) -> str:
    return '{"id": 0, "deep": ' + "[" * levels + "]" * levels + "}"


def test_deep_records_are_rejected_by_line_and_later_starts_are_unharmed(job: Job, tmp_path: Path) -> None:
    worker = Worker(job).start()
    for levels in (130, 100_000):
        body = f'{{"id": {levels}}}\n{_deep(levels)}\n{{"id": {levels + 1}}}\n'.encode()
        answer = worker.post(body)
        assert answer.status_code == 202, answer.text
        assert answer.json()["accepted"] == 2
        [rejected] = answer.json()["rejected"]
        assert rejected["line"] == 2 and "nest" in rejected["reason"]
    array = worker.post(("[" + _deep(100_000) + ', {"id": 7}]').encode(), content_type="application/json")
    assert array.status_code in (202, 400), array.text
    if array.status_code == 202:
        assert array.json()["accepted"] == 1 and array.json()["rejected"][0]["line"] == 1
    worker.stop()
    worker.start()  # the journal and the table's schema still load
    assert worker.post(ndjson([{"id": 9}])).status_code == 202
    worker.stop()
    expected = {130, 131, 100_000, 100_001, 9} | ({7} if array.status_code == 202 else set())
    assert set(_ids(job, tmp_path)) == expected


def test_invalid_utf8_and_lone_surrogates_are_rejected_by_line_and_never_stored(
    job: Job, tmp_path: Path
) -> None:
    worker = Worker(job).start()
    cases = [
        b'{"id": 1, "name": "caf\xe9"}',  # latin-1 inside a string
        b'{"id": 2, "name": "\\ud800"}',  # a lone surrogate, escaped
        b'{"id": 3, "n\xff": 1}',  # in a field name
        b'{"id": 4, "name": "\\udc80\\ud800"}',  # reversed pair
    ]
    for n, bad in enumerate(cases):
        good = json.dumps({"id": 100 + n, "name": "ok"}).encode()
        for body in (bad + b"\n" + good + b"\n", good + b"\n" + bad + b"\n"):
            answer = worker.post(body)
            assert answer.status_code == 202, answer.text
            assert answer.json()["accepted"] == 1
            [rejected] = answer.json()["rejected"]
            assert rejected["line"] == (1 if body.startswith(bad) else 2), rejected
    array = worker.post(b'[{"id": 5, "name": "\\ud800"}, {"id": 6}]', content_type="application/json")
    assert array.status_code == 202 and array.json()["accepted"] == 1, array.text
    worker.stop()
    # Every object opens in pyarrow, polars and DuckDB; each good line was sent twice.
    assert _ids(job, tmp_path) == Counter({100: 2, 101: 2, 102: 2, 103: 2, 6: 1})


def test_a_body_of_ten_thousand_differently_keyed_records_is_bounded_by_max_columns(
    job: Job, tmp_path: Path
) -> None:
    worker = Worker(job).start()  # output.max_columns: 1000 by default
    body = ndjson([{"id": i, f"k{i}": i} for i in range(10_000)])
    started = time.monotonic()
    assert worker.post(body, timeout=60).status_code == 202
    worker.stop()
    assert time.monotonic() - started < 60
    rows = readable_rows(job, tmp_path)
    assert sorted(int(r["id"]) for r in rows) == list(range(10_000))
    for r in rows:  # every key kept: as a column, or in `_extra`
        i = int(r["id"])
        kept = r.get(f"k{i}")
        if kept is None:
            kept = json.loads(r["_extra"])[f"k{i}"]
        assert kept == i
    assert max(len(r) for r in rows) <= 1000


def test_a_bom_before_a_json_array_is_skipped_like_before_json_lines(job: Job, tmp_path: Path) -> None:
    worker = Worker(job).start()
    array = worker.post(
        b"\xef\xbb\xbf" + json.dumps([{"id": 1}, {"id": 2}]).encode(), content_type="application/json"
    )
    assert array.status_code == 202 and array.json()["accepted"] == 2, array.text
    lines = worker.post(b"\xef\xbb\xbf" + ndjson([{"id": 3}]))
    assert lines.status_code == 202 and lines.json()["accepted"] == 1
    worker.stop()
    assert sorted(_ids(job, tmp_path)) == [1, 2, 3]
    assert job.dead_letters() == []


# -- 17. ready means ready for every route ---------------------------------------------------------------


def test_once_readyz_answers_200_records_are_taken(job: Job, tmp_path: Path) -> None:
    # Accepted requests not yet uploaded when the worker dies are read again at the next start:
    # that takes a while, and readiness must wait for it.
    worker = Worker(job, batch={"max_age": "300s", "max_records": 10_000_000}).start()
    for part in range(8):
        rows = [{"id": part * 25_000 + i, "pad": "y" * 200} for i in range(25_000)]
        assert worker.post(ndjson(rows), timeout=60).status_code == 202
    worker.kill()
    proc = job.start()
    Worker.started.append(proc)
    worker.proc = proc
    while True:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{worker.port}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.002)
    answer = worker.post(ndjson([{"id": -1}]))
    assert answer.status_code == 202, answer.text
    worker.stop()
    assert sorted(_ids(job, tmp_path)) == [-1, *range(200_000)]


# -- 11. more connections than file descriptors ---------------------------------------------------------


def _limited(nofile: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


def test_idle_connections_beyond_the_descriptor_limit_never_starve_probes_or_uploads(
    job: Job, tmp_path: Path
) -> None:
    worker = Worker(job)
    proc = subprocess.Popen(  # a hard limit of 256 open files: the connections alone would exhaust it
        job.command(),
        cwd=job.dir,
        env=job.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: _limited(256),
    )
    Worker.started.append(proc)
    worker.proc = proc
    wait_for(worker._taking, 90, "the http source to take requests")
    idle: list[socket.socket] = []
    try:
        for _ in range(400):
            idle.append(socket.create_connection(("127.0.0.1", worker.port), timeout=5))
        time.sleep(1)
        for n in range(5):
            assert readyz(worker.port) == 200  # probes get through
            answer = worker.post(ndjson([{"id": n}]), timeout=10)
            assert answer.status_code == 202, answer.text
        time.sleep(1)
        assert proc.poll() is None
    finally:
        for s in idle:
            s.close()
    worker.stop()
    assert sorted(_ids(job, tmp_path)) == list(range(5))
    assert "Traceback" not in worker.stderr and "Too many open files" not in worker.stderr
    shed = [e for e in logs_of(worker.stderr) if "too many connections" in str(e.get("event"))]
    assert 1 <= len(shed) <= 3, shed  # once per interval, with counts
    assert len(worker.stderr.splitlines()) < 100
