"""Message bodies → JSON lines, by content type: what becomes records, and what is a dead letter."""

from __future__ import annotations

import base64
import json

import pytest

from ingest.sources.queue.api import Pulled
from ingest.sources.queue.bodies import Poison, decode, records_of


def msg(body: object, kind: str = "json", mid: str = "m1") -> Pulled:
    return Pulled(mid, body, kind, 1, "lease", 0.0)


@pytest.mark.parametrize(
    ("body", "kind", "records"),
    [
        ('{"a":1}', "json", [{"a": 1}]),
        ('[{"a":1},{"a":2}]', "json", [{"a": 1}, {"a": 2}]),
        ('{\n  "a": 1\n}', "json", [{"a": 1}]),  # pretty-printed
        (json.dumps('{"a":1}\n{"a":2}'), "json", [{"a": 1}, {"a": 2}]),  # a JSON string holding NDJSON
        ('{"a":1}\n\n{"a":2}\n', "text", [{"a": 1}, {"a": 2}]),
        (base64.b64encode('{"é":"ü"}\n'.encode()).decode(), "bytes", [{"é": "ü"}]),
        ({"a": 1}, "json", [{"a": 1}]),  # an API that hands the value back parsed
        ("   ", "text", []),
    ],
)
def test_bodies_become_records(body: object, kind: str, records: list[dict[str, object]]) -> None:
    assert [json.loads(line) for line in records_of(msg(body, kind))] == records


@pytest.mark.parametrize(
    ("body", "kind", "said"),
    [
        ("42", "json", "a JSON number, not an object"),
        ('[{"a":1}, 2]', "json", "item 1 of the array is a JSON int"),
        ('{"a":', "json", None),  # one line: left to the line parser (a dead letter with its line)
        ("@@@", "bytes", "not base64"),
        ("AAAA", "v8", "cannot be read outside Workers"),
        (None, "json", "no body"),
        ("[1,", "text", "not valid JSON"),
    ],
)
def test_poison_says_why(body: object, kind: str, said: str | None) -> None:
    if said is None:
        assert records_of(msg(body, kind)) == [b'{"a":']
        return
    with pytest.raises(Poison, match=said):
        records_of(msg(body, kind))


def test_decode_numbers_lines_per_message_names_poison_by_id_and_skips_covered_lines() -> None:
    messages = [msg('{"a":1}', mid="x"), msg("42", mid="bad"), msg('{"b":1}\n{"b":2}\n{"b":3}', "text", "y")]
    lines = decode(messages, "queue:q", covered={"y": [(1, 2)]})
    assert bytes(lines.block) == b'{"a":1}\n{"b":1}\n{"b":3}\n'
    assert lines.owners == [(0, 0), (2, 0), (2, 2)]  # (message, its line): line 1 of y is in R2 already
    assert [(d.entry, d.line) for d in lines.dead] == [("bad", None)]
