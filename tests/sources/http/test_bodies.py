"""Request bodies: what is accepted, what is rejected with which line, and limits."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pyarrow as pa
import pytest
from starlette.requests import Request

from ingest.sources.http.bodies import (
    Bodies,
    BodyError,
    Media,
    ParseBudget,
    check_encoding,
    consecutive,
    decompress,
    media_type,
    records,
    stored,
    stored_records,
)

MAX = 1 << 20


def _ids(recs_tables: list[tuple[pa.Table, int, list[int] | None]]) -> list[object]:
    return [v for t, _, _ in recs_tables for v in t.column("id").to_pylist()]


def test_all_good_json_lines_keep_the_body_as_the_block() -> None:
    body = b'{"id": 1}\n{"id": 2}'  # no newline at the end
    recs = records(body, "ndjson", "r", MAX)
    assert recs.block == body + b"\n" and recs.rows == 2 and recs.rejected == []
    assert recs.lines == [1, 2]
    assert _ids(recs.tables) == [1, 2]


def test_bad_lines_are_rejected_with_their_line_and_the_block_parses_alone_to_the_same_rows() -> None:
    body = b'{"id": 1}\n\n{oops\n{"id": 2}\n"text"\n' + b'{"id": "' + b"x" * 100 + b'"}\n{"id": 3}\n'
    recs = records(body, "ndjson", "r", 50)
    assert [(d.line, d.reason.split(":")[0].split(" is ")[0]) for d in recs.rejected] == [
        (3, "invalid JSON"),
        (5, "not a JSON object"),
        (6, "record"),
    ]
    assert recs.lines == [1, 4, 7]  # the body's lines of the block's lines
    assert _ids(recs.tables) == [1, 2, 3]
    again = stored_records(stored(recs), 3, "r", 50)  # what a restart reads from the segment
    assert [t.to_pylist() for t, _, _ in again.tables] == [t.to_pylist() for t, _, _ in recs.tables]
    assert again.block == recs.block and again.lines == [1, 4, 7]  # numbered as the first time


def test_the_segment_keeps_the_body_line_of_each_block_line_only_when_they_differ() -> None:
    plain = records(b'{"id": 1}\n{"id": 2}\n', "ndjson", "r", MAX)
    assert stored(plain) == plain.block  # the common case: the block alone, numbered 1..n
    assert stored_records(stored(plain), 2, "r", MAX).lines == [1, 2]
    # elements of a JSON document, several on one line: no line numbering of the block says that
    doc = records(b'[{"id": 1}, {"id": 2},\n\n {"id": 3}, {"id": 4}, {"id": 5}]', "json", "r", MAX)
    assert doc.lines == [1, 1, 3, 3, 3] and not consecutive([1, 1, 3])  # ends on its count, yet shifted
    again = stored_records(stored(doc), 5, "r", MAX)
    assert again.lines == [1, 1, 3, 3, 3] and _ids(again.tables) == [1, 2, 3, 4, 5]
    body = b"".join(b'{"id": %d}\n' % i if i % 7 else b"{bad\n" for i in range(1, 200))
    many = records(body, "ndjson", "r", MAX)
    assert stored_records(stored(many), len(many.lines), "r", MAX).lines == many.lines
    with pytest.raises(pa.ArrowInvalid, match="does not hold its 4 journaled lines"):
        stored_records(stored(doc), 4, "r", MAX)  # a block that is not what the journal says


def test_json_array_and_single_object_and_json_lines_sent_as_json() -> None:
    array = records(b'[{"id": 1},\n 7,\n {"id": 2}]', "json", "r", MAX)
    assert _ids(array.tables) == [1, 2] and array.lines == [1, 3]
    assert [(d.line, d.reason) for d in array.rejected] == [(2, "element 2 is not a JSON object: int")]
    assert _ids(records(b'{"id": 5}', "json", "r", MAX).tables) == [5]
    assert _ids(records(b'{"id": 5}\n{"id": 6}\n', "json", "r", MAX).tables) == [5, 6]
    with pytest.raises(BodyError) as exc:
        records(b'[{"id": 1}, ', "json", "r", MAX)
    assert exc.value.status == 400 and "nothing was accepted" in str(exc.value)


def test_media_types_and_encodings() -> None:
    assert media_type("application/x-ndjson; charset=utf-8") == "ndjson"
    assert media_type("application/json") == "json"
    for bad in (None, "text/csv", "application/x-www-form-urlencoded"):
        with pytest.raises(BodyError) as exc:
            media_type(bad)
        assert exc.value.status == 415
    assert check_encoding(None) == "identity" and check_encoding("GZIP") == "gzip"
    with pytest.raises(BodyError) as exc:
        check_encoding("br")
    assert exc.value.status == 415


def test_decompression_is_bounded_and_a_broken_stream_is_400() -> None:
    data = json.dumps({"pad": "x" * 10_000}).encode()
    assert decompress(gzip.compress(data), "gzip", len(data)) == data
    with pytest.raises(BodyError) as exc:
        decompress(gzip.compress(data), "gzip", len(data) - 1)
    assert exc.value.status == 413
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    packed = sink.getvalue().to_pybytes()
    assert decompress(packed, "zstd", len(data)) == data
    with pytest.raises(BodyError) as exc:
        decompress(packed, "zstd", 100)
    assert exc.value.status == 413
    # several gzip members (writers that compress a piece at a time): every one is read, within the
    # limit, with zero bytes between them allowed; junk after a member is a 400, not dropped
    members = gzip.compress(data) + b"\0\0" + gzip.compress(b"tail")
    assert decompress(members, "gzip", len(data) + 4) == data + b"tail"
    with pytest.raises(BodyError) as exc:
        decompress(members, "gzip", len(data) + 3)
    assert exc.value.status == 413
    for coding, junk in (
        ("gzip", b"not gzip"),
        ("gzip", gzip.compress(data)[:-20]),
        ("gzip", gzip.compress(data) + gzip.compress(b"x" * 50)[:-20]),
        ("gzip", gzip.compress(data) + b"junk"),
        ("zstd", b"nope"),
    ):
        with pytest.raises(BodyError) as exc:
            decompress(junk, coding, len(data) + 100)
        assert exc.value.status == 400


def _request(pieces: list[bytes], stall: anyio.Event | None = None) -> Request:
    """A starlette request whose body arrives in `pieces`, then (with `stall`) waits for that event."""
    parts = list(pieces)

    async def receive() -> dict[str, Any]:
        if parts:
            return {
                "type": "http.request",
                "body": parts.pop(0),
                "more_body": bool(parts) or stall is not None,
            }
        assert stall is not None
        await stall.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/records", "headers": []}
    return Request(scope, receive)


async def _status(receiving: Callable[[], Awaitable[bytes]]) -> int:
    try:
        await receiving()
    except BodyError as exc:
        return exc.status
    return 200


@pytest.mark.anyio
async def test_bodies_arrive_whole_within_their_limits_or_not_at_all() -> None:
    bodies = Bodies(limit=10, timeout=0.2, retry_after=5)
    assert await bodies.receive(_request([b"12345", b"67890"])) == b"1234567890"
    assert await _status(lambda: bodies.receive(_request([b"12345", b"678901"]))) == 413
    stalled = anyio.Event()
    with anyio.fail_after(5):
        assert await _status(lambda: bodies.receive(_request([b"123"], stalled))) == 408


@pytest.mark.anyio
async def test_a_cut_refuses_bodies_still_arriving_and_later_ones_with_retry_after() -> None:
    bodies = Bodies(limit=1000, timeout=60, retry_after=5)
    stalled = anyio.Event()
    refused: list[BodyError] = []

    async def receive() -> None:
        try:
            await bodies.receive(_request([b'{"id": 1}\n'], stalled))
        except BodyError as exc:
            refused.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            bodies.cut()
    assert [(e.status, e.retry_after) for e in refused] == [(503, 5)]
    assert await _status(lambda: bodies.receive(_request([b"x"], anyio.Event()))) == 503


def test_a_json_array_body_is_decoded_one_element_at_a_time() -> None:
    """Issue 30 case 12: an array body used to become every element's dict at once (16 concurrent
    15 MiB arrays: 3 GB). Its Python memory now stays within a few times the body, like JSON lines:
    compared on the same records in one run (tracemalloc sees Python objects, not Arrow's buffers)."""
    rows = [{"id": i, "kind": "view", "user": f"u{i % 1000}", "v": i * 0.5} for i in range(100_000)]
    array = json.dumps(rows).encode()
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    del rows

    def peak(data: bytes, media: Media) -> int:
        tracemalloc.start()
        got = records(data, media, "t", 1 << 20)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert got.rows == 100_000 and not got.rejected
        return top

    as_lines, as_array = peak(lines, "ndjson"), peak(array, "json")
    assert as_array < 4 * len(array), (as_array, len(array))
    assert as_array < 4 * max(as_lines, len(lines)), (as_array, as_lines)


@pytest.mark.anyio
async def test_bodies_parsed_at_once_stay_within_the_budget() -> None:
    budget = ParseBudget(100, wait=5, retry_after=5)
    most = 0

    async def parse(size: int) -> None:
        nonlocal most
        async with budget.hold(size):
            most = max(most, budget.used)
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        for size in (40, 40, 40, 40, 250, 10):  # 250: over the budget, parsed alone
            tg.start_soon(parse, size)
    assert most <= 100 and budget.used == 0

    stuck = ParseBudget(100, wait=0.05, retry_after=5)
    async with stuck.hold(100):
        with pytest.raises(BodyError) as refused:
            async with stuck.hold(1):
                pass
    assert refused.value.status == 503 and refused.value.retry_after == 5
