"""Queue message bodies → JSON lines, by the message's content type.

A body is one record (a JSON object), a JSON array of records, or NDJSON text. `json` bodies arrive as
the JSON text that was sent, `text` as the text, `bytes` base64-encoded; `v8` (a Workers-only
serialization) cannot be read outside Workers. A body that cannot become records is a dead letter naming
the message id; a bad line inside an NDJSON body is one too (the pipeline's parser says which).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from ingest.durable.deadletters import DeadLetter
from ingest.sources.base import Ranges
from ingest.sources.queue.api import Pulled


@dataclass
class Lines:
    """JSON lines of many messages: line i + 1 is line `owners[i][1]` of message `owners[i][0]`."""

    block: bytearray = field(default_factory=bytearray)
    owners: list[tuple[int, int]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


class Poison(ValueError):
    """This body can never become records."""


def decode(messages: list[Pulled], source: str, covered: dict[str, Ranges] | None = None) -> Lines:
    """`covered`: lines of (redelivered) messages that objects in R2 already hold: left out."""
    out = Lines()
    covered = covered or {}
    for index, message in enumerate(messages):
        try:
            lines = records_of(message)
        except Poison as exc:
            out.dead.append(DeadLetter(source, None, str(exc), _raw(message.body), entry=message.id))
            continue
        skip = covered.get(message.id, [])
        for number, line in enumerate(lines):
            if skip and any(a <= number < b for a, b in skip):
                continue
            out.block += line
            out.block += b"\n"
            out.owners.append((index, number))
    return out


def records_of(message: Pulled) -> list[bytes]:
    kind, body = message.content_type, message.body
    if kind == "v8":
        raise Poison(
            "content type v8 (Workers' structured clone) cannot be read outside Workers; have the "
            "producer send with contentType: 'json'"
        )
    if body is None:
        raise Poison("the message has no body")
    if kind == "json" and not isinstance(body, str):  # an API that hands back the parsed value
        return _value(body)
    if kind == "bytes":
        try:
            text = base64.b64decode(str(body), validate=True)
        except (binascii.Error, ValueError):
            raise Poison("content type bytes, but the body is not base64") from None
    else:
        text = str(body).encode("utf-8", "surrogatepass")
    return _text(text, kind == "json")


def _text(text: bytes, json_body: bool) -> list[bytes]:
    stripped = text.strip()
    if not stripped:
        return []
    first = stripped[:1]
    if first == b"{" and b"\n" not in stripped and b"\r" not in stripped:
        return [stripped]  # the common case: one record, parsed (and checked) by the pipeline's reader
    if first == b"{":  # an object over several lines (pretty-printed), else NDJSON
        try:
            return _value(json.loads(stripped))
        except json.JSONDecodeError as exc:
            if json_body:
                raise Poison(f"not valid JSON: {exc.msg} at position {exc.pos}") from None
    elif first == b"[":
        try:
            return _value(json.loads(stripped))
        except json.JSONDecodeError as exc:
            raise Poison(f"not valid JSON: {exc.msg} at position {exc.pos}") from None
    if json_body and first == b'"':  # a JSON string: its text is the records
        try:
            inner = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise Poison(f"not valid JSON: {exc.msg} at position {exc.pos}") from None
        return _text(str(inner).encode("utf-8", "surrogatepass"), False)
    elif json_body:
        raise Poison(f"a JSON {_kind_of(stripped)}, not an object or an array of objects")
    # NDJSON: one record per line (a bad line becomes a dead letter of its own)
    return [line.strip() for line in stripped.splitlines() if line.strip()]


def _value(value: Any) -> list[bytes]:
    items = value if isinstance(value, list) else [value]
    out: list[bytes] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            where = f"item {i} of the array is" if isinstance(value, list) else "the body is"
            raise Poison(f"{where} a JSON {type(item).__name__}, not an object")
        out.append(
            json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        )
    return out


def _kind_of(text: bytes) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return "text that does not parse"
    return {bool: "boolean", int: "number", float: "number", type(None): "null"}.get(type(value), "value")


def _raw(body: Any) -> str | bytes | None:
    if body is None or isinstance(body, str | bytes):
        return body
    return json.dumps(body)
