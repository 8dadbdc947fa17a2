"""Fault hooks for tests, each set by an environment variable and inert when unset (always, in
production): crash points (`INGEST_CRASH_AT`: kill -9 at exactly the moments that are hardest to
survive), write failures (`INGEST_DISK_FULL_AT`: the real error from the real spool or journal call) and
a slow journal (`INGEST_JOURNAL_DELAY`) and a lost acknowledgement (`INGEST_LOSE_ACK`).

`INGEST_CRASH_AT=<point>[:<n>]` makes the worker SIGKILL itself the n-th time (default 1st) it passes
`<point>`; unset it costs one comparison.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import time

# Crash points, in the order a batch passes them:
#   encoded: objects written to the spool, journal not yet updated
#   spooled: journal says spooled, upload not started
#   put: object in R2, journal not yet updated
#   uploaded: journal says uploaded, source not yet acknowledged (Iceberg: not yet committed)
#   committed: Iceberg snapshot committed, journal not yet updated
#   commit journaled: journal says committed, source not yet acknowledged
#   finishing: directory source: claimed file deleted (or moved to done_dir), its .origin sidecar not yet
#   acked: source file deleted, journal not yet updated
#   claimed: landing: claim marker created, object not yet copied
#   unlanded: landing: object deleted, its marker and local copy not yet
#   queue-pulled: queue: messages leased to this worker, nothing kept yet
#   queue-journaled: queue: the pull's unit journaled, its rows not yet batched
#   queue-acked: queue: leases acknowledged, journal not yet updated
_point, _, _nth = os.environ.get("INGEST_CRASH_AT", "").partition(":")
_left = int(_nth or 1)


def crash_point(name: str) -> None:
    global _left
    if name != _point:
        return
    _left -= 1
    if _left == 0:
        os.kill(os.getpid(), signal.SIGKILL)


# `INGEST_DISK_FULL_AT=<point>[:<n>[:<times>[:<ERRNO>]]]`: from the n-th time (default 1st) the spool or
# journal write named `<point>` runs, it fails `times` times in a row (default 3) with the error a full disk
# (or, with ERRNO such as EIO or EROFS, that error) gives that very call (SQLite: "database or disk is
# full" / "disk I/O error"; files: the OSError), then the disk is fine again.
_full_point, _, _full_rest = os.environ.get("INGEST_DISK_FULL_AT", "").partition(":")
_full_nth, _, _full_rest = _full_rest.partition(":")
_full_times, _, _full_errno = _full_rest.partition(":")
_full_skip = int(_full_nth or 1) - 1
_full_left = int(_full_times or 3)
_full_code = getattr(errno, _full_errno or "ENOSPC")


def disk_full_point(name: str, kind: str = "sqlite") -> None:
    global _full_skip, _full_left
    if name != _full_point or _full_left <= 0:
        return
    if _full_skip > 0:
        _full_skip -= 1
        return
    _full_left -= 1
    if kind == "sqlite":
        full = _full_code in (errno.ENOSPC, errno.EDQUOT)
        raise sqlite3.OperationalError("database or disk is full" if full else "disk I/O error")
    raise OSError(_full_code, os.strerror(_full_code))


# `INGEST_JOURNAL_DELAY=<seconds>`: every journal transaction sleeps this long inside its commit (a slow
# network volume), to show that nothing else waits for it.
_journal_delay = float(os.environ.get("INGEST_JOURNAL_DELAY", "0") or 0)


def journal_delay() -> None:
    if _journal_delay:
        time.sleep(_journal_delay)


# `INGEST_LOSE_ACK=<n>`: the n-th acknowledgement that falls due is never started, as a bookkeeping bug
# would lose it: the safety net (`--once` exits 1 naming every unit not acknowledged) must catch it.
_lose_ack = int(os.environ.get("INGEST_LOSE_ACK", "0") or 0)


def ack_lost() -> bool:
    global _lose_ack
    if _lose_ack <= 0:
        return False
    _lose_ack -= 1
    return _lose_ack == 0
