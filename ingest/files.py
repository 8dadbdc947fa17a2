"""Durable-file helpers shared by the spool, the encoder and the dead letters."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` survive a crash (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT: the one failure to write that waiting for space can fix."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def move_durably(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, across filesystems too: a rename where it can be, else copy, fsync, rename
    into place, fsync the directory, then delete `src`. Safe to repeat after a crash at any step (a
    copy left half-written is a dotfile next to `dst`, replaced by the next attempt)."""
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(f".{dst.name}.ingest-copy")
    tmp.unlink(missing_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), tmp)
    else:
        shutil.copyfile(src, tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
    src.unlink()


class WorkerIdInUse(Exception):
    """An explicit worker id is held by another live process (the caller says which key is wrong)."""


def lock_worker_id(root: Path, worker_id: str, explicit: bool) -> tuple[str, int]:
    """Own `<root>/<id>.lock` for this process's lifetime (flock): no two live workers share an id.

    The default id is the host name, stable across restarts so a restarted worker finds what it left;
    a second process on the same host gets `<host>.2`, and so on. An explicit id is never changed.
    Returns (the id, the lock's fd, held open).
    """
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = worker_id if n == 1 else f"{worker_id}.{n}"
        fd = os.open(root / f"{candidate}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if explicit:
                raise WorkerIdInUse(worker_id) from None
            continue
        return candidate, fd
    raise WorkerIdInUse(worker_id)
