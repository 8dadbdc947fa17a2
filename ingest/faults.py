"""Crash points, for the crash-matrix tests: kill -9 at exactly the moments that are hardest to survive.

`INGEST_CRASH_AT=<point>[:<n>]` makes the worker SIGKILL itself the n-th time (default 1st) it passes
`<point>`. Unset (always, in production) it costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3

POINTS = (
    "encoded",  # objects written to the spool, journal not yet updated
    "spooled",  # journal says spooled, upload not started
    "put",  # object in R2, journal not yet updated
    "uploaded",  # journal says uploaded, source not yet acknowledged
    "acked",  # source file deleted, journal not yet updated
    "claimed",  # landing: claim marker created, object not yet copied
    "unlanded",  # landing: object deleted, its marker and local copy not yet
)
_point, _, _nth = os.environ.get("INGEST_CRASH_AT", "").partition(":")
_left = int(_nth or 1)


def crash_point(name: str) -> None:
    global _left
    if name != _point:
        return
    _left -= 1
    if _left == 0:
        os.kill(os.getpid(), signal.SIGKILL)


# `INGEST_DISK_FULL_AT=<point>[:<n>[:<times>]]`: from the n-th time (default 1st) the spool or journal
# write named `<point>` runs, it fails `times` times in a row (default 3) with the error a full disk
# gives that very call (SQLite: "database or disk is full"; files: ENOSPC), then the disk has room again.
_full_point, _, _full_rest = os.environ.get("INGEST_DISK_FULL_AT", "").partition(":")
_full_nth, _, _full_times = _full_rest.partition(":")
_full_skip = int(_full_nth or 1) - 1
_full_left = int(_full_times or 3)


def disk_full_point(name: str, kind: str = "sqlite") -> None:
    global _full_skip, _full_left
    if name != _full_point or _full_left <= 0:
        return
    if _full_skip > 0:
        _full_skip -= 1
        return
    _full_left -= 1
    if kind == "sqlite":
        raise sqlite3.OperationalError("database or disk is full")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
