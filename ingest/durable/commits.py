"""Group commit: items that queue up while a commit runs go together into the next one.

`Backlog` is the same for writes nobody waits on: one task writes whatever queued up, then the next.

The first caller with nothing running becomes the leader and commits group after group until the
queue is empty; every caller is answered (its result, or its group's error) once its own group is
done. The spool's journal writes and the HTTP source's accepted requests share it: one fsync for many.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Waiting(Generic[T]):
    item: T
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[list[R]]],
        abandoned: Callable[[T], BaseException],
    ) -> None:
        """`commit(items)` returns one result per item, in order, or raises for the whole group;
        `abandoned(item)` is what a caller gets when the leader was cancelled before its group ran."""
        self._commit = commit
        self._abandoned = abandoned
        self._queue: list[_Waiting[T]] = []
        self._leading = False

    async def __call__(self, item: T) -> R:
        waiting = _Waiting(item)
        self._queue.append(waiting)
        if not self._leading:
            await self._lead()
        await waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        return waiting.result  # type: ignore[no-any-return]

    async def _lead(self) -> None:
        self._leading = True
        group: list[_Waiting[T]] = []
        try:
            while self._queue:
                group, self._queue = self._queue, []
                try:
                    results = await self._commit([w.item for w in group])
                except Exception as exc:
                    for w in group:
                        w.error = exc
                else:
                    for w, result in zip(group, results, strict=True):
                        w.result = result
                for w in group:
                    w.done.set()
        finally:
            self._leading = False
            for w in [*group, *self._queue]:  # the leader was cancelled: nobody waits forever
                if not w.done.is_set():
                    w.error = w.error or self._abandoned(w.item)
                    w.done.set()
            self._queue = []


class Backlog(Generic[T]):
    """Items handed in without waiting: one task at a time hands all that queued up to `flush`
    (its errors end the task group it runs in), so many small writes cost one call and no task each."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[None]]) -> None:
        self._flush = flush
        self._items: list[T] = []
        self._running = False

    def add(self, item: T, tg: TaskGroup) -> None:
        self._items.append(item)
        if not self._running:
            self._running = True
            tg.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while self._items:
                items, self._items = self._items, []
                await self._flush(items)
        finally:
            self._running = False
