"""Directory source: complete files are claimed by atomic rename, read with pyarrow, acked after upload.

A file is complete when its size and mtime have not changed for `settle_seconds` (dotfiles, `*.tmp`
and `*.part` are never taken). Claiming renames it into `<path>/.ingest/claimed/<worker-id>/`, which
only one of several workers sharing the directory can win. After its rows are in R2 the claimed file
is deleted, or moved to `done_dir`.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream
from watchfiles import awatch

from ingest.config import ConfigError, SourceConfig
from ingest.deadletters import DeadLetters
from ingest.logs import get_logger
from ingest.sources.base import FreshUnits, Item, SourceUnit, Units
from ingest.sources.formats import DEFAULT_MAX_RECORD, Format, detect
from ingest.sources.reader import IGNORED_SUFFIXES, FileSource

log = get_logger("ingest.sources.directory")
CLAIM_DIR = ".ingest"


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


class DirectorySource(FileSource):
    def __init__(
        self,
        config: SourceConfig,
        worker_id: str,
        dead: DeadLetters,
        explicit_id: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD,
    ) -> None:
        self.config = config
        self.max_record_bytes = max_record_bytes
        self.root = Path(config.path).resolve()
        self.name = f"directory:{config.path}"
        self.worker_id = worker_id
        self.explicit_id = explicit_id
        self.claim_dir = self.root / CLAIM_DIR / "claimed" / worker_id
        self._lock_fd: int | None = None
        self.done_dir = Path(config.done_dir).resolve() if config.done_dir else None
        self.dead = dead
        self._seen: dict[Path, _Seen] = {}
        self._warned: set[Path] = set()
        self._units: Units = FreshUnits()

    # -- discovery -------------------------------------------------------------------------------

    def _candidates(self) -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            dirnames[:] = [
                d for d in dirnames if not d.startswith(".") and (here / d).resolve() != self.done_dir
            ]
            for name in filenames:
                if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
                    continue
                yield here / name

    def _complete(self, now: float) -> list[Path]:
        """Files whose size and mtime held still for settle_seconds; updates what was seen."""
        ready: list[Path] = []
        present: set[Path] = set()
        for path in self._candidates():
            try:
                st = path.stat()
            except FileNotFoundError:  # claimed by another worker meanwhile
                continue
            present.add(path)
            seen = self._seen.get(path)
            if seen is None:
                # Untouched for a while already (e.g. there before we started): no need to wait again.
                idle = max(0.0, time.time() - st.st_mtime_ns / 1e9)
                self._seen[path] = seen = _Seen(st.st_size, st.st_mtime_ns, now - idle)
            elif (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
                continue
            if now - seen.stable_since >= self.config.settle_seconds:
                ready.append(path)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return sorted(ready)

    def _claim(self, path: Path) -> Path | None:
        fmt = detect(path, self.config.format)
        if fmt is None:
            if path not in self._warned:
                self._warned.add(path)
                log.warning(
                    "file skipped: unknown format; name it .jsonl/.ndjson/.csv/.parquet (optionally "
                    ".gz/.zst) or set sources.format",
                    path=str(path),
                )
            return None
        self.claim_dir.mkdir(parents=True, exist_ok=True)
        target = self.claim_dir / f"{uuid.uuid4().hex[:12]}--{path.name}"
        try:
            os.rename(path, target)  # atomic; exactly one worker wins
        except FileNotFoundError:
            return None
        finally:
            self._seen.pop(path, None)
        _write_origin(target, path.relative_to(self.root))
        return target

    def pending(self) -> list[str]:
        if not self.claim_dir.is_dir():
            return []
        return [str(p) for p in sorted(self.claim_dir.iterdir()) if not p.name.endswith(".origin")]

    # -- running ---------------------------------------------------------------------------------

    def lock_claim_dir(self) -> None:
        """Own a claim directory for this process's lifetime (flock), so no two live workers share one.

        The default id is the host name, stable across restarts so a restarted worker finds its own
        unacknowledged claims; a second process on the same host gets `<host>.2`, and so on.
        """
        base = self.root / CLAIM_DIR / "claimed"
        base.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            worker_id = self.worker_id if n == 1 else f"{self.worker_id}.{n}"
            fd = os.open(base / f"{worker_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if self.explicit_id:
                    raise ConfigError(
                        f"worker.id: {self.worker_id!r} is in use by another running worker on {self.root}; "
                        "give each worker its own id"
                    ) from None
                continue
            self._lock_fd = fd
            self.claim_dir = base / worker_id
            return
        raise ConfigError(f"worker.id: too many workers named {self.worker_id!r}")

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None:
        if self._lock_fd is None:
            self.lock_claim_dir()
        await super().run(send, units, once)

    async def _discover(self, files: MemoryObjectSendStream[Path], once: bool) -> None:
        # Claimed earlier by this worker but never acknowledged (e.g. a previous run stopped).
        for leftover in self.pending():
            await files.send(Path(leftover))
        poll_ms = max(50, int(self.config.settle_seconds * 1000 / 2))
        self.root.mkdir(parents=True, exist_ok=True)
        at_start: set[Path] | None = set(self._candidates()) if once else None
        watcher = awatch(
            self.root,
            watch_filter=lambda _change, p: f"/{CLAIM_DIR}/" not in p,
            yield_on_timeout=True,
            rust_timeout=poll_ms,
            recursive=True,
        )

        async def scan() -> bool:
            """Claim what is complete; True once --once has taken everything that was there at start."""
            for path in await anyio.to_thread.run_sync(self._complete, anyio.current_time()):
                if at_start is not None and path not in at_start:
                    continue  # --once takes what was there at start
                await self._units.wait_for_room()  # backpressure: claim nothing while the spool is full
                claimed = self._claim(path)
                if at_start is not None:
                    at_start.discard(path)
                if claimed is not None:
                    await files.send(claimed)
            if at_start is None:
                return False
            at_start.intersection_update({p for p in at_start if p.exists()})
            return not at_start

        if await scan():  # right away: files that have been idle for a while need no waiting
            return
        async for _changes in watcher:
            if await scan():
                return

    def _unit(self, path: Path) -> tuple[SourceUnit, Path]:
        origin = _origin(path)
        st = path.stat()
        unit = SourceUnit(
            name=origin.as_posix(),
            ack=self._acker(path),
            id=f"file:{path}",
            fingerprint=f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}",
            path=str(path),
        )
        return unit, origin

    def _acker(self, claimed: Path) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            await anyio.to_thread.run_sync(self._finish, claimed)

        return ack

    def _finish(self, claimed: Path) -> None:
        origin = _origin(claimed)
        if self.done_dir is not None:
            target = self.done_dir / origin
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(claimed, target)
        else:
            claimed.unlink(missing_ok=True)
        _origin_file(claimed).unlink(missing_ok=True)


def _origin_file(claimed: Path) -> Path:
    return claimed.with_name(claimed.name + ".origin")


def _write_origin(claimed: Path, relative: Path) -> None:
    _origin_file(claimed).write_text(relative.as_posix())


def _origin(claimed: Path) -> Path:
    """The path the claimed file had under the watched directory."""
    try:
        return Path(_origin_file(claimed).read_text())
    except FileNotFoundError:
        return Path(claimed.name.split("--", 1)[-1])


__all__ = ["DirectorySource", "Format"]
