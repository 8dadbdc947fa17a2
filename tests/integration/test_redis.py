"""The Redis Streams source against a real redis-server, real worker processes and the real local R2."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.conftest import RedisServer
from tests.faultproxy import LaggyProxy
from tests.integration.conftest import Job, free_port, readyz, wait_for

STREAM = "events"


def load(redis: Any, first: int, n: int, stream: str = STREAM) -> None:
    """Entries whose `data` field holds one JSON object with a unique id."""
    for start in range(first, first + n, 10_000):
        with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 10_000, first + n)):
                pipe.xadd(stream, {"data": json.dumps({"id": i, "kind": "view", "pad": "x" * 120})})
            pipe.execute()


def configure(job: Job, server: RedisServer, **source: Any) -> None:
    job.configure(
        sources=[
            {
                "kind": "redis",
                "url": server.url,
                "stream": STREAM,
                "claim_interval": "1s",
                "claim_idle": "4s",
                **source,
            }
        ],
        batch={"max_age": "500ms", "max_records": 50_000},
    )


def group_state(redis: Any, stream: str = STREAM) -> dict[str, Any]:
    """The group's pending count and lag ({} before a worker created the group)."""
    try:
        groups = redis.xinfo_groups(stream)
    except Exception:  # no stream yet
        return {}
    found = [g for g in groups if g["name"] == b"ingest"]
    if not found:
        return {}
    lag = found[0]["lag"]
    if lag is None:  # Redis cannot tell (e.g. after a restart): compare the last ids instead
        last = redis.xinfo_stream(stream)["last-generated-id"]
        lag = 0 if found[0]["last-delivered-id"] == last else -1
    return {"pending": int(found[0]["pending"]), "lag": int(lag)}


def ids_in(job: Job) -> Counter[int]:
    return Counter(int(r["id"]) for r in job.rows())


def run_worker(job: Job, worker_id: str, *args: str, **env: str) -> subprocess.Popen[str]:
    return job.start(*args, INGEST_WORKER_ID=worker_id, **env)


def daemon_with_probes(
    job: Job, server: RedisServer, worker_id: str = "w1", **source: Any
) -> tuple[subprocess.Popen[str], int]:
    """A daemon reading the stream, with its probes on a port of its own: (process, port)."""
    port = free_port()
    configure(job, server, **source)
    job.configure(**{**job.config, "server": {"listen": f"127.0.0.1:{port}"}})
    return run_worker(job, worker_id), port


def stop(proc: subprocess.Popen[str], signalled: bool = True) -> str:
    """SIGTERM a daemon (or, `signalled=False`, wait for a --once run) and check it exited 0."""
    if signalled and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return err


def heir_takes_over(job: Job, redis: Any) -> str:
    """A worker that takes over what a dead one left, run until the group has nothing pending: its log."""
    heir = run_worker(job, "heir")
    try:
        wait_for(
            lambda: group_state(redis) == {"pending": 0, "lag": 0}, 120, "the heir to take everything over"
        )
    finally:
        err = stop(heir)
    return err


def test_three_workers_in_one_group_take_every_entry_exactly_once(
    job: Job, redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    load(redis, 0, 300_000)
    configure(job, redis_server)
    workers = [run_worker(job, f"w{n}", "--once") for n in range(3)]
    for proc in workers:
        stop(proc, signalled=False)
    ids = ids_in(job)
    assert len(ids) == 300_000 and max(ids.values()) == 1
    assert sorted(ids) == list(range(300_000))
    assert group_state(redis) == {"pending": 0, "lag": 0}
    consumers = {c["name"].decode(): int(c["pending"]) for c in redis.xinfo_consumers(STREAM, "ingest")}
    assert set(consumers) == {"w0", "w1", "w2"} and set(consumers.values()) == {0}


@pytest.mark.parametrize("point", ["redis-read", "spooled", "uploaded"])
def test_a_killed_worker_that_never_returns_is_taken_over_exactly_once(
    job: Job, redis_server: RedisServer, point: str
) -> None:
    """SIGKILL at `point` (entries delivered; rows spooled; object in R2 but not acked), never restarted:
    another worker takes its entries over after claim_idle, and every entry lands once."""
    redis = redis_server.client()
    load(redis, 0, 20_000)
    configure(job, redis_server, read_count=2000)
    dead = run_worker(job, "doomed", "--once", INGEST_CRASH_AT=point)
    dead.communicate(timeout=120)
    assert dead.returncode == -signal.SIGKILL, f"{point} was never reached"
    orphaned = {c["name"].decode(): int(c["pending"]) for c in redis.xinfo_consumers(STREAM, "ingest")}
    assert orphaned["doomed"] > 0  # it left entries delivered and not acked
    load(redis, 20_000, 5_000)  # and the stream goes on
    err = heir_takes_over(job, redis)
    ids = ids_in(job)
    assert sorted(ids) == list(range(25_000)), f"missing {25_000 - len(ids)}"
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
    if point == "uploaded":  # the ledger told the heir those entries were already in R2
        assert "taken over entries were already in R2" in err


def load_two_days(redis: Any, n: int) -> None:
    """Entries dated on two days, alternating: every read and every batch holds both."""
    with redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            day = "2024-08-01" if i % 2 else "2024-08-02"
            pipe.xadd(STREAM, {"data": json.dumps({"id": i, "at": f"{day}T12:00:00Z", "pad": "x" * 60})})
        pipe.execute()


@pytest.mark.parametrize("restarted_first", [False, True])
def test_a_batch_split_by_day_is_taken_over_per_object_neither_lost_nor_twice(
    job: Job, redis_server: RedisServer, restarted_first: bool
) -> None:
    """With output.partition_by, one batch of entries becomes one object per day. The worker is killed
    right after the first object is in R2, the second not yet (one upload at a time). The ledger must
    say which entries each object holds: the heir acknowledges the first day's entries and ingests the
    second day's. It used to record every entry of the batch for each object: the heir found them all
    "in R2" through the first object and acknowledged the second day's entries unread (lost).
    `restarted_first`: the objects were spooled by a first run killed before any upload, and uploaded
    by the next run of the same worker (what each holds comes back from the journal)."""
    redis = redis_server.client()
    load_two_days(redis, 6000)
    configure(job, redis_server, read_count=1000)
    job.configure(**{**job.config, "output": {"partition_by": "at"}, "upload": {"concurrency": 1}})
    if restarted_first:
        first = run_worker(job, "doomed", "--once", INGEST_CRASH_AT="spooled")
        first.communicate(timeout=120)
        assert first.returncode == -signal.SIGKILL, "spooled was never reached"
        assert not job.rows()
    dead = run_worker(job, "doomed", "--once", INGEST_CRASH_AT="uploaded")
    dead.communicate(timeout=120)
    assert dead.returncode == -signal.SIGKILL, "uploaded was never reached"
    landed = ids_in(job)
    assert 0 < len(landed) < 6000  # one day's object of the batch is in R2, the other is not
    assert len({i % 2 for i in landed}) == 1
    err = heir_takes_over(job, redis)
    ids = ids_in(job)
    assert sorted(ids) == list(range(6000)), f"missing {6000 - len(ids)}"
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
    assert "taken over entries were already in R2" in err
    days = {r["id"]: r["at"] for r in job.rows()}
    assert all(days[i].day == (1 if i % 2 else 2) for i in range(0, 6000, 997))


def test_malformed_entries_inside_a_read_are_not_taken_for_uploaded_by_the_heir(
    job: Job, redis_server: RedisServer
) -> None:
    """A read's rows are recorded as spans of stream ids: a malformed entry inside the read has no
    row, so the spans go around it. Killed once its data is in R2, before its dead letters are, the
    worker never acknowledges; the heir must read the malformed entries again and dead-letter them. A
    span over the whole read would have acknowledged them as uploaded, their dead letters left in the
    dead worker's spool."""
    redis = redis_server.client()
    with redis.pipeline(transaction=False) as pipe:
        for i in range(3000):
            pipe.xadd(STREAM, {"data": "{not json" if i % 500 == 250 else json.dumps({"id": i})})
        ids = [x.decode() for x in pipe.execute()]
    malformed = [ids[i] for i in range(250, 3000, 500)]
    configure(job, redis_server, read_count=1000)
    # A daemon: its data goes after batch.max_age (0.5 s), its dead letters only at their seal (10 s).
    dead = run_worker(job, "doomed", INGEST_CRASH_AT="uploaded")
    dead.communicate(timeout=120)
    assert dead.returncode == -signal.SIGKILL, "uploaded was never reached"
    assert job.rows() and not job.error_keys()  # the data is in R2, its dead letters are not
    err = heir_takes_over(job, redis)
    got = ids_in(job)
    good = [i for i in range(3000) if i % 500 != 250]
    assert sorted(got) == good and max(got.values()) == 1
    assert "taken over entries were already in R2" in err
    assert sorted(d["entry"] for d in job.dead_letters()) == sorted(malformed)  # read again by the heir


@pytest.mark.parametrize("point", ["spooled", "uploaded"])
def test_the_same_worker_restarted_resumes_its_pending_entries_without_duplicates(
    job: Job, redis_server: RedisServer, point: str
) -> None:
    redis = redis_server.client()
    load(redis, 0, 30_000)
    configure(job, redis_server, read_count=3000)
    first = run_worker(job, "w1", "--once", INGEST_CRASH_AT=point)
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL
    assert group_state(redis)["pending"] > 0
    again = run_worker(job, "w1", "--once")
    err = stop(again, signalled=False)
    assert "resumed this worker's pending entries" in err
    ids = ids_in(job)
    assert sorted(ids) == list(range(30_000)) and max(ids.values()) == 1
    assert group_state(redis) == {"pending": 0, "lag": 0}


def test_a_recovered_object_is_recorded_in_the_ledger_before_its_upload_even_with_redis_slow(
    job: Job, redis_server: RedisServer
) -> None:
    """Two crashes and a worker that never returns. The first crash leaves an object spooled and not
    yet uploaded. The restart reaches Redis slowly, and crashes right after uploading that object,
    before XACK. The heir must find the upload in the ledger. It used to be uploaded before the slow
    source had opened its units again, with no ledger record, and the heir ingested it a second time."""
    redis = redis_server.client()
    load(redis, 0, 10_000)
    configure(job, redis_server, read_count=2500)
    first = run_worker(job, "w1", "--once", INGEST_CRASH_AT="spooled")
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL
    with LaggyProxy(redis_server.port, lag=0.5) as slow:  # 1 s a round trip
        configure(job, redis_server, read_count=2500, url=slow.redis_url)
        again = run_worker(job, "w1", "--once", INGEST_CRASH_AT="put")
        _, err = again.communicate(timeout=180)
    assert again.returncode == -signal.SIGKILL, err[-3000:]
    assert len(job.keys()) == 1  # the recovered object, uploaded before the crash
    configure(job, redis_server, read_count=2500)
    err = heir_takes_over(job, redis)
    ids = ids_in(job)
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
    assert sorted(ids) == list(range(10_000))
    assert "taken over entries were already in R2" in err


def test_redis_stopped_ten_seconds_mid_run_loses_and_duplicates_nothing(
    job: Job, redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    load(redis, 0, 10_000)
    worker, port = daemon_with_probes(job, redis_server)
    try:
        wait_for(lambda: group_state(redis).get("lag") == 0, 60, "the first entries to be read")
        redis_server.stop()
        wait_for(lambda: readyz(port) == 503, 30, "readiness to turn false")
        reason = httpx.get(f"http://127.0.0.1:{port}/readyz").json()["reason"]
        assert "redis" in reason and "unreachable" in reason
        time.sleep(10)
        redis_server.start()  # same port, same appendonly data
        redis = redis_server.client()
        load(redis, 10_000, 10_000)
        wait_for(lambda: group_state(redis) == {"pending": 0, "lag": 0}, 120, "everything to be acked")
        wait_for(lambda: readyz(port) == 200, 30, "readiness to come back")
        wait_for(
            lambda: (
                _metric(port, 'ingest_redis_group_pending{group="ingest",stream="events"}') == 0.0
                and _metric(port, 'ingest_redis_group_lag{group="ingest",stream="events"}') is not None
            ),
            30,
            "the group gauges",
        )
        acked = _metric(port, 'ingest_redis_entries_total{event="acked",stream="events"}')
        assert acked == 20_000.0
    finally:
        err = stop(worker)
    ids = ids_in(job)
    missing = sorted(set(range(20_000)) - set(ids))
    assert not missing, f"{len(missing)} missing, e.g. {missing[:5]}\n{err[-6000:]}"
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]


def test_poison_entries_are_dead_letters_with_their_id_and_reason(
    job: Job, redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    good = redis.xadd(STREAM, {"data": json.dumps({"id": 1})})
    not_json = redis.xadd(STREAM, {"data": "{not json"})
    too_big = redis.xadd(STREAM, {"data": json.dumps({"id": 2, "pad": "x" * 5000})})
    flat = redis.xadd(STREAM, {"id": "3", "name": "flat fields"})
    pretty = redis.xadd(STREAM, {"data": '{\n  "id": "5",\r\n  "note": "pretty-printed"\n}'})  # one record
    # An entry some consumer keeps failing on: delivered 7 times, then left idle.
    redis.xgroup_create(STREAM, "ingest", id="0")
    cursed = redis.xadd(STREAM, {"data": json.dumps({"id": 4})})
    redis.xreadgroup("ingest", "ghost", {STREAM: ">"}, count=100)  # delivers them all to a ghost
    for _ in range(6):
        redis.xclaim(STREAM, "ingest", "ghost", 0, [cursed])
    configure(job, redis_server, claim_idle="2s", include_id=True)
    job.configure(**{**job.config, "batch": {"max_age": "500ms", "max_record_bytes": "1KiB"}})
    time.sleep(2.5)  # the ghost's entries are idle longer than claim_idle
    r = job.run_once(INGEST_WORKER_ID="w1")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = sorted(job.rows(), key=lambda row: str(row["id"]))
    assert [(str(row["id"]), row["_entry_id"]) for row in rows] == [
        ("1", good.decode()),
        ("3", flat.decode()),
        ("5", pretty.decode()),
    ]
    letters = {d["entry"]: d for d in job.dead_letters()}
    assert set(letters) == {not_json.decode(), too_big.decode(), cursed.decode()}
    assert letters[not_json.decode()]["reason"].startswith("invalid JSON")
    assert "over batch.max_record_bytes" in letters[too_big.decode()]["reason"]
    assert letters[cursed.decode()]["reason"].startswith("delivered 7 times")
    assert group_state(redis) == {"pending": 0, "lag": 0}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"claim_idle": "1s"}, "claim_idle: 1s is not longer than batch.max_age"),
        ({"stream": ""}, "stream: required"),
        ({"url": "redis://127.0.0.1:9/0"}, "redis at 127.0.0.1:9"),
        ({"url": "redis://:hunter2@127.0.0.1:9/0"}, "redis at 127.0.0.1:9"),
    ],
)
def test_bad_config_exits_2_with_a_clear_line(
    job: Job, redis_server: RedisServer, source: dict[str, Any], message: str
) -> None:
    configure(job, redis_server, **source)
    r = job.run_once()
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr
    assert "hunter2" not in r.stderr + r.stdout


def _metric(port: int, name: str) -> float | None:
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_doctor_reports_the_group_or_an_unreachable_redis_without_its_password(
    job: Job, redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    load(redis, 0, 5)
    redis.xgroup_create(STREAM, "ingest", id="0")
    redis.xreadgroup("ingest", "w9", {STREAM: ">"}, count=2)
    configure(job, redis_server)
    r = job.cli("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        f"redis at 127.0.0.1:{redis_server.port}: stream events, group ingest: 2 pending, lag 3" in r.stdout
    )
    configure(job, redis_server, url="redis://:hunter2@127.0.0.1:9/0")
    r = job.cli("doctor")
    assert r.returncode == 1
    assert "redis at 127.0.0.1:9: ConnectionError" in r.stdout
    assert "hunter2" not in r.stdout + r.stderr
