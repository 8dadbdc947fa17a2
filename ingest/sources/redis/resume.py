"""After a restart, the stream source takes back this consumer's pending entries (a base of
`RedisSource`, like TakeOver: what it needs from the source is declared here, provided there).

The units the journal knows are read again with the rows already spooled skipped. Rows are numbered
as when the unit was first read: if entries were trimmed or deleted since, each remaining row keeps
its first number (the entries come from the consumer's pending list, which keeps deleted ones until
XACK, or from the unit's own list), so no row is skipped in place of another. What is gone and was
not taken is counted and logged once, and the unit is settled. Entries delivered but never journaled
(a crash right after XREADGROUP) and deleted since are counted, logged and acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pyarrow as pa
from anyio.streams.memory import MemoryObjectSendStream

from ingest import metrics
from ingest.logs import get_logger
from ingest.sources.base import Item, SourceUnit, merge_ranges
from ingest.sources.redis.consumer import Consumer
from ingest.sources.redis.entries import Entries
from ingest.sources.redis.ledger import entry_order, text

log = get_logger("ingest.sources.redis.source")
PREFIX = "redis:"  # unit ids of stream reads start with this
DEAD = ";dead="  # in a unit's fingerprint: positions of its entries that were dead letters
Shaped = list[tuple[pa.Table, int, list[int] | None]]


@dataclass(frozen=True)
class Known:
    """A journaled unit as it was first read: its entries and the entry of each of its rows, in
    order ("" where the stream no longer says which), and its journaled fingerprint."""

    entries: list[str]
    rows: list[str]
    fingerprint: str


class Resume(Consumer):
    """Taking back pending entries after a restart."""

    async def _read(
        self, where: dict[str, str], block: int | None, trimmed: list[str] | None = None
    ) -> list[tuple[str, Entries]]:
        raise NotImplementedError

    async def _resume(self, send: MemoryObjectSendStream[Item]) -> None:
        """Take back this consumer's pending entries: first the units the journal knows (same rows,
        the spooled ones skipped), then whatever else is pending for it."""
        assert self._units is not None
        resumed: set[str] = set()
        for known in self._units.known_units(PREFIX):
            _, first, last, count, stream = known.id.split(":", 4)
            if stream not in self._inflight:
                continue  # a stream no longer configured: its rows stay as they are
            listed, _, dead = known.fingerprint.partition(DEAD)
            ids: list[str] | None = None
            if listed == "range":
                entries = await self._call("XRANGE", partial(self._range, stream, first, last))
            else:
                ids = listed.removeprefix("ids:").split(",")
                entries = await self._call("XRANGE", partial(self._entries, stream, ids))
            resumed.update(entries.ids)
            gone = None
            if len(entries) != int(count):  # trimmed or deleted since: rows are tied to entry ids
                pel = await self._call("XPENDING", partial(self._pending_ids, stream, first, last))
                resumed.update(pel)
                gone = _known(known.fingerprint, ids, int(count), entries.ids, pel, dead)
            await self._take(stream, entries, send, unit_id=known.id, contiguous=ids is None, known=gone)
        for stream in self.streams:
            after = "0"
            while True:
                trimmed: list[str] = []
                reads = await self._call("XREADGROUP", partial(self._read, {stream: after}, None, trimmed))
                if trimmed := [i for i in trimmed if i not in resumed]:
                    await self._settle_trimmed(stream, trimmed)
                entries = Entries.of(pair for _, es in reads for pair in es)
                if not entries:
                    break
                after = entries.ids[-1]
                await self._take(stream, entries.without(resumed), send)
        if resumed:
            log.info("resumed this worker's pending entries", entries=len(resumed))

    async def _settle_trimmed(self, stream: str, ids: list[str]) -> None:
        """Entries delivered to this consumer, never journaled (it stopped right after reading them),
        and deleted from the stream since: nothing can read them now. Counted, logged, acknowledged
        (else they would stay pending for ever)."""
        log.warning(
            "entries delivered to this worker were deleted from the stream (trimmed) before it "
            "ingested them; they are lost",
            stream=stream,
            entries=len(ids),
            first=ids[0],
            last=ids[-1],
        )
        metrics.REDIS_ENTRIES.labels(stream, "trimmed").inc(len(ids))
        await self._call("XACK", partial(self.ledger(stream).acknowledge, ids, []))

    async def _pending_ids(self, stream: str, first: str, last: str) -> list[str]:
        """This consumer's pending entries between `first` and `last`, deleted ones included."""
        out: list[str] = []
        start = first
        while True:
            got = await self.cmd.xpending_range(
                stream, self.group, start, last, 10_000, consumername=self.consumer
            )
            out += [text(p["message_id"]) for p in got]
            if len(got) < 10_000:
                return out
            start = "(" + out[-1]

    async def _range(self, stream: str, first: str, last: str) -> Entries:
        return Entries.from_reply(await self.cmd.xrange(stream, first, last))

    async def _entries(self, stream: str, ids: list[str]) -> Entries:
        async with self.cmd.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.xrange(stream, i, i)
            replies = await pipe.execute()
        return Entries.from_reply([entry for reply in replies for entry in reply])

    async def _send_known(
        self,
        stream: str,
        unit: SourceUnit,
        known: Known,
        shaped: Shaped,
        ids: list[str],
        rows: list[str],
        send: MemoryObjectSendStream[Item],
    ) -> None:
        """The rows of entries still in the stream, each at its first reading's row number (`rows`:
        the entry of each row, the first reading's then any found only now); rows of entries gone from
        the stream and not already taken are lost: counted and logged once."""
        position = {entry: row for row, entry in enumerate(rows) if entry}
        runs: list[tuple[int, pa.Table, int]] = []  # (first row number, rows, first line)
        for table, first, numbered in shaped:
            lines = numbered if numbered is not None else list(range(first, first + table.num_rows))
            at = [position[ids[n - 1]] for n in lines]
            start = 0
            while start < len(at):  # runs of consecutive row numbers
                end = start + 1
                while end < len(at) and at[end] == at[end - 1] + 1:
                    end += 1
                runs.append((at[start], table.slice(start, end - start), lines[start]))
                start = end
        sent: list[tuple[int, int]] = []
        for row, table, line in sorted(runs, key=lambda run: run[0]):
            unit.next_row = row
            for chunk in unit.chunks(table, line, None):
                await send.send(chunk)
            sent.append((row, row + table.num_rows))
        n = len(known.rows)
        taken = merge_ranges([*unit.skip, *sent])
        lost = n - sum(min(b, n) - a for a, b in taken if a < n)
        metrics.REDIS_ENTRIES.labels(stream, "trimmed").inc(len(known.entries) - len(ids))
        log.warning(
            "entries were deleted from the stream (trimmed) before this worker ingested them",
            stream=stream,
            unit=unit.name,
            entries_gone=len(known.entries) - len(ids),
            rows_lost=max(lost, 0),
        )


def _known(
    fingerprint: str, listed: list[str] | None, count: int, present: list[str], pel: list[str], dead: str
) -> Known:
    """What a unit was when first read, from what is left of it: its entries are those listed in its
    fingerprint, or those still pending for this consumer in its range (deleted ones too: XACK alone
    removes them); failing both, the entries gone are taken to be its first ones (trimming removes the
    oldest). Its rows are its entries minus the dead letters its fingerprint names."""
    entries = listed or sorted({*pel, *present}, key=entry_order)
    if len(entries) != count:
        entries = [""] * (count - len(present)) + present
    skipped = {int(n) for n in dead.split(",") if n}
    rows = [e for n, e in enumerate(entries) if n not in skipped]
    return Known([e for e in entries if e], rows, fingerprint)
