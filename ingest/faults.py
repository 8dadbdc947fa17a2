"""Crash points, for the crash-matrix tests: kill -9 at exactly the moments that are hardest to survive.

`INGEST_CRASH_AT=<point>[:<n>]` makes the worker SIGKILL itself the n-th time (default 1st) it passes
`<point>`. Unset (always, in production) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

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
