"""Durable-file helpers shared by the spool, the encoder and the dead letters."""

from __future__ import annotations

import errno
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
