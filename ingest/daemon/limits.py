"""The process's file-descriptor limit, and log lines about it counted instead of repeated.

Apart from the server's connections (connections.py), which import uvicorn: every run needs these,
and a `--once` run without a server would pay for uvicorn's import (about 30 ms) for nothing.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

from ingest.logs import get_logger

log = get_logger("ingest.daemon.server")
LOG_INTERVAL = 10.0  # seconds between log lines about refused connections or failed accepts
RESERVE = 64  # descriptors kept for everything but connections, at least


def open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (allowed without privileges); the soft
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


def connection_cap(configured: int, limit: int) -> int:
    """`server.max_connections`, or (0) three quarters of the open-files limit."""
    if configured:
        return configured
    return max(16, min(limit * 3 // 4, limit - RESERVE))


class Tally:
    """Events counted and logged at most once every LOG_INTERVAL (with the counts since the last)."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.counts: dict[str, int] = {}
        self.logged = 0.0

    def add(self, what: str, **context: int) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        now = time.monotonic()
        if now - self.logged >= LOG_INTERVAL:
            log.warning(self.message, **context, **self.counts)
            self.counts, self.logged = {}, now


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: a failed accept (out of file descriptors) is one log line
    per LOG_INTERVAL with a count, not a traceback each time (asyncio retries the accept each second);
    anything else goes to asyncio's default handler."""
    if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
        _accepts.add("failed_accepts")
        return
    loop.default_exception_handler(context)


_accepts = Tally("cannot accept connections: out of file descriptors (raise LimitNOFILE / ulimit -n)")
