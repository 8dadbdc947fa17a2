"""Redis stream entries, and each as the one JSON line the stream source parses (and dead letters keep)."""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

_first, _second = itemgetter(0), itemgetter(1)


@dataclass(slots=True)
class Entries:
    """Entries of one stream as two lists, their ids and their fields ([field, value, ...] each).
    Not a list of (id, fields) pairs: a tuple per entry, made by one loop and taken apart again by
    the next, was a third of the Redis reading's time on the event loop (profiled, 1M entries)."""

    ids: list[str]
    fields: list[list[bytes]]

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, list[bytes]]]) -> Entries:
        listed = list(pairs)
        return cls([i for i, _ in listed], [f for _, f in listed])

    @classmethod
    def from_reply(cls, reply: list[list[Any]] | None) -> Entries:
        """A reply's entries ([id, fields] each, ids as bytes: replies are not decoded), without
        those deleted from the stream since (no fields). Every step runs in C (map, join, split):
        a loop over the entries in Python took a tenth of the worker's time (py-spy)."""
        if not reply:
            return cls([], [])
        fields = list(map(_second, reply))
        ids = b"\n".join(map(_first, reply)).decode().split("\n")
        if None in fields:
            keep = [n for n, f in enumerate(fields) if f is not None]
            return cls([ids[n] for n in keep], [fields[n] for n in keep])
        return cls(ids, fields)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, list[bytes]]]:
        return zip(self.ids, self.fields, strict=True)

    def without(self, ids: Container[str]) -> Entries:
        return Entries.of((i, f) for i, f in self if i not in ids)

    def lines(self, field: bytes) -> bytes:
        """The entries as JSON lines, one each (`entry_line`), each ended by a newline. The usual
        entry is only `field`: its value is the line, and the whole block is made by C loops."""
        if not self.ids:
            return b""
        if set(map(len, self.fields)) == {2} and set(map(_first, self.fields)) == {field}:
            # (joined with an empty last item, not `+ b"\n"`: a copy of megabytes costs more
            # in page faults than the join itself)
            block = b"\n".join(chain(map(_second, self.fields), (b"",)))
            if block.count(b"\n") == len(self.ids) and b"\r" not in block:
                return block
        return b"".join(chain.from_iterable((entry_line(f, field), b"\n") for f in self.fields))


def entry_line(fields: list[bytes], field: bytes) -> bytes:
    """An entry as one JSON line: its `field` (one JSON object), or all its fields as strings."""
    if fields[:1] == [field]:  # the common case: the field first
        data = fields[1]
    else:
        named = dict(zip(fields[::2], fields[1::2], strict=False))
        found = named.get(field)
        if found is None:  # names and values as text; bytes that are not UTF-8 stay as they are,
            # so the line is not UTF-8 either and becomes a dead letter holding them (never U+FFFD)
            as_text = {
                k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
                for k, v in named.items()
            }
            found = json.dumps(as_text, ensure_ascii=False).encode("utf-8", "surrogateescape")
        data = found
    if b"\n" in data or b"\r" in data:  # a pretty-printed object: one line, same values
        try:
            data = json.dumps(json.loads(data), ensure_ascii=False).encode()
        except ValueError:
            data = data.replace(b"\r", b" ").replace(b"\n", b" ")  # stays malformed: a dead letter
    return data


class InFlight:
    """A stream's entries taken and not yet acknowledged, kept a unit at a time: a read's thousands
    of entries are added and removed in one step (a set of all of them cost a tenth of a second a
    million entries, twice); the set is built only when asked (claims, every claim_interval)."""

    def __init__(self) -> None:
        self._units: dict[object, list[str]] = {}
        self._all: set[str] | None = None

    def add(self, unit: object, ids: list[str]) -> None:
        self._units[unit] = ids
        self._all = None

    def remove(self, unit: object) -> None:
        if self._units.pop(unit, None) is not None:
            self._all = None

    def __contains__(self, entry: object) -> bool:
        if self._all is None:
            self._all = {i for ids in self._units.values() for i in ids}
        return entry in self._all

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._units.values())

    def ids(self) -> list[str]:
        """Every entry in flight, once each, sorted."""
        return sorted({i for ids in self._units.values() for i in ids})
