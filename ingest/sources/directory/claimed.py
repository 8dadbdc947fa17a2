"""A claim directory's files: a claimed file and its `.origin` sidecar, which says where it came from
(its path under the watched root, and for a symlink the file it points to); finishing many at once.

A file claimed straight from the root needs no sidecar: its claimed name is `<random>--<its name>`.
Nor does a file in a subfolder whose path fits in a name: `<random>~~<its path, escaped>` ("%" as
"%25", "/" as "%2F"), so a nested inbox costs no extra file per claim (one more write and one more
unlink). Only a symlink, or a path that is not UTF-8 or too long for a name, has a sidecar.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from ingest.sources.directory.watch import Stat

FS_THREADS = 4  # threads finishing many files at once (see in_threads)
FS_THREADS_FROM = 32  # files per thread below which one thread does it all
_T = TypeVar("_T")


async def in_threads(fn: Callable[[Path], _T], paths: list[Path]) -> list[_T]:
    """`fn` of every path, in order, by up to FS_THREADS threads at once: unlinks in one directory
    overlap in the kernel (20,000 deletions took half the time in 4 threads: measured; renames into
    the claim directory did not gain, so claims stay in one thread)."""
    parts = min(FS_THREADS, math.ceil(len(paths) / FS_THREADS_FROM))
    if parts <= 1:
        return await anyio.to_thread.run_sync(lambda: [fn(p) for p in paths])
    out: list[list[_T]] = [[] for _ in range(parts)]

    async def run(i: int) -> None:
        out[i] = await anyio.to_thread.run_sync(lambda: [fn(p) for p in paths[i::parts]])

    async with anyio.create_task_group() as tg:
        for i in range(parts):
            tg.start_soon(run, i)
    return [out[k % parts][k // parts] for k in range(len(paths))]


def fingerprint(st: Stat) -> str:
    return f"{st[1]}:{st[2]}:{st[3]}"


def origin_file(claimed: Path) -> Path:
    return claimed.with_name(claimed.name + ".origin")


def sidecar(claimed: Path) -> dict[str, str | None]:
    try:
        text = origin_file(claimed).read_text()
    except FileNotFoundError:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    return {"origin": text}  # written by an earlier version: the relative path alone


BARE, NESTED = "--", "~~"  # after the claimed name's 12 random characters (see module docstring)


def claimed_name(origin: str, room: int) -> str | None:
    """The part of a claimed name after its random start that says `origin` (a relative path) by
    itself, if it fits in `room` bytes; None: a sidecar must say it."""
    if "/" not in origin:
        return BARE + origin if len(origin.encode("utf-8", "surrogateescape")) <= room else None
    escaped = origin.replace("%", "%25").replace("/", "%2F")
    try:
        size = len(escaped.encode("utf-8"))  # a path that is not UTF-8 keeps its bytes in a sidecar
    except UnicodeEncodeError:
        return None
    return NESTED + escaped if size <= room else None


def origin_of(claimed: Path) -> Path:
    """The path the claimed file had under the watched directory."""
    name = claimed.name
    if name[12:14] == NESTED:
        return Path(name[14:].replace("%2F", "/").replace("%25", "%"))
    origin = sidecar(claimed).get("origin")
    return Path(origin) if origin else Path(name.split(BARE, 1)[-1])


def link_target(claimed: Path) -> Path:
    target = sidecar(claimed).get("target")
    return Path(target) if target else Path(os.path.realpath(claimed))
