"""The ledger's Redis side against a real redis-server: records, lookups, acks, consumer cleanup."""

from __future__ import annotations

import os
import signal

import anyio
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ingest.sources.redis.ledger import Ledger, unit_spans
from tests.conftest import RedisServer


@pytest.mark.anyio
async def test_spans_are_found_by_entry_and_removed_with_the_ack(redis_server: RedisServer) -> None:
    client = Redis(port=redis_server.port)
    ids = [(await client.xadd("s", {"data": "{}"})).decode() for _ in range(5)]
    await client.xgroup_create("s", "g", id="0")
    await client.xreadgroup("g", "w1", {"s": ">"})
    ledger = Ledger(client, "s", "g")
    one = await ledger.attempting("obj-1", "2024/08/02/ingested_0001.parquet", [(ids[0], ids[2])])
    two = await ledger.attempting("obj-2", "2024/08/02/ingested_0002.parquet", [(ids[3], ids[4])])
    assert await client.hlen(ledger.spans) == 2  # one record a unit and object, not one an entry
    asked: list[tuple[str, str]] = []

    async def holds(key: str, object_id: str) -> bool:
        asked.append((key, object_id))
        return object_id == "obj-1"  # only the first object made it into R2

    assert await ledger.in_r2(ids, holds) == set(ids[:3])  # ids[1]: inside the span, not listed
    assert sorted(asked) == [
        ("2024/08/02/ingested_0001.parquet", "obj-1"),
        ("2024/08/02/ingested_0002.parquet", "obj-2"),
    ]
    assert await ledger.in_r2([ids[4]], holds) == set()
    await ledger.acknowledge(ids[:3], [one])
    assert await client.hkeys(ledger.spans) == [two.encode()]
    pending = await client.xpending("s", "g")
    assert pending["pending"] == 2
    await client.aclose()


def test_a_units_rows_become_spans_around_dead_letters_and_listed_entries_stay_single() -> None:
    ids = ["1-0", "1-1", "2-0", "5-3", "9-0"]
    assert unit_spans(list(ids), [(0, 5)], ids, contiguous=True) == [("1-0", "9-0")]
    assert unit_spans(list(ids), [(0, 2), (3, 5)], ids, contiguous=True) == [("1-0", "1-1"), ("5-3", "9-0")]
    rows = ["1-0", "2-0", "5-3"]  # "1-1" and "9-0" were dead letters: in no span
    assert unit_spans(rows, [(0, 3)], ids, contiguous=True) == [("1-0", "1-0"), ("2-0", "5-3")]
    # taken over or resumed: not one read, so other consumers' entries may lie between these
    assert unit_spans(["1-0", "", "2-0"], [(0, 3)], ids, contiguous=False) == [("1-0", "1-0"), ("2-0", "2-0")]


@pytest.mark.anyio
async def test_sweep_removes_old_records_of_entries_no_longer_pending_and_keeps_the_rest(
    redis_server: RedisServer,
) -> None:
    """The records a dead worker left: once another took its entries over and acknowledged them,
    nothing deletes them but the sweep; a record with an entry still pending stays, however old."""
    client = Redis(port=redis_server.port)
    ids = [(await client.xadd("s", {"data": "{}"})).decode() for _ in range(4)]
    await client.xgroup_create("s", "g", id="0")
    await client.xreadgroup("g", "dead", {"s": ">"})
    ledger = Ledger(client, "s", "g")
    done = await ledger.attempting("obj-1", "k1", [(ids[0], ids[1])])
    waiting = await ledger.attempting("obj-2", "k2", [(ids[2], ids[3])])
    await client.hset(ledger.entries, mapping={ids[0]: "obj-0", ids[3]: "obj-0"})  # an older version's
    await client.set(ledger.objects + "obj-0", "k0")
    await client.xack("s", "g", ids[0], ids[1])  # taken over and acknowledged by another worker
    heir = Ledger(client, "s", "g")  # another worker's process
    assert await heir.sweep(older_than=60) == 1  # only the per-entry record of an acked entry
    assert set(await client.hkeys(ledger.spans)) == {done.encode(), waiting.encode()}  # too young
    assert await client.hkeys(ledger.entries) == [ids[3].encode()]
    assert await ledger.sweep(older_than=0) == 0  # the writer's own go with its acks, not a sweep
    assert await heir.sweep(older_than=0) == 1
    assert await client.hkeys(ledger.spans) == [waiting.encode()]  # ids[2] is still pending

    async def holds(key: str, object_id: str) -> bool:
        return object_id == "obj-0"

    assert await ledger.in_r2([ids[3]], holds) == {ids[3]}  # an older version's record still counts
    await client.aclose()


@pytest.mark.anyio
async def test_idle_consumers_go_only_when_nothing_is_pending_for_them(redis_server: RedisServer) -> None:
    client = Redis(port=redis_server.port)
    for _ in range(4):
        await client.xadd("s", {"data": "{}"})
    await client.xgroup_create("s", "g", id="0")
    await client.xreadgroup("g", "holder", {"s": ">"}, count=2)  # 2 pending, never acked
    await client.xreadgroup("g", "retired", {"s": "0"})  # nothing pending
    await client.xreadgroup("g", "me", {"s": "0"})
    await anyio.sleep(0.2)
    ledger = Ledger(client, "s", "g")
    assert await ledger.forget_consumers(keep="me", idle_ms=100) == ["retired"]
    names = {c["name"] for c in await client.xinfo_consumers("s", "g")}
    assert names == {b"holder", b"me"}  # the one with pending entries stays, however idle
    assert await ledger.forget_consumers(keep="me", idle_ms=60_000) == []  # not idle long enough
    await client.aclose()


@pytest.mark.anyio
async def test_an_ack_of_many_entries_takes_them_all_and_a_failed_one_deletes_nothing(
    redis_server: RedisServer,
) -> None:
    """12,000 ids in one XACK (sent packed as it is). When Redis refuses it (the key is no stream any
    more), its error is raised, the unit's record stays and the connection it went over serves the
    next command."""
    client = Redis(port=redis_server.port, max_connections=1)  # one connection: the failed ack's
    async with client.pipeline(transaction=False) as pipe:
        for n in range(12_000):
            pipe.xadd("s", {"data": f'{{"n": {n}}}'})
        ids = [i.decode() for i in await pipe.execute()]
    await client.xgroup_create("s", "g", id="0")
    await client.xreadgroup("g", "w1", {"s": ">"}, count=20_000)
    ledger = Ledger(client, "s", "g")
    first = await ledger.attempting("obj-1", "k1", [(ids[0], ids[11_998])])
    last = await ledger.attempting("obj-2", "k2", [(ids[11_999], ids[11_999])])
    await ledger.acknowledge(ids[:11_999], [first])
    pending = await client.xpending_range("s", "g", "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == [ids[11_999]]
    assert await client.hkeys(ledger.spans) == [last.encode()]

    await client.delete("s")
    await client.set("s", "not a stream")
    with pytest.raises(ResponseError, match=r"^WRONGTYPE"):
        await ledger.acknowledge(ids[11_999:], [last])
    assert await client.hkeys(ledger.spans) == [last.encode()]
    assert await client.get("s") == b"not a stream"  # the connection answers the next command
    await ledger.acknowledge([], [])  # nothing to do: no command sent
    await client.aclose()


@pytest.mark.anyio
async def test_an_ack_that_times_out_or_is_cancelled_gives_its_connection_back(
    redis_server: RedisServer,
) -> None:
    """Redis stopped (SIGSTOP) under an ack: the ack times out, or its task is cancelled (a worker
    shutting down), and either way its connection goes back to the pool; with a pool of one, the
    ack retried once Redis runs again would otherwise wait for ever."""
    pool = BlockingConnectionPool(port=redis_server.port, max_connections=1, timeout=None, socket_timeout=0.5)
    client = Redis(connection_pool=pool)
    ids = [(await client.xadd("s", {"data": "{}"})).decode() for _ in range(3)]
    await client.xgroup_create("s", "g", id="0")
    await client.xreadgroup("g", "w1", {"s": ">"})
    ledger = Ledger(client, "s", "g")
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(RedisTimeoutError):
            await ledger.acknowledge(ids[:1], [])
        with anyio.move_on_after(0.2) as cancelled:
            await ledger.acknowledge(ids[1:2], [])
        assert cancelled.cancelled_caught
    finally:
        os.kill(pid, signal.SIGCONT)
    with anyio.fail_after(10):
        await ledger.acknowledge(ids, [])
    assert (await client.xpending("s", "g"))["pending"] == 0
    await client.aclose()
