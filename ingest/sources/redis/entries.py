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
