"""Dead workers of a Redis consumer group, for the stream source: heartbeats, take-over, poison entries.

Every `claim_interval`, entries idle longer than `claim_idle` are taken over (XAUTOCLAIM); those whose
object the ledger finds in R2 are acknowledged instead of ingested again. This worker's own in-flight
entries are claimed again meanwhile (XCLAIM JUSTID), so they never look idle while it lives. Entries
delivered more than `max_deliveries` times are dead letters, then acknowledged. Consumers of retired
workers with nothing pending are removed.
"""

from __future__ import annotations

from functools import partial

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from ingest import metrics
from ingest.config import SourceConfig
from ingest.durable.deadletters import DeadLetter, DeadLetters
from ingest.logs import get_logger
from ingest.sources.base import Item
from ingest.sources.redis.consumer import Consumer
from ingest.sources.redis.entries import Entries, entry_line
from ingest.sources.redis.ledger import entry_order, text

log = get_logger("ingest.sources.redis.source")


class TakeOver(Consumer):
    """The stream source's upkeep of its group (a base of `RedisSource`)."""

    config: SourceConfig
    name: str
    dead: DeadLetters

    async def _maintain(self, send: MemoryObjectSendStream[Item]) -> None:
        async with send:
            while True:
                await anyio.sleep(self.config.claim_interval)
                await self._heartbeat()
                await self._reclaim(send)
                await self._forget_consumers()
                await self._sweep()
                await self._measure()

    async def _heartbeat(self) -> None:
        """Entries still in flight here are claimed again by this consumer (JUSTID: not counted as a
        delivery), so they never look idle to the others while this worker lives."""
        idle = int(self.config.claim_interval * 500)  # reset before they reach 1.5 intervals idle
        for stream, inflight in self._inflight.items():
            taken = inflight.ids()
            for i in range(0, len(taken), 5000):
                chunk = taken[i : i + 5000]
                await self._call(
                    "XCLAIM",
                    partial(self.cmd.xclaim, stream, self.group, self.consumer, idle, chunk, justid=True),
                )

    async def _reclaim(self, send: MemoryObjectSendStream[Item]) -> None:
        idle = int(self.config.claim_idle * 1000)
        for stream in self.streams:
            await self._poison(stream, idle)
            cursor = "0-0"
            while True:
                reply = await self._call(
                    "XAUTOCLAIM",
                    partial(
                        self.cmd.xautoclaim,
                        stream,
                        self.group,
                        self.consumer,
                        idle,
                        cursor,
                        count=self.config.read_count,
                    ),
                )
                cursor = text(reply[0])
                entries = Entries.from_reply(reply[1])
                # Redis 7: entries deleted since were dropped from the pending list (not this
                # worker's own: their units count them when settled)
                deleted = reply[2] if len(reply) > 2 else []
                gone = [g for g in map(text, deleted) if g not in self._inflight[stream]]
                if gone:
                    log.warning(
                        "entries of a stopped worker were deleted from the stream (trimmed) before "
                        "anyone ingested them; they are lost",
                        stream=stream,
                        entries=len(gone),
                    )
                    metrics.REDIS_ENTRIES.labels(stream, "trimmed").inc(len(gone))
                fresh = entries.without(self._inflight[stream])
                if fresh:
                    metrics.REDIS_ENTRIES.labels(stream, "reclaimed").inc(len(fresh))
                    await self._take_over(stream, fresh, send)
                if cursor == "0-0":
                    break

    async def _take_over(self, stream: str, entries: Entries, send: MemoryObjectSendStream[Item]) -> None:
        """A dead worker's entries: those already in R2 (the ledger and a HEAD say so) are acked."""
        assert self._units is not None
        ids = entries.ids
        done = await self._call("ledger", partial(self.ledger(stream).in_r2, ids, self._units.in_r2))
        if done:
            await self._call(
                "XACK", partial(self.ledger(stream).acknowledge, sorted(done, key=entry_order), [])
            )
            metrics.REDIS_ENTRIES.labels(stream, "acked").inc(len(done))
            log.info("taken over entries were already in R2; acknowledged", stream=stream, entries=len(done))
        rest = entries.without(done)
        if rest:
            log.info("taking over entries of a worker that stopped", stream=stream, entries=len(rest))
            await self._take(stream, rest, send)

    async def _poison(self, stream: str, idle: int) -> None:
        """Idle entries delivered more than max_deliveries times: dead letters, then acked."""
        pending = await self._call(
            "XPENDING",
            partial(self.cmd.xpending_range, stream, self.group, "-", "+", self.config.read_count, idle=idle),
        )
        poison = {
            text(p["message_id"]): int(p["times_delivered"])
            for p in pending
            if int(p["times_delivered"]) > self.config.max_deliveries
            and text(p["message_id"]) not in self._inflight[stream]
        }
        if not poison:
            return
        claimed = await self._call(
            "XCLAIM", partial(self.cmd.xclaim, stream, self.group, self.consumer, idle, sorted(poison))
        )
        letters = [
            DeadLetter(
                f"redis:{stream}",
                None,
                f"delivered {poison[text(i)]} times (over max_deliveries = {self.config.max_deliveries}): "
                "its workers kept failing on it",
                entry_line(f, self.config.field.encode()) if f else None,
                entry=text(i),
            )
            for i, f in claimed
        ]
        await anyio.to_thread.run_sync(lambda: self.dead.write(letters, self.name))
        await self._call("XACK", partial(self.cmd.xack, stream, self.group, *[text(i) for i, _ in claimed]))
        metrics.REDIS_ENTRIES.labels(stream, "dead_lettered").inc(len(letters))

    async def _forget_consumers(self) -> None:
        """Consumers of retired workers (e.g. pods with random names): gone once nothing is pending
        for them and they were idle twice claim_idle; never one with pending entries."""
        for stream in self.streams:
            idle = int(self.config.claim_idle * 2000)
            gone = await self._call(
                "XGROUP DELCONSUMER", partial(self.ledger(stream).forget_consumers, self.consumer, idle)
            )
            if gone:
                log.info("removed idle consumers with nothing pending", stream=stream, consumers=gone)

    async def _sweep(self) -> None:
        """Span records of dead workers whose entries were all acknowledged since (see Ledger.sweep)."""
        for stream in self.streams:
            swept = await self._call(
                "ledger sweep", partial(self.ledger(stream).sweep, self.config.claim_idle)
            )
            if swept:
                log.info("removed ledger records of entries acknowledged since", stream=stream, records=swept)

    async def _measure(self) -> None:
        for stream in self.streams:
            groups = await self._call("XINFO GROUPS", partial(self.cmd.xinfo_groups, stream))
            for g in groups:
                if text(g["name"]) == self.group:
                    metrics.REDIS_PENDING.labels(stream, self.group).set(int(g["pending"]))
                    if g.get("lag") is not None:
                        metrics.REDIS_LAG.labels(stream, self.group).set(int(g["lag"]))
