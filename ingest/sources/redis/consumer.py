"""What the parts of the stream source (takeover.py, resume.py) need from it: the consumer's identity
and its Redis calls, declared here and provided by `RedisSource` (redis/source.py), their subclass."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ingest.sources.base import Units
from ingest.sources.redis.entries import InFlight
from ingest.sources.redis.ledger import Ledger

T = TypeVar("T")


class Consumer:
    streams: list[str]
    group: str
    consumer: str
    _inflight: dict[str, InFlight]  # stream → entries taken, not yet acked
    _units: Units | None
    _take: Callable[..., Awaitable[None]]  # (stream, entries, send, …): parse and send one unit

    @property
    def cmd(self) -> Any:
        """The client, for commands whose replies redis-py types loosely."""
        raise NotImplementedError

    def ledger(self, stream: str) -> Ledger:
        raise NotImplementedError

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A Redis call, retried through failures (see RedisSource._call)."""
        raise NotImplementedError
