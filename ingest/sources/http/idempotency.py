"""Idempotency-Key: a request sent again with a key already answered gets the first answer back and
is not ingested again, for `idempotency_window` (across restarts: the answers are in the journal,
written in the same transaction as the request's records, see source.py).

A repeat that arrives while the first is still being taken waits for it and gets its answer as soon as
it exists. The same key with a different body is a client bug: 422. The first request of a key is
registered before anything is awaited (even the journal lookup), so under any interleaving one request
per key is taken and every other one waits for it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from ingest.sources.base import RequestRow

MAX_KEY = 255


class KeyError422(Exception):
    """The key was used before with another body."""


@dataclass(eq=False)
class Answer:
    status: int
    body: dict[str, object]
    blocks: list[str] = field(default_factory=list)  # unit ids holding the records
    replayed: bool = False


@dataclass(eq=False)
class _InFlight:
    hash: str
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: Answer | None = None


def key_problem(key: str) -> str | None:
    if not 1 <= len(key) <= MAX_KEY or not key.isascii() or not key.isprintable():
        return f"Idempotency-Key: 1 to {MAX_KEY} printable ASCII characters (got {len(key)} characters)"
    return None


def body_hash(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


Lookup = Callable[[str], Awaitable[RequestRow | None]]


class IdempotencyKeys:
    def __init__(self, window: float) -> None:
        self.window = window
        self.lookup: Lookup | None = None  # the journal's answer for a key (set when the source runs)
        self._inflight: dict[str, _InFlight] = {}

    async def begin(self, key: str, digest: str) -> Answer | None:
        """The earlier answer for `key` (None: this request is the first and must call `end`)."""
        while (running := self._inflight.get(key)) is not None:
            if running.hash != digest:
                raise KeyError422(key)
            await running.done.wait()
            if running.answer is not None and running.answer.status < 300:
                return _replay(running.answer)
            # The first failed (nothing was accepted): this one is taken as a new request.
        self._inflight[key] = _InFlight(digest)  # before any await: repeats wait for it
        try:
            row = await self.lookup(key) if self.lookup is not None else None
        except BaseException:
            self.end(key, None)
            raise
        if row is None or row.created < time.time() - self.window:
            return None
        if row.hash != digest:
            self.end(key, None)
            raise KeyError422(key)
        answer = Answer(202, json.loads(row.answer), row.units.split())
        self.end(key, answer)  # repeats that waited for this lookup get the journal's answer too
        return _replay(answer)

    def row(self, key: str, answer: Answer) -> RequestRow:
        """What the journal keeps for `key` (written with the request's records)."""
        flight = self._inflight[key]
        return RequestRow(key, flight.hash, json.dumps(answer.body), " ".join(answer.blocks), time.time())

    def end(self, key: str, answer: Answer | None) -> None:
        """The first request with `key` is answered (None: it failed; a repeat is taken anew)."""
        flight = self._inflight.pop(key, None)
        if flight is not None:
            flight.answer = answer
            flight.done.set()


def _replay(answer: Answer) -> Answer:
    return Answer(answer.status, answer.body, answer.blocks, replayed=True)
