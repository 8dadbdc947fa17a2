"""Threads for work that may wait: encoding batches at a lower CPU priority than everything else.

A batch's encode (cast, sort by day, Parquet with zstd) takes whole cores for a while; on a small
machine that while is what an HTTP sender waits for its 202, or a Redis read for its turn. Encoding
runs in threads of its own whose scheduling priority is lowered (`nice` +BACKGROUND_NICE, per thread:
Linux lets a thread lower its own priority, never raise it), so the event loop, request parsing and
journal commits go first when the cores are contended, and encoding takes whatever is left; when
nothing else runs it has the cores as before, so throughput is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")

BACKGROUND_NICE = 10  # CFS weight 110 against 1024 for nice 0: about a tenth when contended
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _lower_priority() -> None:
    # Not Linux, or not allowed: the threads run at normal priority.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(threads, "ingest-encode", initializer=_lower_priority)
        return _pool


async def in_background(fn: Callable[[], T], threads: int = 2) -> T:
    """`fn()` in a low-priority thread; the caller waits for it (cancelling the wait leaves it to
    finish, as anyio's threads do)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(_executor(threads), partial(context.run, fn))
