"""The ledger's Redis side against a real redis-server: records, lookups, acks, consumer cleanup."""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio import Redis

from ingest.sources.redis.ledger import Ledger
from tests.conftest import RedisServer


@pytest.mark.anyio
async def test_records_are_found_by_entry_and_removed_with_the_ack(redis_server: RedisServer) -> None:
    client = Redis(port=redis_server.port)
    ids = [(await client.xadd("s", {"data": "{}"})).decode() for _ in range(5)]
    await client.xgroup_create("s", "g", id="0")
    await client.xreadgroup("g", "w1", {"s": ">"})
    ledger = Ledger(client, "s", "g")
    await ledger.attempting("obj-1", "2024/08/02/ingested_0001.parquet", ids[:3])
    await ledger.attempting("obj-2", "2024/08/02/ingested_0002.parquet", ids[3:])
    asked: list[tuple[str, str]] = []

    async def holds(key: str, object_id: str) -> bool:
        asked.append((key, object_id))
        return object_id == "obj-1"  # only the first object made it into R2

    assert await ledger.in_r2(ids, holds) == set(ids[:3])
    assert sorted(asked) == [
        ("2024/08/02/ingested_0001.parquet", "obj-1"),
        ("2024/08/02/ingested_0002.parquet", "obj-2"),
    ]
    await ledger.acknowledge(ids[:3], ids[:3])
    assert await client.hlen(ledger.entries) == 2
    pending = await client.xpending("s", "g")
    assert pending["pending"] == 2
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
