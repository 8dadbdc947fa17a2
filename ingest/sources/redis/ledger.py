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


# One argument holding every id (comma-separated) instead of one argument per id: packing hundreds of
# thousands of arguments in Python costs more than Redis needs to run the loop.
# Many fields per HSET / HDEL (in slices under Lua's stack limit for unpack()): one command per entry
# cost Redis three CPU-seconds per million entries, more than reading them (measured).
_RECORD = """
local object = ARGV[1]
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
local pairs = {}
for id in string.gmatch(ARGV[4], '[^,]+') do
  pairs[#pairs + 1] = id
  pairs[#pairs + 1] = object
  if #pairs == 4000 then redis.call('HSET', KEYS[1], unpack(pairs)); pairs = {} end
end
if #pairs > 0 then redis.call('HSET', KEYS[1], unpack(pairs)) end
return 0
"""
_FORGET = """
local ids = {}
for id in string.gmatch(ARGV[1], '[^,]+') do
  ids[#ids + 1] = id
  if #ids == 4000 then redis.call('HDEL', KEYS[1], unpack(ids)); ids = {} end
end
if #ids > 0 then redis.call('HDEL', KEYS[1], unpack(ids)) end
return 0
"""
# XACK of many ids, in slices that stay under Lua's stack limit for unpack().
_XACK = """
local ids = {}
local acked = 0
for id in string.gmatch(ARGV[2], '[^,]+') do
  ids[#ids + 1] = id
  if #ids == 4000 then acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids)); ids = {} end
end
if #ids > 0 then acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids)) end
return acked
"""

# Consumers with nothing pending that have not been seen for a while are removed, checked and deleted in
# one step: a consumer with pending entries is never deleted (its entries would leave every PEL).
_FORGET_CONSUMERS = """
local gone = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    gone[#gone + 1] = f['name']
  end
end
return gone
"""


class Ledger:
    def __init__(self, client: Redis, stream: str, group: str) -> None:
        self.client = client
        self.stream, self.group = stream, group
        # One hash slot per stream and group (the braces), so a cluster keeps them together.
        base = f"ingest:{{{stream}}}:{group}"
        self.entries = f"{base}:entries"
        self.objects = f"{base}:object:"
        # Set once the group exists: a group missing while this is set was deleted, not never made.
        self.marker = f"{base}:group"
        self._record = client.register_script(_RECORD)
        self._forget = client.register_script(_FORGET)
        self._xack = client.register_script(_XACK)
        self._forget_consumers = client.register_script(_FORGET_CONSUMERS)

    async def forget_consumers(self, keep: str, idle_ms: int) -> list[str]:
        """Delete the group's other consumers that have nothing pending and were idle over `idle_ms`."""
        gone = await self._forget_consumers(keys=[self.stream], args=[self.group, keep, idle_ms])
        return [g.decode() if isinstance(g, bytes) else str(g) for g in gone]

    async def attempting(self, object_id: str, key: str, ids: list[str]) -> None:
        keys = [self.entries, self.objects + object_id]
        await self._record(keys=keys, args=[object_id, key, OBJECT_TTL, ",".join(ids)])

    async def acknowledge(self, ids: list[str], rows: list[str]) -> None:
        """XACK the entries, then forget where their rows went (an ack retried after a failure between
        the two is harmless: XACK and HDEL of what is gone do nothing)."""
        await self._xack(keys=[self.stream], args=[self.group, ",".join(ids)])
        if rows:
            await self._forget(keys=[self.entries], args=[",".join(rows)])

    async def in_r2(self, ids: list[str], holds: Callable[[str, str], Awaitable[bool]]) -> set[str]:
        """The entries among `ids` that are inside an object in R2 (`holds(key, object_id)`)."""
        owners: dict[str, str] = {}
        for chunk in _chunks(ids):
            values = await self.client.hmget(self.entries, chunk)
            owners |= {i: text(v) for i, v in zip(chunk, values, strict=True) if v is not None}
        found: set[str] = set()
        for object_id in set(owners.values()):
            key = await self.client.get(self.objects + object_id)
            if key is not None and await holds(text(key), object_id):
                found |= {i for i, o in owners.items() if o == object_id}
        return found


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]


def text(value: bytes | str) -> str:
    """A Redis reply (bytes: replies are not decoded) as text."""
    return value.decode() if isinstance(value, bytes) else value
