"""The ledger: which stream entries each object holds, kept in Redis where every worker of a group sees it.

Written before each PUT (object id → the key attempted; entry id → object id), removed once the entries
are acknowledged (XACK). A worker that reclaims a dead worker's entries looks them up: an entry whose
object is in R2 under that key (its `batch-id` metadata says so, as the uploader checks after a 412) was
uploaded before the crash and is acknowledged without being ingested again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio import Redis

CHUNK = 5000  # fields per HSET / HMGET / HDEL
OBJECT_TTL = 7 * 86400  # an object record outlives any reasonable outage of the whole group


class Ledger:
    def __init__(self, client: Redis, stream: str, group: str) -> None:
        self.client = client
        # One hash slot per stream and group (the braces), so a cluster keeps them together.
        base = f"ingest:{{{stream}}}:{group}"
        self.entries = f"{base}:entries"
        self.objects = f"{base}:object:"

    async def attempting(self, object_id: str, key: str, ids: list[str]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.objects + object_id, key, ex=OBJECT_TTL)
            for chunk in _chunks(ids):
                pipe.hset(self.entries, mapping=dict.fromkeys(chunk, object_id))
            await pipe.execute()

    async def settled(self, ids: list[str]) -> None:
        """The entries are acknowledged: nothing needs to know where they went any more."""
        if not ids:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for chunk in _chunks(ids):
                pipe.hdel(self.entries, *chunk)
            await pipe.execute()

    async def in_r2(self, ids: list[str], holds: Callable[[str, str], Awaitable[bool]]) -> set[str]:
        """The entries among `ids` that are inside an object in R2 (`holds(key, object_id)`)."""
        owners: dict[str, str] = {}
        for chunk in _chunks(ids):
            values = await self.client.hmget(self.entries, chunk)
            owners |= {i: _text(v) for i, v in zip(chunk, values, strict=True) if v is not None}
        found: set[str] = set()
        for object_id in set(owners.values()):
            key = await self.client.get(self.objects + object_id)
            if key is not None and await holds(_text(key), object_id):
                found |= {i for i, o in owners.items() if o == object_id}
        return found


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
