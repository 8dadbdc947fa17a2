"""The HTTP source against a real worker process and the real local R2: what a 202 promises."""

from __future__ import annotations

import gzip
import json
import random
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import duck
from tests.integration.conftest import Job, OwnR2, free_port, logs_of, readable_rows, wait_for

TOKEN = "push-token-0123456789"


class Worker:
    """`ingest run` with an http source, and a client for it."""

    started: ClassVar[list[subprocess.Popen[str]]] = []  # processes of the running test (killed at its end)

    def __init__(self, job: Job, source: dict[str, Any] | None = None, **sections: dict[str, Any]) -> None:
        self.job = job
        self.port = free_port()
        sections = {
            "batch": {"max_age": "300ms"},
            **sections,
            "server": {"listen": f"127.0.0.1:{self.port}", **sections.get("server", {})},
        }
        job.configure(sources=[{"kind": "http", "token": TOKEN, **(source or {})}], **sections)
        self.proc: subprocess.Popen[str] | None = None
        self.stderr = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/records"

    def start(self, **env: str) -> Worker:
        self.proc = self.job.start(**env)
        Worker.started.append(self.proc)
        wait_for(self._taking, 90, "the http source to take requests")
        return self

    def _taking(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"worker exited {self.proc.returncode}: {self.proc.communicate()[1][-3000:]}"
            )
        try:
            answer = self.post(b"", timeout=2)
        except httpx.HTTPError:
            return False
        return answer.status_code in (200, 202)  # 200: ack = "upload"

    def post(
        self,
        body: bytes,
        table: str | None = None,
        content_type: str = "application/x-ndjson",
        token: str | None = TOKEN,
        timeout: float = 30,
        **headers: str,
    ) -> httpx.Response:
        sent = {"content-type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        url = self.url if table is None else f"{self.url}/{table}"
        return httpx.post(url, content=body, headers=sent, timeout=timeout)

    def stop(self) -> str:
        """SIGTERM: drain and exit 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=90)
        self.stderr += err
        assert self.proc.returncode == 0, err[-3000:]
        return err

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        _, err = self.proc.communicate(timeout=30)
        self.stderr += err


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    yield
    for proc in Worker.started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    Worker.started.clear()


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return bytes(sink.getvalue().to_pybytes())


def ids_in(job: Job) -> Counter[int]:
    return Counter(int(r["id"]) for r in job.rows())


def test_twenty_concurrent_clients_every_record_exactly_once(job: Job) -> None:
    worker = Worker(job).start()
    answers: list[int] = []
    failures: list[str] = []

    def client(c: int) -> None:
        with httpx.Client(timeout=60) as http:
            for r in range(40):
                first = (c * 40 + r) * 500
                body = ndjson([{"id": first + i, "client": c, "payload": "x" * 40} for i in range(500)])
                answer = http.post(
                    worker.url,
                    content=body,
                    headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/x-ndjson"},
                )
                if answer.status_code != 202 or answer.json()["accepted"] != 500:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")
                answers.append(answer.status_code)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures, failures[:3]
    assert answers.count(202) == 800
    metrics = httpx.get(f"http://127.0.0.1:{worker.port}/metrics").text
    commits = float(re.search(r'ingest_http_commits_total\{source="http"\} (\S+)', metrics).group(1))  # type: ignore[union-attr]
    assert commits < 800, "concurrent requests did not share their fsyncs"
    worker.stop()
    ids = ids_in(job)
    assert sorted(ids) == list(range(20 * 40 * 500))
    assert max(ids.values()) == 1
    assert not list((job.dir / "spool").glob("*/http/*")), "segments are removed once their rows are in R2"


def test_sigkill_while_clients_post_loses_no_accepted_record_and_duplicates_none(job: Job) -> None:
    """Clients retry every request that got no 202 with its Idempotency-Key, across three SIGKILLs."""
    worker = Worker(job).start()
    rng = random.Random(7)
    requests = [(f"key-{n}", ndjson([{"id": n * 100 + i} for i in range(100)])) for n in range(600)]
    todo = list(requests)
    accepted: set[str] = set()
    retried = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                with lock:
                    if not todo:
                        return
                    key, body = todo.pop(0)
                try:
                    answer = http.post(
                        worker.url,
                        content=body,
                        headers={
                            "authorization": f"Bearer {TOKEN}",
                            "content-type": "application/x-ndjson",
                            "idempotency-key": key,
                        },
                    )
                    ok = answer.status_code == 202
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        accepted.add(key)
                    else:
                        todo.append((key, body))  # sent again later, with the same key
                        retried[0] += 1
                if not ok:
                    time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.3, 1.5))
            worker.kill()
            worker.start()
        deadline = time.monotonic() + 180
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert accepted == {k for k, _ in requests}
    assert retried[0] > 0, "no kill hit a request in flight: the test proved nothing"
    worker.stop()
    ids = ids_in(job)
    duplicated = [i for i, n in ids.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} ids twice, e.g. {duplicated[:5]}"
    assert sorted(ids) == list(range(600 * 100))


def test_a_retried_idempotency_key_is_ingested_once_also_after_a_restart(job: Job) -> None:
    worker = Worker(job).start()
    body = ndjson([{"id": i} for i in range(10)])
    first = worker.post(body, idempotency_key="order-42")
    assert first.status_code == 202
    again = worker.post(body, idempotency_key="order-42")
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other = worker.post(ndjson([{"id": 99}]), idempotency_key="order-42")
    assert other.status_code == 422
    worker.kill()  # not even a drain: the answer was kept with the records
    worker.start()
    after = worker.post(body, idempotency_key="order-42")
    assert after.status_code == 202 and after.json() == first.json()
    worker.stop()
    assert sorted(ids_in(job).elements()) == list(range(10))


def test_bodies_status_codes_and_dead_letters(job: Job) -> None:
    template = "{prefix}{table}/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet"
    worker = Worker(
        job,
        {"tables": ["default", "clicks"], "max_request_bytes": "64KiB", "tokens": ["next-token-abcdef"]},
        output={"prefix": job.prefix, "key_template": template},
    ).start()
    sent: list[int] = []

    def rows(first: int, n: int) -> list[dict[str, Any]]:
        sent.extend(range(first, first + n))
        return [{"id": i, "name": f"n{i}"} for i in range(first, first + n)]

    rotated = worker.post(ndjson(rows(400, 1)), token="next-token-abcdef")  # either token is taken
    assert rotated.status_code == 202
    # two gzip members in one body (a writer that compresses a piece at a time): both are read
    members = gzip.compress(ndjson(rows(0, 30))) + gzip.compress(ndjson(rows(30, 20)))
    gz = worker.post(members, content_encoding="gzip")
    assert gz.status_code == 202 and gz.json()["accepted"] == 50
    zs = worker.post(zstd(ndjson(rows(50, 50))), content_encoding="zstd")
    assert zs.status_code == 202 and zs.json()["accepted"] == 50
    array = worker.post(json.dumps(rows(100, 20)).encode(), content_type="application/json")
    assert array.status_code == 202 and array.json()["accepted"] == 20

    good = rows(200, 3)
    mixed = b"\n".join(
        [
            json.dumps(good[0]).encode(),
            b"{not json",
            json.dumps(good[1]).encode(),
            b"[1, 2]",
            json.dumps(good[2]).encode(),
        ]
    )
    answer = worker.post(mixed)
    assert answer.status_code == 202
    assert answer.json()["accepted"] == 3
    assert [(r["line"], r["reason"].split(":")[0]) for r in answer.json()["rejected"]] == [
        (2, "invalid JSON"),
        (4, "not a JSON object"),
    ]

    assert worker.post(mixed, table="nope").status_code == 404  # not in `tables`: nothing taken
    assert worker.post(b'{"id": -1}', table="Bad Name!").status_code in (400, 404)
    assert worker.post(b'{"id": -1}', table="UPPER").status_code == 400
    assert worker.post(b'{"id": -1}', token=None).status_code == 401
    assert worker.post(b'{"id": -1}', token="wrong").status_code == 401
    for n in range(5):
        refused = worker.post(b'{"id": -1}', token=f"guess-{n}")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    big = ndjson([{"id": -1, "pad": "x" * 1000} for _ in range(100)])  # ~100 KiB > 64 KiB
    assert worker.post(big).status_code == 413
    assert worker.post(gzip.compress(big), content_encoding="gzip").status_code == 413  # once inflated
    assert worker.post(b'{"id": -1}', content_type="text/csv").status_code == 415
    assert worker.post(b'{"id": -1}', content_encoding="br").status_code == 415
    assert worker.post(ndjson(rows(300, 1)), table="clicks").status_code == 202
    worker.stop()

    assert sorted(ids_in(job).elements()) == sorted(sent)
    letters = job.dead_letters()
    assert sorted((d["line"], d["raw"]) for d in letters) == [(2, "{not json"), (4, "[1, 2]")]
    assert all(d["source"] == f"http request {answer.json()['request_id']}" for d in letters)
    for secret in (TOKEN, "next-token-abcdef", "guess-0"):
        assert secret not in worker.stderr


def test_strict_refuses_the_whole_request(job: Job) -> None:
    worker = Worker(job, {"strict": True}).start()
    answer = worker.post(b'{"id": 1}\n{oops\n{"id": 2}\n')
    assert answer.status_code == 400
    assert answer.json()["rejected"] == [{"line": 2, "reason": answer.json()["rejected"][0]["reason"]}]
    assert worker.post(b'{"id": 3}\n').status_code == 202
    worker.stop()
    assert sorted(ids_in(job).elements()) == [3]
    assert job.dead_letters() == []


def test_two_tables_get_their_own_keys_schemas_and_sequences(job: Job) -> None:
    template = "{prefix}{table}/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet"
    worker = Worker(job, output={"prefix": job.prefix, "key_template": template}).start()
    for n in range(3):  # three batches each (max_age 300 ms between them)
        assert worker.post(ndjson([{"id": n, "url": f"/p{n}"}]), table="clicks").status_code == 202
        assert worker.post(ndjson([{"id": n, "total": n * 1.5}]), table="orders").status_code == 202
        time.sleep(0.8)
    worker.stop()
    keys = job.keys()
    day = time.strftime("%Y/%m/%d", time.gmtime())
    clicks = [k for k in keys if k.startswith(f"{job.prefix}clicks/{day}/")]
    orders = [k for k in keys if k.startswith(f"{job.prefix}orders/{day}/")]
    assert len(clicks) + len(orders) == len(keys)
    assert clicks[0].endswith("ingested_0001.parquet") and orders[0].endswith("ingested_0001.parquet")
    for key in clicks:
        assert job.read(key).schema.names == ["id", "url"]
    for key in orders:
        assert job.read(key).schema.names == ["id", "total"]
    assert sorted(r["id"] for k in clicks for r in job.read(k).to_pylist()) == [0, 1, 2]
    assert sorted(r["total"] for k in orders for r in job.read(k).to_pylist()) == [0.0, 1.5, 3.0]


def test_without_table_in_the_key_template_other_tables_are_refused(job: Job) -> None:
    worker = Worker(job).start()
    refused = worker.post(ndjson([{"id": 1}]), table="clicks")
    assert refused.status_code == 404 and "{table}" in refused.json()["error"]
    assert worker.post(ndjson([{"id": 2}]), table="default").status_code == 202
    worker.stop()
    assert [r["id"] for r in job.rows()] == [2]
    data_keys = job.keys()
    assert data_keys and all("/clicks/" not in k for k in data_keys)


def test_503_with_retry_after_while_the_store_is_down_and_the_spool_full(job: Job, own_r2: OwnR2) -> None:
    worker = Worker(job, spool={"dir": str(job.dir / "spool"), "max_bytes": "20KiB"}).start()
    sent: list[int] = []
    n = 0
    own_r2.stop()
    refused = None
    deadline = time.monotonic() + 60
    while refused is None and time.monotonic() < deadline:
        body = ndjson([{"id": n * 200 + i, "pad": f"{random.random()}"} for i in range(200)])
        answer = worker.post(body)
        if answer.status_code == 202:
            sent.extend(range(n * 200, n * 200 + 200))
            n += 1
            time.sleep(0.35)  # let a batch close and wait in the spool
        else:
            refused = answer
    assert refused is not None and refused.status_code == 503, "never refused while the store was down"
    assert int(refused.headers["retry-after"]) > 0
    assert "spool" in refused.json()["error"]
    job.r2 = own_r2.start()
    accepted = None
    deadline = time.monotonic() + 90
    while accepted is None and time.monotonic() < deadline:
        answer = worker.post(ndjson([{"id": 10**6}]))
        if answer.status_code == 202:
            accepted = answer
            sent.append(10**6)
        else:
            time.sleep(1)
    assert accepted is not None, "still refusing after the store came back"
    worker.stop()
    assert sorted(ids_in(job).elements()) == sorted(sent)


def test_ack_upload_answers_200_once_in_r2_and_504_when_late(job: Job, own_r2: OwnR2) -> None:
    worker = Worker(job, {"ack": "upload", "ack_timeout": "3s"}).start()
    started = time.monotonic()
    ok = worker.post(ndjson([{"id": 1}]))
    assert ok.status_code == 200 and ok.json()["accepted"] == 1
    assert [r["id"] for r in job.rows()] == [1], "200 came before the row was in R2"
    assert time.monotonic() - started < 3
    own_r2.stop()
    late = worker.post(ndjson([{"id": 2}]))
    assert late.status_code == 504 and late.json()["accepted"] == 1
    job.r2 = own_r2.start()
    wait_for(lambda: sorted(r["id"] for r in job.rows()) == [1, 2], 90, "the late record to be delivered")
    worker.stop()


def test_tls(job: Job, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    worker = Worker(job, server={"tls_cert": str(cert), "tls_key": str(key)})
    worker.proc = job.start()
    Worker.started.append(worker.proc)
    url = f"https://127.0.0.1:{worker.port}/v1/records"
    trusted = ssl.create_default_context(cafile=str(cert))
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/x-ndjson"}

    def taking() -> bool:
        try:
            return httpx.post(url, content=b"", headers=headers, verify=trusted, timeout=2).status_code == 202
        except httpx.HTTPError:
            return False

    wait_for(taking, 90, "the https server")
    assert httpx.post(url, content=b'{"id": 7}', headers=headers, verify=trusted).status_code == 202
    with pytest.raises(httpx.HTTPError):
        httpx.post(worker.url, content=b'{"id": 8}', headers=headers, timeout=5)  # plain http: refused
    worker.stop()
    assert [r["id"] for r in job.rows()] == [7]

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    Worker(job, server={"tls_cert": str(garbage), "tls_key": str(key)})
    broken = job.start()
    _, err = broken.communicate(timeout=120)
    assert broken.returncode == 2, err[-2000:]
    assert "config error: server.tls_cert: cannot use" in err and "Traceback" not in err


def test_metrics_count_requests_records_and_latency(job: Job) -> None:
    worker = Worker(job).start()
    worker.post(b'{"id": 1}\nnope\n')
    worker.post(b"{}", token="wrong")
    text = httpx.get(f"http://127.0.0.1:{worker.port}/metrics").text
    worker.stop()
    assert 'ingest_http_requests_total{source="http",status="202"}' in text
    assert 'ingest_http_requests_total{source="http",status="401"} 1.0' in text
    assert 'ingest_http_records_total{outcome="accepted",source="http"} 1.0' in text
    assert 'ingest_http_records_total{outcome="rejected",source="http"} 1.0' in text
    assert 'ingest_http_request_duration_seconds_count{source="http"}' in text
    assert any(e.get("event") == "uploaded" for e in logs_of(worker.stderr))


@pytest.mark.parametrize("point", ["segment-written", "accepted"])
def test_a_crash_before_the_answer_then_a_retry_ingests_the_request_once(job: Job, point: str) -> None:
    """SIGKILL after the block is written (not journaled), or after it is journaled (not answered):
    the sender saw no answer and sends again with its key; every record lands once."""
    worker = Worker(job).start(INGEST_CRASH_AT=f"{point}:3")
    crashed = False
    for n in range(6):
        body, key = ndjson([{"id": n * 10 + i} for i in range(10)]), f"req-{n}"
        try:
            answer = worker.post(body, idempotency_key=key, timeout=10)
        except httpx.HTTPError:
            crashed = True
            assert worker.proc is not None
            assert worker.proc.wait(timeout=30) == -signal.SIGKILL
            worker.start()  # without the crash point
            answer = worker.post(body, idempotency_key=key)
            if point == "accepted":  # it was durable: the retry is the first answer again
                assert answer.headers.get("idempotent-replayed") == "true"
        assert answer.status_code == 202 and answer.json()["accepted"] == 10
    assert crashed
    worker.stop()
    assert sorted(ids_in(job).elements()) == list(range(60))


@pytest.mark.parametrize("crash", [False, True])
def test_dead_letters_found_when_encoding_name_the_body_line_also_after_a_crash(
    job: Job, crash: bool
) -> None:
    """A request whose first line is rejected: its block holds body lines 2-3 as lines 1-2. A value
    refused only when its batch is encoded (text where the table already has numbers) is named by
    its body line, also when the block is read again from the segment after a SIGKILL (it used to
    be named by the block's line)."""
    worker = Worker(job).start(**({"INGEST_CRASH_AT": "accepted:2"} if crash else {}))
    assert worker.post(b'{"id": 0, "v": 1.5}').status_code == 202
    wait_for(lambda: job.keys(), 60, "the first object, which makes the table's v a double")
    body = b'{not json\n{"id": 1, "v": "abc"}\n{"id": 2, "v": "2.5"}\n'
    if crash:  # durable, not answered: the sender sends it again after the restart
        with pytest.raises(httpx.HTTPError):
            worker.post(body, idempotency_key="k-1", timeout=10)
        assert worker.proc is not None and worker.proc.wait(timeout=30) == -signal.SIGKILL
        worker.start()
    answer = worker.post(body, idempotency_key="k-1")
    assert answer.status_code == 202 and answer.json()["accepted"] == 2
    assert answer.headers.get("idempotent-replayed") == ("true" if crash else None)
    worker.stop()
    # JSON text never becomes a number of the table's double field, "2.5" included (issue 29).
    assert sorted((r["id"], r["v"]) for r in job.rows()) == [(0, 1.5)]
    letters = sorted(job.dead_letters(), key=lambda d: int(d["line"]))
    assert [(d["line"], str(d["reason"]).split(":")[0]) for d in letters] == [
        (1, "invalid JSON"),
        (2, "field 'v'"),
        (3, "field 'v'"),
    ]
    assert all(d["source"] == f"http request {answer.json()['request_id']}" for d in letters)


def test_a_full_disk_under_the_segment_answers_503_and_loses_nothing(job: Job) -> None:
    worker = Worker(job).start(INGEST_DISK_FULL_AT="segment:3:2")
    answers = [worker.post(ndjson([{"id": n}])) for n in range(6)]
    codes = [a.status_code for a in answers]
    assert codes.count(503) == 2 and codes.count(202) == 4, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert int(refused.headers["retry-after"]) > 0 and "full" in refused.json()["error"]
    worker.stop()
    assert sorted(ids_in(job).elements()) == [n for n, a in enumerate(answers) if a.status_code == 202]


def test_sigterm_while_clients_post_keeps_every_accepted_record_and_exits_0(job: Job) -> None:
    """A drain: requests admitted before SIGTERM are committed and answered, later ones are refused
    (503 or no connection); the records that got 202 are in R2, each once, and no others."""
    worker = Worker(job).start()
    accepted: list[int] = []
    unexpected: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(c: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while not stop.is_set():
                first = (c * 10_000 + n) * 100
                body = ndjson([{"id": first + i} for i in range(100)])
                n += 1
                try:
                    answer = http.post(
                        worker.url,
                        content=body,
                        headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/x-ndjson"},
                    )
                except httpx.HTTPError:
                    continue
                with lock:
                    if answer.status_code == 202:
                        accepted.extend(range(first, first + 100))
                    elif answer.status_code != 503:
                        unexpected.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    worker.stop()  # SIGTERM while they post; asserts exit 0
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not unexpected, unexpected[:3]
    assert len(accepted) > 1000
    ids = ids_in(job)
    assert max(ids.values()) == 1
    assert sorted(ids) == sorted(accepted)


def _stalled_post(worker: Worker, sent: bytes, declared: int) -> socket.socket:
    """A sender that declares `declared` bytes, sends `sent` (whole lines) and then nothing more."""
    conn = socket.create_connection(("127.0.0.1", worker.port), timeout=60)
    head = (
        f"POST /v1/records HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/x-ndjson\r\nContent-Length: {declared}\r\n\r\n"
    )
    conn.sendall(head.encode() + sent)
    return conn


def _answer_of(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response on `conn` (read until the server closes it)."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if length and len(body) >= int(length.group(1)):
            break
    conn.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_a_body_that_stalls_is_refused_408_after_body_timeout_and_nothing_of_it_is_taken(job: Job) -> None:
    """A sender that stops mid-body (a stuck client, a cut network, slowloris) holds a connection and
    memory only for body_timeout; the lines it did send are not taken, and other senders go on."""
    worker = Worker(job, {"body_timeout": "1s"}).start()
    stalled_lines = ndjson([{"id": i} for i in range(1000, 1010)])
    conn = _stalled_post(worker, stalled_lines, declared=len(stalled_lines) + 500)
    started = time.monotonic()
    assert worker.post(ndjson([{"id": i} for i in range(10)])).status_code == 202  # not held up
    status, _, body = _answer_of(conn)
    waited = time.monotonic() - started
    assert status == 408, body
    assert "body_timeout (1s)" in json.loads(body)["error"]
    assert 0.9 <= waited < 20
    worker.stop()
    assert sorted(ids_in(job).elements()) == list(range(10))


def test_sigterm_cuts_a_body_still_arriving_with_503_and_the_drain_ends(job: Job) -> None:
    """A drain does not wait for a sender that never finishes its body (body_timeout is far off):
    the request is refused with 503 and Retry-After, nothing of it is taken, and the worker exits 0
    with the records it had accepted in R2."""
    worker = Worker(job, {"body_timeout": "10m"}).start()
    stalled_lines = ndjson([{"id": i} for i in range(1000, 1010)])
    conn = _stalled_post(worker, stalled_lines, declared=len(stalled_lines) + 500)
    # Sent after the stalled request's headers: by its answer that request is, as a rule, waiting in
    # its handler for the rest of its body (if not, it meets a stopping worker: the same 503).
    assert worker.post(ndjson([{"id": i} for i in range(5)])).status_code == 202
    answers: list[tuple[int, dict[str, str], bytes]] = []
    reader = threading.Thread(target=lambda: answers.append(_answer_of(conn)))
    reader.start()
    started = time.monotonic()
    worker.stop()  # asserts exit 0
    # It used to wait for the body until shutdown_timeout (25 s) cut everything, and answered 500.
    assert time.monotonic() - started < 10
    reader.join(timeout=30)
    status, headers, body = answers[0]
    assert status == 503, body
    assert "retry-after" in headers
    assert sorted(ids_in(job).elements()) == list(range(5))


def test_bodies_sent_at_once_to_two_tables_are_parsed_together_and_land_as_sent(
    job: Job, tmp_path: Path
) -> None:
    """Sixteen clients post at once to two tables whose fields differ: zoned times at the top and
    inside an object in one, naive times and ints-or-doubles in the other, a bad line now and
    then. Bodies that queue are parsed together (fewer parses than requests), yet each table's
    objects hold only its own fields, with the types its bodies give alone, every row once, and
    DuckDB and polars read them as such."""
    template = "{prefix}{table}/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet"
    worker = Worker(job, output={"prefix": job.prefix, "key_template": template}).start()
    sent: dict[str, dict[int, dict[str, Any]]] = {"clicks": {}, "orders": {}}
    failures: list[str] = []

    def body(c: int, r: int) -> tuple[str, bytes, int | None]:
        first = (c * 12 + r) * 1000
        if (c + r) % 2:
            rows: list[dict[str, Any]] = [
                {
                    "id": first + i,
                    "at": f"2024-08-02T10:{i % 60:02d}:{r:02d}Z",
                    "url": f"/p/{c}/{r}/{i}",
                    "d": {"ref": f"c{c}", "seen": f"2024-08-02T12:00:{i % 60:02d}+02:00"},
                }
                for i in range(1000)
            ]
            table, bad = "clicks", (3 if r % 7 == 0 else None)
        else:
            rows = [
                {
                    "id": first + i,
                    "total": i if r % 3 == 0 else i * 0.25,
                    "placed": f"2024-08-01T09:00:{i % 60:02d}",
                }
                for i in range(1000)
            ]
            table, bad = "orders", None
        for row in rows:
            sent[table][row["id"]] = row
        lines = [json.dumps(row) for row in rows]
        if bad is not None:
            lines.insert(bad - 1, '{"id": broken')
        return table, ("\n".join(lines) + "\n").encode(), bad

    def client(c: int) -> None:
        with httpx.Client(timeout=120) as http:
            for r in range(12):
                table, data, bad = body(c, r)
                answer = http.post(
                    f"{worker.url}/{table}",
                    content=data,
                    headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/x-ndjson"},
                )
                rejected = [] if bad is None else [bad]
                if answer.status_code != 202 or [d["line"] for d in answer.json()["rejected"]] != rejected:
                    failures.append(f"{answer.status_code} {answer.text[:300]}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not failures, failures[:3]
    metrics = httpx.get(f"http://127.0.0.1:{worker.port}/metrics").text
    parses = float(re.search(r'ingest_http_parses_total\{source="http"\} (\S+)', metrics).group(1))  # type: ignore[union-attr]
    assert parses < 16 * 12, "bodies that waited were not parsed together"
    worker.stop()

    readable_rows(job, tmp_path)  # pyarrow, polars and DuckDB open every object
    utc, every = pa.timestamp("ms", tz="UTC"), job.keys()
    for table, fields in (("clicks", ["id", "at", "url", "d"]), ("orders", ["id", "total", "placed"])):
        keys = [k for k in every if k.startswith(f"{job.prefix}{table}/")]
        got: dict[int, dict[str, Any]] = {}
        for key in keys:
            path = tmp_path / "object.parquet"
            path.write_bytes(job.r2.token_s3().get_object(Bucket=job.r2.bucket, Key=key)["Body"].read())
            t = pq.read_table(path)
            assert t.schema.names == fields, (key, t.schema)
            if table == "clicks":
                assert t.schema.field("at").type == utc and t.schema.field("d").type.field("seen").type == utc
                query = f"SELECT typeof(\"at\"), typeof(d.seen) FROM read_parquet('{path}') LIMIT 1"
                ((at, seen),) = duck(query)
                assert at == seen == "TIMESTAMP WITH TIME ZONE"
                assert pl.read_parquet(path).schema["at"] == pl.Datetime("ms", "UTC")
            else:
                assert t.schema.field("placed").type == pa.timestamp("ms")
                assert t.schema.field("total").type in (pa.int64(), pa.float64())  # a batch of ints only: int
                ((placed, total),) = duck(
                    f"SELECT typeof(placed), typeof(total) FROM read_parquet('{path}') LIMIT 1"
                )
                assert placed == "TIMESTAMP" and total in ("BIGINT", "DOUBLE")
            for row in t.to_pylist():
                assert row["id"] not in got, f"{table} {row['id']} twice"
                got[row["id"]] = row
        assert sorted(got) == sorted(sent[table])
        for i in (min(got), max(got), sorted(got)[len(got) // 2]):
            want, row = sent[table][i], got[i]
            if table == "clicks":
                assert row["at"].isoformat().replace("+00:00", "Z") == want["at"]
                assert row["url"] == want["url"] and row["d"]["ref"] == want["d"]["ref"]
            else:
                assert row["total"] == want["total"]
                assert row["placed"].isoformat() == want["placed"]
