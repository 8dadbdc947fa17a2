"""The Redis Streams source under what producers and operators legitimately do (issue 30): trimming
entries still pending, deleting the group or the stream, fields that are not UTF-8. Real redis-server,
real worker processes, the real local R2, objects read back with pyarrow, polars and DuckDB."""

from __future__ import annotations

import base64
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import RedisServer
from tests.integration.conftest import Job, logs_of, readable_rows, readyz, wait_for
from tests.integration.test_redis import (
    STREAM,
    configure,
    daemon_with_probes,
    group_state,
    load,
    run_worker,
    stop,
)


def _ids(job: Job, tmp: Path) -> Counter[int]:
    return Counter(int(r["id"]) for r in readable_rows(job, tmp))


def _crash(job: Job, point: str) -> None:
    dead = run_worker(job, "w1", "--once", INGEST_CRASH_AT=point)
    _, err = dead.communicate(timeout=120)
    assert dead.returncode == -signal.SIGKILL, f"{point} was never reached: {err[-2000:]}"


def _restarted_empty(server: RedisServer) -> Any:
    """redis-server restarted without its data (a cache node, a lost volume): a client for it."""
    server.stop()
    for name in ("appendonlydir", "dump.rdb"):
        target = server.dir / name
        if target.is_dir():
            for f in target.iterdir():
                f.unlink()
            target.rmdir()
        elif target.exists():
            target.unlink()
    server.start()
    return server.client()


def _warnings(stderr: str, words: str) -> list[dict[str, object]]:
    return [e for e in logs_of(stderr) if words in str(e.get("event", ""))]


# -- 2. trimmed while pending, part of the unit already in R2 ---------------------------------------


def test_entries_trimmed_and_deleted_under_a_half_uploaded_unit_shift_no_row(
    job: Job, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis = redis_server.client()
    load(redis, 0, 200)
    poison = [redis.xadd(STREAM, {"data": "{not json"})]  # dead letters: entries without a row
    load(redis, 200, 8800)
    poison.append(redis.xadd(STREAM, {"data": "[1, 2]"}))
    load(redis, 9000, 1000)
    configure(job, redis_server, read_count=20_000)
    job.configure(**{**job.config, "batch": {"max_age": "2s", "max_records": 3000}})
    _crash(job, "uploaded:3")  # 9,000 rows (or all: uploads run at once) in R2, nothing acknowledged
    assert job.keys()
    ids = [i for i, _ in redis.xrange(STREAM)]
    redis.xtrim(STREAM, maxlen=9500, approximate=False)  # the 502 oldest (a dead one too): in R2
    redis.xdel(STREAM, *ids[5000:5100])  # and 100 from the middle: in R2 too
    r = job.run_once(INGEST_WORKER_ID="w1")
    assert r.returncode == 0, r.stderr[-3000:]
    got = _ids(job, tmp_path)
    assert sorted(got) == list(range(10_000)), f"missing {sorted(set(range(10_000)) - set(got))[:5]}"
    assert max(got.values()) == 1
    [warned] = _warnings(r.stderr, "deleted from the stream")
    assert warned["entries_gone"] == 602 and warned["rows_lost"] == 0
    assert {d["entry"] for d in job.dead_letters()} == {p.decode() for p in poison}
    assert group_state(redis) == {"pending": 0, "lag": 0}


# -- 4. every entry of a unit trimmed; trimmed right after a read -----------------------------------


def test_a_unit_whose_entries_are_all_trimmed_is_settled_once(
    job: Job, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis = redis_server.client()
    load(redis, 0, 3000)
    configure(job, redis_server, read_count=3000)
    _crash(job, "spooled")  # the unit is journaled, its rows spooled, nothing uploaded or acked
    redis.xtrim(STREAM, maxlen=0, approximate=False)
    first = job.run_once(INGEST_WORKER_ID="w1")
    assert first.returncode == 0, first.stderr[-3000:]
    warned = _warnings(first.stderr, "deleted from the stream")
    assert len(warned) == 1, warned
    assert warned[0]["rows_lost"] == 0  # its rows were spooled: they land
    again = job.run_once(INGEST_WORKER_ID="w1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not _warnings(again.stderr, "deleted from the stream")
    assert sorted(_ids(job, tmp_path)) == list(range(3000))
    assert group_state(redis)["pending"] == 0


def test_entries_trimmed_right_after_a_read_are_counted_as_lost_and_settled(
    job: Job, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis = redis_server.client()
    load(redis, 0, 2000)
    configure(job, redis_server, read_count=1000)
    _crash(job, "redis-read")  # delivered to w1, nothing journaled
    pending = group_state(redis)["pending"]
    assert pending > 0
    redis.xtrim(STREAM, maxlen=0, approximate=False)
    load(redis, 2000, 500)
    first = job.run_once(INGEST_WORKER_ID="w1")
    assert first.returncode == 0, first.stderr[-3000:]
    [warned] = _warnings(first.stderr, "deleted from the stream")
    assert warned["entries"] == pending
    again = job.run_once(INGEST_WORKER_ID="w1")
    assert again.returncode == 0 and not _warnings(again.stderr, "deleted from the stream")
    assert sorted(_ids(job, tmp_path)) == list(range(2000, 2500))
    [group] = redis.xinfo_groups(STREAM)  # (Redis counts the trimmed entries as lag)
    assert group["pending"] == 0
    assert group["last-delivered-id"] == redis.xinfo_stream(STREAM)["last-generated-id"]


# -- 3. the group or the stream vanishes --------------------------------------------------------------


def test_a_destroyed_group_is_reported_in_one_line_and_never_recreated_from_the_start(
    job: Job, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis = redis_server.client()
    load(redis, 0, 3200)
    worker, port = daemon_with_probes(job, redis_server, read_count=1000)
    try:
        wait_for(lambda: group_state(redis) == {"pending": 0, "lag": 0}, 60, "the first entries acked")
        last = redis.xinfo_stream(STREAM)["last-generated-id"].decode()
        redis.xgroup_destroy(STREAM, "ingest")
        wait_for(lambda: readyz(port) == 503, 30, "readiness to turn false")
        reason = httpx.get(f"http://127.0.0.1:{port}/readyz").json()["reason"]
        assert "consumer group 'ingest'" in reason and "is gone" in reason and last in reason
        assert worker.poll() is None  # waiting, not crashed
        load(redis, 3200, 300)
        redis.xgroup_create(STREAM, "ingest", id=last)  # the operator's choice: go on after `last`
        wait_for(lambda: readyz(port) == 200, 60, "readiness to come back")
        wait_for(lambda: group_state(redis) == {"pending": 0, "lag": 0}, 60, "the new entries acked")
    finally:
        err = stop(worker)
    assert "Traceback" not in err
    assert len([e for e in logs_of(err) if "group gone" in str(e.get("event"))]) == 1

    redis.xgroup_destroy(STREAM, "ingest")  # gone while no worker runs
    r = job.run_once(INGEST_WORKER_ID="w1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if "is gone" in ln]
    assert line.startswith("error: ") and "XGROUP CREATE" in line
    assert not any(g["name"] == b"ingest" for g in redis.xinfo_groups(STREAM))  # not created again
    got = _ids(job, tmp_path)
    assert sorted(got) == list(range(3500)) and max(got.values()) == 1


def test_a_deleted_stream_under_a_once_run_ends_it_in_one_line(job: Job, redis_server: RedisServer) -> None:
    redis = redis_server.client()
    load(redis, 0, 200)
    configure(job, redis_server)
    r = job.run_once(INGEST_WORKER_ID="w1")
    assert r.returncode == 0, r.stderr[-2000:]
    redis.delete(STREAM)
    load(redis, 200, 10)  # the producer creates it anew
    r = job.run_once(INGEST_WORKER_ID="w1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is gone" in r.stderr and "0 for a stream created anew" in r.stderr
    redis = _restarted_empty(redis_server)  # nothing of the old group is left to re-ingest
    load(redis, 300, 10)
    r = job.run_once(INGEST_WORKER_ID="w1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(int(x["id"]) for x in job.rows()) == [*range(200), *range(300, 310)]


# -- 8. fields that are not UTF-8 ---------------------------------------------------------------------


def test_entries_with_fields_that_are_not_utf8_are_dead_letters_holding_their_bytes(
    job: Job, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis = redis_server.client()
    named = [redis.xadd(STREAM, {b"n\xff": b"1"}) for _ in range(3)]  # no `data` field
    valued = redis.xadd(STREAM, {b"id": b"7", b"name": b"caf\xe9"})
    inside = redis.xadd(STREAM, {b"data": b'{"id": 8, "name": "caf\xe9"}'})
    redis.xadd(STREAM, {b"id": b"9", b"name": "caf\u00e9".encode()})
    configure(job, redis_server)
    r = job.run_once(INGEST_WORKER_ID="w1")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = readable_rows(job, tmp_path)
    assert [(str(x["id"]), x["name"]) for x in rows] == [("9", "caf\u00e9")]
    letters = {d["entry"]: d for d in job.dead_letters()}
    assert set(letters) == {*(n.decode() for n in named), valued.decode(), inside.decode()}
    assert b"n\xff" in base64.b64decode(letters[named[0].decode()]["raw_base64"])
    assert b"caf\xe9" in base64.b64decode(letters[valued.decode()]["raw_base64"])
    assert all("UTF-8" in d["reason"] for d in letters.values())
    assert group_state(redis) == {"pending": 0, "lag": 0}


def test_an_entry_holding_two_objects_is_a_dead_letter_and_every_other_entry_lands(
    job: Job, redis_server: RedisServer, tmp_path: Path
) -> None:
    """pyarrow's reader takes `{..} {..}` in one entry as two rows: the rows no longer matched the
    entries they came from. The entry is a dead letter naming it; an id past 2**53 inside a list
    keeps every digit; every entry is acknowledged."""
    redis = redis_server.client()
    first = redis.xadd(STREAM, {"data": '{"id": 1, "refs": [1]}'})
    two = redis.xadd(STREAM, {"data": '{"id": 2, "refs": [2]} {"id": 3, "refs": [3]}'})
    redis.xadd(STREAM, {"data": '{"id": 4, "refs": [0.5, 9007199254740993]}'})
    configure(job, redis_server)
    r = job.run_once(INGEST_WORKER_ID="w1")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = sorted(readable_rows(job, tmp_path), key=lambda x: int(x["id"]))
    assert [int(x["id"]) for x in rows] == [1, 4]
    assert "9007199254740993" in str(rows[1]["refs"]) and first.decode() not in str(rows)
    letters = job.dead_letters()
    assert [d["entry"] for d in letters] == [two.decode()] and "Extra data" in letters[0]["reason"]
    assert group_state(redis) == {"pending": 0, "lag": 0}


# -- 7. entries nested deeper than any reader opens ---------------------------------------------------


def test_deeply_nested_entries_are_dead_letters_and_every_later_start_is_unharmed(
    job: Job, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis = redis_server.client()
    deep = {
        levels: redis.xadd(STREAM, {"data": '{"id": -1, "d": ' + "[" * levels + "]" * levels + "}"})
        for levels in (130, 100_000)
    }
    load(redis, 0, 10)
    configure(job, redis_server)
    for _ in range(2):
        r = job.run_once(INGEST_WORKER_ID="w1")
        assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(_ids(job, tmp_path)) == list(range(10))
    letters = {d["entry"]: d for d in job.dead_letters()}
    assert set(letters) == {i.decode() for i in deep.values()}
    assert all("nested" in d["reason"] for d in letters.values())
    assert group_state(redis) == {"pending": 0, "lag": 0}


def test_redis_restarted_without_its_data_under_a_running_worker_goes_on_with_new_entries(
    job: Job, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis = redis_server.client()
    load(redis, 0, 1000)
    worker, port = daemon_with_probes(job, redis_server)
    try:
        wait_for(lambda: group_state(redis) == {"pending": 0, "lag": 0}, 60, "the first entries acked")
        redis = _restarted_empty(redis_server)
        load(redis, 1000, 500)  # producers go on into a new, empty Redis
        wait_for(lambda: group_state(redis) == {"pending": 0, "lag": 0}, 60, "the new entries acked")
        wait_for(lambda: readyz(port) == 200, 30, "readiness")
    finally:
        err = stop(worker)
    assert "Traceback" not in err
    assert _warnings(err, "redis lost its data")
    got = _ids(job, tmp_path)
    assert sorted(got) == list(range(1500)) and max(got.values()) == 1
