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


class KeyTemplate:
    def __init__(self, template: str, prefix: str = "") -> None:
        self.template = template
        self.prefix = prefix
        try:
            sample = self._fmt(date(2024, 8, 2), _SeqMark())
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"output.key_template: {exc!s} is not a placeholder; "
                "use {prefix}, {date:%Y/%m/%d} and {seq:04d}"
            ) from None
        if sample.count(_MARK) != 1:
            raise ConfigError("output.key_template: must contain {seq...} exactly once")

    def _fmt(self, day: date, seq: object) -> str:
        when = datetime(day.year, day.month, day.day)
        return self.template.format(prefix=self.prefix, date=when, seq=seq)

    def render(self, day: date, seq: int) -> str:
        return self._fmt(day, seq)

    def list_prefix(self, day: date) -> str:
        """The part of the key before the sequence number: everything one LIST needs to see."""
        return self._fmt(day, _SeqMark()).split(_MARK)[0]

    def parse_seq(self, day: date, key: str) -> int | None:
        head, tail = self._fmt(day, _SeqMark()).split(_MARK)
        m = re.fullmatch(re.escape(head) + r"(\d+)" + re.escape(tail), key)
        return int(m.group(1)) if m else None


class KeyAllocator:
    """Hands out candidate sequence numbers per date; concurrency-safe within the event loop."""

    def __init__(self, template: KeyTemplate, list_keys: ListKeys, exists: Exists | None = None) -> None:
        self.template = template
        self._list_keys = list_keys
        self._exists = exists
        self._probing = False  # LIST was denied (credentials scoped to objects under a prefix)
        self._next: dict[date, int] = {}
        self._locks: dict[date, anyio.Lock] = {}

    async def candidate(self, day: date) -> int:
        if day not in self._next:
            lock = self._locks.setdefault(day, anyio.Lock())
            async with lock:
                if day not in self._next:
                    self._next[day] = await self._highest(day, "") + 1
        seq = self._next[day]
        self._next[day] = seq + 1
        return seq

    async def taken(self, day: date, seq: int) -> None:
        """`seq` was taken by another writer: look past every number taken since, instead of trying
        them one by one (each try would send the whole object again)."""
        lock = self._locks.setdefault(day, anyio.Lock())
        async with lock:
            if self._next.get(day, 0) > seq + 1:
                return  # someone else already looked past it
            highest = await self._highest(day, self.template.render(day, seq))
            self._next[day] = max(self._next.get(day, 0), seq + 1, highest + 1)

    async def _highest(self, day: date, start_after: str) -> int:
        if not self._probing:
            try:
                keys = await self._list_keys(self.template.list_prefix(day), start_after)
            except R2AccessDenied as exc:
                if self._exists is None:
                    raise
                self._probing = True
                log.warning(
                    "LIST is not allowed with these credentials; finding free key numbers with HEAD",
                    prefix=self.template.list_prefix(day),
                    error=str(exc),
                )
            else:
                return max((s for k in keys if (s := self.template.parse_seq(day, k)) is not None), default=0)
        base = self.template.parse_seq(day, start_after) or 0 if start_after else 0
        return await self._probe(day, base)

    async def _probe(self, day: date, base: int) -> int:
        """The highest taken number above `base`, by HEAD: doubling steps until a free number, then
        bisection (numbers are taken in order, so the taken ones are contiguous; a gap only costs a
        412 and another try, never an overwrite)."""
        assert self._exists is not None
        present, step = base, 1
        while await self._exists(self.template.render(day, present + step)):
            present, step = present + step, step * 2
        absent = present + step
        while absent - present > 1:
            mid = (present + absent) // 2
            if await self._exists(self.template.render(day, mid)):
                present = mid
            else:
                absent = mid
        return present
