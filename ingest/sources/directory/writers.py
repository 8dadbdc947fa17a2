"""Which files some process holds open for writing (Linux `/proc`), so a file is not taken mid-write.

A writer that keeps its file open and pauses longer than `settle_seconds` looks finished to a
size/mtime check alone; renaming the file does not stop it either (it keeps writing into the claimed
inode). Where `/proc` shows the writer (same host and PID namespace, or root), the worker waits for it
to close the file. One scan serves every file of a discovery round: the cost is one readlink per open
file descriptor on the host, and only descriptors pointing under the watched paths are looked at closer.
Elsewhere (no `/proc`, a writer in another container or on another NFS client) this finds nothing and
the size/mtime rule is all there is: see the README's writer protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def open_for_writing(roots: Iterable[str], files: Iterable[str] = ()) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of files under the directories `roots`, or among `files` (symlink targets
    elsewhere), that another process has open for writing."""
    prefixes = tuple(r.rstrip("/") + "/" for r in roots)
    exact = set(files)
    me = str(os.getpid())
    found: set[tuple[int, int]] = set()
    try:
        pids = [p for p in os.listdir(PROC) if p.isdigit() and p != me]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if not target.startswith(prefixes) and target not in exact:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    flags = next((int(line.split()[1], 8) for line in info if line.startswith("flags:")), 0)
                if flags & os.O_ACCMODE not in _WRITE_MODES:
                    continue
                st = os.stat(f"{fd_dir}/{fd}")
            except (OSError, ValueError, IndexError):
                continue
            found.add((st.st_dev, st.st_ino))
    return found
