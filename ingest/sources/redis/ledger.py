"""The ledger: which stream entries each object holds, kept in Redis where every worker of a group sees it.

Written before each PUT: the object's key attempted (object id → key), and one *span record* per unit
and object: the entries of that unit the object holds, as spans of stream ids. A `>` read hands out
every entry between its first and last id, so its rows are one span (a few when some entries were dead
letters); entries taken over or resumed are listed one by one. A span record is deleted when its unit
is acknowledged (XACK). A worker that takes over a dead worker's entries looks them up: an entry inside
a span of an object in R2 under that key (its `batch-id` metadata says so, as the uploader checks after
a 412) was uploaded before the crash and is acknowledged without being ingested again.

Before, the ledger held one hash field per entry: set before the PUT, deleted at the XACK. That cost
Redis 2.5 CPU-seconds per million entries, half of all its work for the source (measured); spans cost
two commands per unit and object, whatever their size.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import hiredis
from redis.asyncio import Redis

from ingest.sources.base import Ranges

CHUNK = 5000  # fields per HMGET (the per-entry records of versions before spans)
SWEEP = 500  # span records checked at most per sweep
OBJECT_TTL = 7 * 86400  # an object record outlives any reasonable outage of the whole group
Span = tuple[str, str]  # first and last entry id: every entry of the stream between them (both included)


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
        self.spans = f"{base}:spans"  # field "<object id> <first entry>" → {"o", "t", "s": spans}
        self.entries = f"{base}:entries"  # versions before spans: entry id → object id (read only)
        self.objects = f"{base}:object:"
        # Set once the group exists: a group missing while this is set was deleted, not never made.
        self.marker = f"{base}:group"
        # Which process wrote a record: this one's own records go with its acks, never by a sweep.
        self.run = uuid.uuid4().hex[:12]
        self._forget_consumers = client.register_script(_FORGET_CONSUMERS)

    async def forget_consumers(self, keep: str, idle_ms: int) -> list[str]:
        """Delete the group's other consumers that have nothing pending and were idle over `idle_ms`."""
        gone = await self._forget_consumers(keys=[self.stream], args=[self.group, keep, idle_ms])
        return [g.decode() if isinstance(g, bytes) else str(g) for g in gone]

    async def attempting(self, object_id: str, key: str, spans: list[Span]) -> str:
        """Record, before a PUT of the object under `key`, that it holds the entries of `spans` (one
        unit's); returns the record's field, to delete once the unit is acknowledged."""
        field = f"{object_id} {spans[0][0]}"
        record = json.dumps(
            {"o": object_id, "t": int(time.time()), "r": self.run, "s": spans}, separators=(",", ":")
        )
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.objects + object_id, key, ex=OBJECT_TTL)
            pipe.hset(self.spans, field, record)
            await pipe.execute()
        return field

    async def acknowledge(self, ids: list[str], fields: list[str]) -> None:
        """XACK the entries, then (only if that worked) delete the span records of their unit. An
        ack retried after a failure is harmless: XACK and HDEL of what is gone do nothing; a record
        left by a failure between the two goes with a sweep (none of its entries is pending).

        The XACK is packed in a thread and sent as it is: Redis spends half the time on a plain
        XACK of 10,000 ids that it spent on a Lua script splitting them from one argument (measured:
        100 acks of 10,000 ids, 0.35 against 0.65 s, the tail of every `--once`), and redis-py
        would pack the 10,000 arguments on the event loop (4 ms each)."""
        if ids:
            packed = await anyio.to_thread.run_sync(_packed, ("XACK", self.stream, self.group, *ids))
            await self._send(packed)  # an error (WRONGTYPE: no stream) is raised, nothing deleted
        if fields:
            await self.client.hdel(self.spans, *fields)

    async def _send(self, packed: bytes) -> object:
        """One packed command on a connection of the client's pool; its reply (an error reply
        raised). redis-py closes the connection itself when sending or reading fails (a reply may be
        left unread on it); it goes back to the pool even when the ack is cancelled."""
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(packed)
            return await connection.read_response()
        finally:
            with anyio.CancelScope(shield=True):
                await pool.release(connection)

    async def in_r2(self, ids: list[str], holds: Callable[[str, str], Awaitable[bool]]) -> set[str]:
        """The entries among `ids` that are inside an object in R2 (`holds(key, object_id)`)."""
        wanted = sorted(ids, key=entry_order)
        order = [entry_order(i) for i in wanted]
        owners: dict[str, set[str]] = {}  # object id → the entries asked about that it holds
        for record in (await self.client.hgetall(self.spans)).values():
            span_record = json.loads(record)
            for first, last in span_record["s"]:
                a, b = bisect_left(order, entry_order(first)), bisect_right(order, entry_order(last))
                if a < b:
                    owners.setdefault(span_record["o"], set()).update(wanted[a:b])
        for object_id, held in (await self._per_entry(wanted)).items():
            owners.setdefault(object_id, set()).update(held)
        found: set[str] = set()
        for object_id, held in owners.items():
            if held <= found:
                continue
            key = await self.client.get(self.objects + object_id)
            if key is not None and await holds(text(key), object_id):
                found |= held
        return found

    async def _per_entry(self, ids: list[str]) -> dict[str, set[str]]:
        """Object id → entries, from the per-entry records of an earlier version (a worker of it
        that died leaves them; none are written now)."""
        if not await self.client.exists(self.entries):
            return {}
        out: dict[str, set[str]] = {}
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            for entry, value in zip(chunk, await self.client.hmget(self.entries, chunk), strict=True):
                if value is not None:
                    out.setdefault(text(value), set()).add(entry)
        return out

    async def sweep(self, older_than: float) -> int:
        """Delete span records older than `older_than` (seconds) none of whose entries is pending in
        the group any more: those of a worker that died, whose entries were taken over and
        acknowledged since. A record with an entry still pending stays, whoever wrote it. Returns
        how many went."""
        now = time.time()
        stale = []
        for field, record in (await self.client.hgetall(self.spans)).items():
            span_record = json.loads(record)
            if now - span_record["t"] >= older_than and span_record.get("r") != self.run:
                stale.append((text(field), span_record["s"]))
        # Records of live workers held up (an R2 outage) stay stale while pending: a sample a sweep
        # bounds the XPENDING calls; what a dead worker left goes within a few sweeps.
        gone = [
            f
            for f, spans in random.sample(stale, min(len(stale), SWEEP))
            if not await self._any_pending(spans)
        ]
        if gone:
            await self.client.hdel(self.spans, *gone)
        # An earlier version's per-entry records, a slice at a time: each goes once not pending.
        _, legacy = await self.client.hscan(self.entries, 0, count=1000)
        done = [text(e) for e in legacy if not await self._any_pending([(text(e), text(e))])]
        if done:
            await self.client.hdel(self.entries, *done)
        return len(gone) + len(done)

    async def _any_pending(self, spans: list[Span]) -> bool:
        for first, last in spans:
            if await self.client.xpending_range(self.stream, self.group, first, last, 1):
                return True
        return False


def unit_spans(rows: list[str], ranges: Ranges, ids: list[str], contiguous: bool) -> list[Span]:
    """The spans of stream ids holding rows `ranges` of a unit: `rows` is the entry of each row ("":
    gone from the stream), `ids` the unit's entries in stream order. `contiguous`: the unit is one `>`
    read, so every stream entry between two of its entries is one of them, and a run of rows whose
    entries follow each other in `ids` is one span. Otherwise each entry is a span of its own."""
    if contiguous and len(rows) == len(ids):  # every entry is a row (the usual read): one span a range
        return [(rows[a], rows[b - 1]) for a, b in ((a, min(b, len(rows))) for a, b in ranges) if a < b]
    position = {entry: n for n, entry in enumerate(ids)} if contiguous else {}
    out: list[Span] = []
    for a, b in ranges:
        run: tuple[str, str, int] | None = None  # first, last, position of last (-2: none)
        for entry in rows[a : min(b, len(rows))]:
            if not entry:
                continue
            at = position.get(entry, -2)
            if run is not None and at >= 0 and at == run[2] + 1:
                run = (run[0], entry, at)
                continue
            if run is not None:
                out.append((run[0], run[1]))
            run = (entry, entry, at)
        if run is not None:
            out.append((run[0], run[1]))
    return out


def entry_order(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


def text(value: bytes | str) -> str:
    """A Redis reply (bytes: replies are not decoded) as text."""
    return value.decode() if isinstance(value, bytes) else value


def _packed(command: tuple[str, ...]) -> bytes:
    pack: Any = hiredis.pack_command  # (its stub types a one-argument command only)
    return bytes(pack(command))
