"""Redis stream entries, and each as the one JSON line the stream source parses (and dead letters keep)."""

from __future__ import annotations

import json

Entries = list[tuple[str, list[bytes]]]  # (entry id, [field, value, field, value, ...])


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
