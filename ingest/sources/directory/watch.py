"""Which files under a watched directory are complete: walked, stat'ed, settled, not being written.

A file is complete when its size and mtime have not changed for `settle_seconds` and no process holds
it open for writing (`wait_for_writers`, see writers.py); dotfiles, `*.tmp` and `*.part` are never
taken. Symlinks (`follow_symlinks`, on by default): a link to a file inside the watched tree is
skipped (the file itself is taken); linked directories are walked, loops skipped. A file that cannot
be read is reported (through `problem`) and looked at again at the next scan.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ingest.config import SourceConfig
from ingest.logs import get_logger
from ingest.sources.directory.writers import open_for_writing
from ingest.sources.reader import IGNORED_SUFFIXES, describe_read_error

log = get_logger("ingest.sources.directory.source")

Stat = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)


def stat_of(path: Path) -> Stat:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def special_file(entry: os.DirEntry[str], link: bool) -> str | None:
    """What a listed entry that is no directory is, when it is no regular file either (itself or,
    for a link, its target): opening a FIFO waits for a writer for ever, and a link to /dev/zero
    never ends, so one of them in an inbox stopped every file behind it. None for a regular file
    (told by the listing, no stat) and for a dangling link (reported where it is read)."""
    try:
        if not link and entry.is_file(follow_symlinks=False):
            return None
        mode = entry.stat().st_mode  # (a link: its target's)
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


@dataclass
class Seen:
    stat: Stat
    stable_since: float


class Watch:
    """The directory source's eyes: what each file looked like when, who writes to what. Blocking
    methods: they run in a thread."""

    def __init__(
        self,
        root: Path,
        config: SourceConfig,
        done_dir: Path | None,
        problem: Callable[[Path, str], None],
        solved: Callable[[Path], None],
        link_targets: Callable[[], Iterable[Path]],
    ) -> None:
        self.root = root
        self.config = config
        self.done_dir = done_dir
        self._report = problem
        self._solved = solved
        self._reported: set[Path] = set()  # what the last walk found wrong (see complete)
        self._link_targets = link_targets  # files claimed links point to: their writers count too
        self.seen: dict[Path, Seen] = {}
        self.skipped: dict[Path, str] = {}  # left alone by policy → what was said about it
        self._writers: set[tuple[int, int]] = set()
        self._writers_at = -float("inf")  # monotonic time of the last /proc scan
        self.walked: list[Path] = []  # every candidate of the last `complete` walk

    def skip(self, path: Path, message: str, **kw: object) -> None:
        """Leave a path alone by policy (not an error): said once, and --once does not wait for it."""
        if self.skipped.get(path) != message:
            self.skipped[path] = message
            log.warning(message, path=str(path), **kw)

    def candidates(self) -> Iterator[tuple[Path, bool]]:
        """Every file that may be taken, top-down, and whether it is a symlink: told by the listing
        itself (scandir), not a stat of each file (20,000 of those took 0.09 s)."""
        follow = self.config.follow_symlinks
        visited = {self.root}
        below = [(self.root, True)]  # (folder, whether its path is its real path: no linked folder above)
        while below:
            here, real = below.pop()
            try:
                with os.scandir(here) as listing:
                    entries = list(listing)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError | NotADirectoryError) and here != self.root:
                    continue  # a folder removed (or replaced) since its parent was listed: a cleanup
                self._problem(here, f"cannot list directory: {describe_read_error(exc)}")
                continue
            self._solved(here)
            subdirs: list[tuple[Path, bool]] = []
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()  # (a symlink: of its target)
                except OSError:
                    is_dir = False
                if not is_dir:
                    if name.endswith(IGNORED_SUFFIXES):
                        continue
                    link = entry.is_symlink()
                    if (kind := special_file(entry, link)) is not None:
                        self.skip(here / name, f"{kind} skipped: only regular files are read")
                        continue
                    yield here / name, link
                    continue
                sub = here / name
                link = entry.is_symlink()
                real_sub = real and not link  # compared as it is: resolve() stats every level above
                if self.done_dir is not None and (sub if real_sub else sub.resolve()) == self.done_dir:
                    continue
                if link:
                    if not follow:
                        self.skip(sub, "symlinked directory skipped; set follow_symlinks = true")
                        continue
                    target = sub.resolve()
                    if target in visited or self.root.is_relative_to(target):
                        self.skip(sub, "symlinked directory skipped: it loops back", target=str(target))
                        continue
                    visited.add(target)
                subdirs.append((sub, real_sub))
            below.extend(reversed(subdirs))

    def writing(self, st: Stat) -> bool:
        return (st[0], st[1]) in self._writers

    def scan_writers(self, extra: Iterable[Path] = (), max_age: float = 0.0) -> None:
        """Refresh who holds files open for writing, unless a scan younger than `max_age` seconds
        already answers (acknowledgements share the last scan instead of each reading /proc)."""
        if not self.config.wait_for_writers or time.monotonic() - self._writers_at < max_age:
            return
        targets = [str(p) for p in self._link_targets()] + [str(p) for p in extra]
        self._writers = open_for_writing([str(self.root)], targets)
        self._writers_at = time.monotonic()

    def complete(self, now: float) -> list[Path]:
        """Files whose size and mtime held still for settle_seconds and that no process is writing;
        updates what was seen (blocking: runs in a thread)."""
        reported, self._reported = self._reported, set()
        walked = list(self.candidates())
        self.walked = candidates = [path for path, _ in walked]
        links = {path for path, link in walked if link}
        self.scan_writers([Path(os.path.realpath(p)) for p in links])
        ready: list[Path] = []
        present: set[Path] = set()
        for path in candidates:
            st = self._inspect(path, path in links)
            if st is None:
                continue
            present.add(path)
            seen = self.seen.get(path)
            if seen is None and not self.writing(st):
                # Untouched for a while already (e.g. there before we started): no need to wait again.
                idle = max(0.0, time.time() - st[3] / 1e9)
                self.seen[path] = seen = Seen(st, now - idle)
            elif seen is None or seen.stat != st or self.writing(st):
                # Changed, or held open for writing: an old mtime under an idle writer is no promise.
                self.seen[path] = Seen(st, now)
                continue
            if now - seen.stable_since >= self.config.settle_seconds and self._readable(path):
                ready.append(path)
        for gone in set(self.seen) - present:
            del self.seen[gone]
        for path in reported - self._reported:  # removed since (or readable again: said already)
            self._solved(path)
        return sorted(ready, key=str)  # (Path comparisons cost ten times more)

    def _problem(self, path: Path, reason: str) -> None:
        self._reported.add(path)
        self._report(path, reason)

    def _inspect(self, path: Path, link: bool) -> Stat | None:
        """The stat of a candidate (of its target, for a symlink), or None to leave it alone."""
        if link:
            if not self.config.follow_symlinks:
                self.skip(path, "symlink skipped; set follow_symlinks = true to ingest its target")
                return None
            target = Path(os.path.realpath(path))
            if target.is_relative_to(self.root):
                self.skip(path, "symlink skipped: its target is in the watched tree and is taken itself")
                return None
            try:
                st = stat_of(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT and not os.path.lexists(path):
                    return None  # claimed by another worker meanwhile
                what = "broken symlink" if exc.errno == errno.ENOENT else "symlink cannot be followed"
                self._problem(path, f"{what} (→ {os.readlink(path)}): {describe_read_error(exc)}")
                return None
            if not os.path.isfile(path):
                return None
            return st
        try:
            return stat_of(path)
        except FileNotFoundError:  # claimed by another worker meanwhile
            return None
        except OSError as exc:
            self._problem(path, describe_read_error(exc))
            return None

    def _readable(self, path: Path) -> bool:
        """Never claim a file we may not read: it stays where it is, reported, tried again."""
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        except FileNotFoundError:
            return False
        except OSError as exc:
            self._problem(path, describe_read_error(exc))
            return False
        self._solved(path)
        return True

    def seen_size(self, path: Path) -> int:
        seen = self.seen.get(path)
        return seen.stat[2] if seen is not None else 0
