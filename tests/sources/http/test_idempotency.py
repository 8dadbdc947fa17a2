"""Idempotency-Key bookkeeping against a real journal: repeats wait for the first, then replay it."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from ingest.pipeline.journal import Journal
from ingest.sources.base import RequestRow
from ingest.sources.http.idempotency import Answer, IdempotencyKeys, KeyError422, body_hash, key_problem


def _keys(journal: Journal, window: float) -> IdempotencyKeys:
    """Keys whose lookups read the real journal (through its own read-only connection, as the
    pipeline does)."""
    reader = Journal(journal.path, readonly=True)

    async def lookup(key: str) -> RequestRow | None:
        return reader.request(key)

    keys = IdempotencyKeys(window)
    keys.lookup = lookup
    return keys


@pytest.mark.anyio
async def test_a_concurrent_repeat_waits_for_the_first_and_a_later_one_reads_the_journal(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.db")
    keys = _keys(journal, 3600)
    digest = body_hash("default", "ndjson", "identity", b'{"id": 1}')
    assert await keys.begin("k", digest) is None  # the first: it must take the request
    answers: list[Answer | None] = []

    async def repeat() -> None:
        answers.append(await keys.begin("k", digest))

    async with anyio.create_task_group() as tg:
        tg.start_soon(repeat)
        await anyio.sleep(0.05)
        assert answers == []  # still waiting for the first
        with pytest.raises(KeyError422):
            await keys.begin("k", body_hash("default", "ndjson", "identity", b'{"id": 2}'))
        first = Answer(202, {"accepted": 1, "request_id": "r1"}, ["http:seg:0:10:1:default:r1"])
        journal.accept([], [keys.row("k", first)])
        keys.end("k", first)
    [replayed] = answers
    assert replayed is not None and replayed.replayed and replayed.body == first.body

    later = _keys(journal, 3600)  # a restarted worker
    again = await later.begin("k", digest)
    assert again is not None and again.body == first.body and again.blocks == first.blocks
    expired = _keys(journal, 0.001)
    await anyio.sleep(0.01)
    assert await expired.begin("k", digest) is None  # past the window: a new request
    journal.prune_requests(time.time())
    assert journal.request("k") is None
    journal.close()


@pytest.mark.anyio
async def test_a_failed_first_lets_the_repeat_be_taken_anew(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    keys = _keys(journal, 3600)
    assert await keys.begin("k", "h") is None
    result: list[Answer | None] = []

    async def repeat() -> None:
        result.append(await keys.begin("k", "h"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(repeat)
        await anyio.sleep(0.05)
        keys.end("k", None)  # the first got 503: nothing was accepted
    assert result == [None]  # so the repeat takes it
    journal.close()


def test_key_shape() -> None:
    assert key_problem("order-42") is None
    assert key_problem("") is not None and key_problem("x" * 256) is not None
    assert key_problem("tab\there") is not None and key_problem("ключ") is not None


@pytest.mark.anyio
async def test_twenty_concurrent_firsts_with_a_slow_journal_take_the_key_once(tmp_path: Path) -> None:
    """The lookup awaits (the journal is read in a thread): every request arriving meanwhile must wait
    for the one that got there first, not become a first itself."""
    journal = Journal(tmp_path / "journal.db")
    keys = _keys(journal, 3600)
    inner = keys.lookup
    assert inner is not None

    async def slow(key: str) -> RequestRow | None:
        await anyio.sleep(0.02)
        return await inner(key)

    keys.lookup = slow
    digest = body_hash("default", "ndjson", "identity", b'{"id": 1}')
    firsts = 0
    answers: list[Answer] = []
    refused = 0

    async def request(n: int) -> None:
        nonlocal firsts, refused
        try:
            earlier = await keys.begin("k", digest if n % 5 else "another body")
        except KeyError422:
            refused += 1
            return
        if earlier is not None:
            answers.append(earlier)
            return
        firsts += 1
        await anyio.sleep(0.05)  # taking the request
        first = Answer(202, {"accepted": 1, "request_id": f"r{n}"}, [f"http:s:0:1:1:default:r{n}"])
        journal.accept([], [keys.row("k", first)])
        keys.end("k", first)

    async with anyio.create_task_group() as tg:
        for n in range(1, 21):
            tg.start_soon(request, n)
    assert firsts == 1
    assert len(answers) + refused == 19 and refused >= 3  # n = 5, 10, 15, 20 differ (one may be first)
    assert all(a.replayed and a.body == answers[0].body for a in answers)
    journal.close()
