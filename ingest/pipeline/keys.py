"""Object keys: the template, and sequence numbers that never collide without a coordinator.

The first number tried for a date comes from one LIST of that date's prefix per process; after that a
local counter. The number is only *claimed* by the conditional write itself (`If-None-Match: *`): on
412 the uploader asks for the next one. So twenty replicas can share a bucket and never overwrite.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import date, datetime

import anyio

from ingest.config import ConfigError
from ingest.layout import DEFAULT_TABLE
from ingest.logs import get_logger
from ingest.r2.client import R2AccessDenied

_MARK = "\x00SEQ\x00"

# list_keys(prefix, start_after) -> every key under prefix (after start_after)
ListKeys = Callable[[str, str], Awaitable[list[str]]]
# exists(key) -> whether an object is there (a HEAD)
Exists = Callable[[str], Awaitable[bool]]
log = get_logger("ingest.pipeline.keys")


class _SeqMark:
    def __format__(self, spec: str) -> str:
        return _MARK


class _Day(datetime):
    """A date for the template whose `%Y` is always four digits: the C library writes year 1 as
    `1`, and keys must sort and list by their text (`0001/01/01`, not `1/01/01`)."""

    def __format__(self, spec: str) -> str:
        spec = re.sub(r"(?<!%)((?:%%)*)%Y", lambda m: f"{m.group(1)}{self.year:04d}", spec)
        return super().__format__(spec)


class KeyTemplate:
    def __init__(self, template: str, prefix: str = "") -> None:
        self.template = template
        self.prefix = prefix
        try:
            sample = self._fmt(date(2024, 8, 2), _SeqMark(), "t")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"output.key_template: {exc!s} is not a placeholder; "
                "use {prefix}, {table}, {date:%Y/%m/%d} and {seq:04d}"
            ) from None
        if sample.count(_MARK) != 1:
            raise ConfigError("output.key_template: must contain {seq...} exactly once")
        # Without {table} every table shares one key space (and so one sequence): one table only.
        self.per_table = self._fmt(date(2024, 8, 2), 1, "a") != self._fmt(date(2024, 8, 2), 1, "b")

    def _fmt(self, day: date, seq: object, table: str) -> str:
        when = _Day(day.year, day.month, day.day)
        return self.template.format(prefix=self.prefix, date=when, seq=seq, table=table)

    def render(self, day: date, seq: int, table: str = DEFAULT_TABLE) -> str:
        return self._fmt(day, seq, table)

    def list_prefix(self, day: date, table: str = DEFAULT_TABLE) -> str:
        """The part of the key before the sequence number: everything one LIST needs to see."""
        return self._fmt(day, _SeqMark(), table).split(_MARK)[0]

    def table_prefix(self, table: str) -> str:
        """The fixed part of a table's keys, before any date or sequence number (to list a table)."""
        text = self.template.format(prefix=self.prefix, date=_SeqMark(), seq=_SeqMark(), table=table)
        return text.split(_MARK)[0]

    def parse_seq(self, day: date, key: str, table: str = DEFAULT_TABLE) -> int | None:
        head, tail = self._fmt(day, _SeqMark(), table).split(_MARK)
        m = re.fullmatch(re.escape(head) + r"(\d+)" + re.escape(tail), key)
        return int(m.group(1)) if m else None


Where = tuple[str, date]  # (table, day): each has its own sequence


class KeyAllocator:
    """Hands out candidate sequence numbers per table and date; concurrency-safe within the event loop."""

    def __init__(self, template: KeyTemplate, list_keys: ListKeys, exists: Exists | None = None) -> None:
        self.template = template
        self._list_keys = list_keys
        self._exists = exists
        self._probing = False  # LIST was denied (credentials scoped to objects under a prefix)
        self._next: dict[Where, int] = {}
        self._locks: dict[Where, anyio.Lock] = {}

    def key(self, day: date, seq: int, table: str = DEFAULT_TABLE) -> str:
        return self.template.render(day, seq, table)

    async def candidate(self, day: date, table: str = DEFAULT_TABLE) -> int:
        where = (table, day)
        if where not in self._next:
            lock = self._locks.setdefault(where, anyio.Lock())
            async with lock:
                if where not in self._next:
                    self._next[where] = await self._highest(where, "") + 1
        seq = self._next[where]
        self._next[where] = seq + 1
        return seq

    async def taken(self, day: date, seq: int, table: str = DEFAULT_TABLE) -> None:
        """`seq` was taken by another writer: look past every number taken since, instead of trying
        them one by one (each try would send the whole object again)."""
        where = (table, day)
        lock = self._locks.setdefault(where, anyio.Lock())
        async with lock:
            if self._next.get(where, 0) > seq + 1:
                return  # someone else already looked past it
            highest = await self._highest(where, self.template.render(day, seq, table))
            self._next[where] = max(self._next.get(where, 0), seq + 1, highest + 1)

    async def _highest(self, where: Where, start_after: str) -> int:
        table, day = where
        if not self._probing:
            prefix = self.template.list_prefix(day, table)
            try:
                keys = await self._list_keys(prefix, start_after)
            except R2AccessDenied as exc:
                if self._exists is None:
                    raise
                self._probing = True
                log.warning(
                    "LIST is not allowed with these credentials; finding free key numbers with HEAD",
                    prefix=prefix,
                    error=str(exc),
                )
            else:
                seqs = (self.template.parse_seq(day, k, table) for k in keys)
                return max((s for s in seqs if s is not None), default=0)
        base = self.template.parse_seq(day, start_after, table) or 0 if start_after else 0
        return await self._probe(where, base)

    async def _probe(self, where: Where, base: int) -> int:
        """The highest taken number above `base`, by HEAD: doubling steps until a free number, then
        bisection (numbers are taken in order, so the taken ones are contiguous; a gap only costs a
        412 and another try, never an overwrite)."""
        assert self._exists is not None
        table, day = where
        present, step = base, 1
        while await self._exists(self.template.render(day, present + step, table)):
            present, step = present + step, step * 2
        absent = present + step
        while absent - present > 1:
            mid = (present + absent) // 2
            if await self._exists(self.template.render(day, mid, table)):
                present = mid
            else:
                absent = mid
        return present
