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


def make_dirs(path: Path) -> None:
    """`mkdir -p` one level after another: pathlib's (and os.makedirs) recurse once per missing level,
    and an input tree deeper than Python's recursion limit (1,000) stopped the worker."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)


def move_durably(src: Path, dst: Path, overwrite: bool = True) -> None:
    """Move `src` to `dst`, across filesystems too: a rename where it can be, else copy, fsync, rename
    into place, fsync the directory, then delete `src`. Safe to repeat after a crash at any step (a
    copy left half-written is a dotfile next to `dst`, replaced by the next attempt). With
    `overwrite=False` an existing `dst` is never replaced: FileExistsError (a link, then an unlink:
    a crash in between leaves both, and the next attempt keeps a second copy, never none)."""
    try:
        if overwrite:
            os.replace(src, dst)
        else:
            os.link(src, dst, follow_symlinks=False)
            src.unlink()
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    if not overwrite and os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    tmp = dst.with_name(f".{dst.name}.ingest-copy")
    tmp.unlink(missing_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), tmp)
    else:
        shutil.copyfile(src, tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
    if overwrite:
        os.replace(tmp, dst)
    else:
        try:
            os.link(tmp, dst, follow_symlinks=False)
        finally:
            tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)
    src.unlink()


NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs)


def printable(name: str) -> str:
    """A file name as valid UTF-8 text for logs, the journal and dead letters: bytes that are not
    UTF-8 (a name is bytes on Linux) are written `\\xe9`, so nothing is lost or crashes a writer."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def fitting(name: str, room: int) -> str:
    """`name` (made printable) cut to at most `room` bytes, keeping its extensions (`.jsonl.gz`)."""
    text = printable(name)
    if len(text.encode()) <= room:
        return text
    suffixes = "".join(Path(text).suffixes)[-32:]
    head = text.encode()[: room - len(suffixes.encode())].decode("utf-8", "ignore")
    return head + suffixes


def numbered(path: Path, n: int) -> Path:
    """`export.jsonl.gz` → `export-2.jsonl.gz`: the name with a number before its extensions."""
    stem, dot, suffixes = path.name.partition(".")
    if not stem:  # a dotfile: the number goes at the end
        stem, dot, suffixes = path.name, "", ""
    mark = f"-{n}"
    room = NAME_MAX - len(os.fsencode(mark + dot + suffixes))
    stem = os.fsdecode(os.fsencode(stem)[:room])  # a name at the limit still takes its number
    return path.with_name(f"{stem}{mark}{dot}{suffixes}")


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
