"""Directory source: complete files are claimed by atomic rename, read with pyarrow, acked after upload.

Which files are complete (settled, not being written) is watch.py's; a claimed file's sidecar is
claimed.py's. Claiming renames it into `<path>/.ingest/claimed/<worker-id>/`, which only one of several
workers sharing the directory can win. A writer that still holds the file open keeps writing into the
claimed file: whatever it appends is read too (plain JSON lines from the byte offset reached, other
formats again from the top, skipping the rows taken), and the file is acknowledged (deleted, or moved
to `done_dir`) only if it is unchanged since its last byte was read.

Symlinks (`follow_symlinks`, on by default): a linked file is read where its target is and only the
link is claimed and acknowledged, never the target; a link to a file inside the watched tree is
skipped (the file itself is taken); linked directories are walked, loops skipped. A file that cannot
be read stays where it is, is reported (`problems()`, `ingest status`) and is tried again.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream
from watchfiles import awatch

from ingest.config import ConfigError, SourceConfig
from ingest.durable.deadletters import DeadLetters
from ingest.durable.faults import crash_point
from ingest.durable.files import (
    WorkerIdInUse,
    fitting,
    lock_worker_id,
    make_dirs,
    move_durably,
    numbered,
    printable,
)
from ingest.layout import CLAIM_DIR
from ingest.logs import get_logger
from ingest.parsing.formats import Format, detect
from ingest.parsing.jsonlines import DEFAULT_MAX_RECORD, Joint
from ingest.parsing.textfields import TextFields
from ingest.sources.base import AckError, Chunk, FreshUnits, Item, SourceUnit, Units
from ingest.sources.directory.claimed import (
    BARE,
    claimed_name,
    fingerprint,
    in_threads,
    link_target,
    origin_file,
    origin_of,
)
from ingest.sources.directory.watch import Seen, Stat, Watch, stat_of
from ingest.sources.reader import BUNDLE_FILES, FileRead, FileSource, describe_read_error, file_read

log = get_logger("ingest.sources.directory.source")
CLAIM_NAME_MAX = 200  # bytes: with `<12 hex>--` before and `.origin` after, within NAME_MAX
RETRY_FAILED = 10.0  # seconds between attempts to read a claimed file that could not be read
FUTURE_SLACK = 2.0  # seconds an mtime may be ahead of this clock and still be taken as written now


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
        self.watch = Watch(
            self.root, config, self.done_dir, self._problem, self._solved, lambda: self._targets.values()
        )
        self._units: Units = FreshUnits()
        self._text_fields: TextFields = set()
        self._problems = {}
        self._failed = {}
        self._targets: dict[Path, Path] = {}  # claimed symlink → the file it points to
        self._following: dict[Path, Seen] = {}  # claimed files still growing (or changed after reading)
        self._observed: dict[Path, Seen] = {}  # the last look at a followed file sent to be read again
        self._read_stats: dict[Path, Stat] = {}  # claimed file → its stat when its last byte was read
        self._bare: set[Path] = set()  # claimed in this run without a sidecar (nothing to remove)
        self._origins: dict[Path, Path] = {}  # claimed file → its path under root (its sidecar says so too)

    def _claimable(self, ready: list[Path], room: float) -> list[Path]:
        """The next files to claim at once: up to BUNDLE_FILES, and (near the spool's mark) no more
        input bytes than the spool has room for, so intake pauses close to the mark (at least one)."""
        part: list[Path] = []
        size = 0
        for path in ready[:BUNDLE_FILES]:
            size += self.watch.seen_size(path)
            if part and size > room:
                break
            part.append(path)
        return part

    def _claim_all(self, paths: list[Path]) -> list[tuple[Path, int]]:
        """The files claimed (some may be gone, or taken by another worker), with their sizes."""
        out = []
        self.claim_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            size = self.watch.seen_size(path)  # (before the claim forgets it)
            claimed = self._claim(path)
            if claimed is not None:
                out.append((claimed, size))
        return out

    def _claim(self, path: Path) -> Path | None:
        """Rename `path` into this worker's claim directory (blocking); None if it was not claimed."""
        fmt = detect(path, self.config.format)
        if fmt is None:
            self.watch.skip(
                path,
                "file skipped: unknown format; name it .jsonl/.ndjson/.json/.csv/.parquet (optionally "
                ".gz/.zst) or set sources.format",
            )
            return None
        # The claimed name is UTF-8 and short enough for its sidecar (a name is any bytes, up to
        # 255 of them): when it had to change, the sidecar keeps the name as it was, losslessly.
        name = fitting(path.name, CLAIM_NAME_MAX)
        link_target = os.path.realpath(path) if path.is_symlink() else None
        origin = path.relative_to(self.root)
        said = (
            claimed_name(origin.as_posix(), CLAIM_NAME_MAX)
            if link_target is None and name == path.name
            else None
        )
        target = self.claim_dir / f"{uuid.uuid4().hex[:12]}{said or BARE + name}"
        if said is None:
            # What the claimed name cannot tell (a symlink's target; a name or path that had to
            # change to fit). Written before the rename, so a claimed file always has it (a crash in
            # between leaves a sidecar without its file, removed at the next start).
            sidecar = {"origin": origin.as_posix(), "target": link_target}
            origin_file(target).write_text(json.dumps(sidecar))
        else:
            self._bare.add(target)
        try:
            os.rename(path, target)  # atomic; exactly one worker wins
        except FileNotFoundError:
            origin_file(target).unlink(missing_ok=True)
            self._bare.discard(target)
            return None
        except OSError as exc:
            origin_file(target).unlink(missing_ok=True)
            self._bare.discard(target)
            if exc.errno == errno.EXDEV:
                reason = (
                    "on another filesystem than the claim directory (in a linked directory?): "
                    "link the file instead"
                )
            else:
                reason = f"cannot claim: {describe_read_error(exc)}"
            self._problem(path, reason)
            return None
        finally:
            self.watch.seen.pop(path, None)
        self._origins[target] = origin
        if link_target is not None:
            self._targets[target] = Path(link_target)
        return target

    def pending(self) -> list[str]:
        if not self.claim_dir.is_dir():
            return []
        out = []
        for p in sorted(self.claim_dir.iterdir()):
            if p.name.endswith(".origin"):
                if not os.path.lexists(p.with_name(p.name.removesuffix(".origin"))):
                    p.unlink(missing_ok=True)  # the claim's rename never happened (crash) or it was acked
                continue
            out.append(str(p))
        return out

    # -- running ---------------------------------------------------------------------------------

    def lock_claim_dir(self) -> None:
        """Own a claim directory for this process's lifetime (flock), so no two live workers share one.

        The default id is the host name, stable across restarts so a restarted worker finds its own
        unacknowledged claims; a second process on the same host gets `<host>.2`, and so on.
        """
        base = self.root / CLAIM_DIR / "claimed"
        try:
            worker_id, self._lock_fd = lock_worker_id(base, self.worker_id, self.explicit_id)
        except WorkerIdInUse:
            raise ConfigError(
                f"worker.id: {self.worker_id!r} is in use by another running worker on {self.root}; "
                "give each worker its own id"
            ) from None
        self.claim_dir = base / worker_id

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None:
        if self._lock_fd is None:
            self.lock_claim_dir()
        await super().run(send, units, once)

    @property
    def _poll(self) -> float:
        return max(0.05, self.config.settle_seconds / 2)

    async def _discover(self, files: MemoryObjectSendStream[Path], once: bool) -> None:
        # Claimed earlier by this worker but never acknowledged (e.g. a previous run stopped).
        for leftover in await anyio.to_thread.run_sync(self.pending):
            await files.send(Path(leftover))
        at_start: set[Path] | None = None  # --once: the files there at start (the first walk's)
        watcher = awatch(
            self.root,
            watch_filter=lambda _change, p: f"/{CLAIM_DIR}/" not in p,
            yield_on_timeout=True,
            rust_timeout=int(self._poll * 1000),
            recursive=True,
        )

        async def scan() -> bool:
            """Claim what is complete; True once --once has taken everything that was there at start."""
            nonlocal at_start
            ready = await anyio.to_thread.run_sync(self.watch.complete, anyio.current_time())
            if once and at_start is None:
                at_start = set(self.watch.walked)
            if at_start is not None:
                ready = [p for p in ready if p in at_start]  # --once takes what was there at start
            while ready:
                await self._units.wait_for_room()  # backpressure: claim nothing while the spool is full
                # Files claimed and not read yet count against the room too (see _claimable).
                room = self._units.room() - sum(self._in_hand.values())
                if room <= 0 and self._in_hand:
                    self._progress = anyio.Event()
                    await self._progress.wait()
                    continue
                part = self._claimable(ready, room)
                ready = ready[len(part) :]
                claimed = await anyio.to_thread.run_sync(self._claim_all, part)
                if at_start is not None:
                    at_start.difference_update(part)
                for path, size in claimed:
                    self._in_hand[path] = size
                    await files.send(path)
            await self._resend(files, retry_failed=not once)
            if at_start is None:
                return False
            self._leave_for_next_run(at_start)
            return not at_start

        if await scan():  # right away: files that have been idle for a while need no waiting
            return
        async for _changes in watcher:
            if await scan():
                return

    def _leave_for_next_run(self, at_start: set[Path]) -> None:
        """--once does not wait for what it cannot take now: gone, unreadable, or still being written."""
        for path in list(at_start):
            seen = self.watch.seen.get(path)
            if not os.path.lexists(path) or path in self.watch.skipped or str(path) in self._problems:
                at_start.discard(path)
            elif seen is not None and self.watch.writing(seen.stat):
                log.warning("still open for writing: left for the next run", path=str(path))
                at_start.discard(path)

    async def _resend(self, files: MemoryObjectSendStream[Path], retry_failed: bool) -> None:
        """Send again claimed files that grew or settled since they were read, and (daemon) those
        whose read failed, every RETRY_FAILED seconds."""
        now = anyio.current_time()
        for path in await anyio.to_thread.run_sync(self._due, now):
            await files.send(path)
        if retry_failed:
            for path, failed_at in list(self._failed.items()):
                if now - failed_at >= RETRY_FAILED:
                    del self._failed[path]
                    await files.send(path)

    def _due(self, now: float) -> list[Path]:
        """Followed files to read again now: grown (plain JSON lines: read what was appended) or
        settled (read the end, then finish). Blocking: runs in a thread."""
        due = []
        for path, seen in list(self._following.items()):
            try:
                st = stat_of(self._target(path))
            except OSError as exc:
                self._problem(path, describe_read_error(exc))
                continue
            if st != seen.stat:
                self._following[path] = Seen(st, now)
                if self._resumable(path):
                    due.append(path)
            elif self._quiet(st, now - seen.stable_since):
                due.append(path)
        for path in due:
            self._observed[path] = self._following.pop(path)
        return due

    async def _finish_following(self, files: MemoryObjectSendStream[Path]) -> None:
        while self._following:
            await anyio.to_thread.run_sync(self.watch.scan_writers)
            await self._resend(files, retry_failed=False)
            await anyio.sleep(self._poll)

    def _quiet(self, st: Stat, unchanged_for: float = 0.0) -> bool:
        """Unchanged for settle_seconds (by what we saw, or by its mtime) and not open for writing."""
        age = time.time() - st[3] / 1e9
        if age < -FUTURE_SLACK:  # an mtime in the future (a copy from a skewed clock, `touch -d`)
            age = self.config.settle_seconds  # tells nothing; the open-for-writing check still holds
        idle = max(unchanged_for, age)
        return idle >= self.config.settle_seconds and not self.watch.writing(st)

    def _resumable(self, path: Path) -> bool:
        detected = detect(Path(self._origin(path).name), self.config.format)
        return detected is not None and detected[0] == "jsonl" and detected[1] is None

    def _target(self, claimed: Path) -> Path:
        """The file to read: the claimed file itself, or the target of a claimed symlink."""
        target = self._targets.get(claimed)
        if target is None and claimed not in self._bare and claimed.is_symlink():
            target = link_target(claimed)
            self._targets[claimed] = target
        return target or claimed

    # -- reading -----------------------------------------------------------------------------------

    def _read_now(
        self,
        path: Path,
        name: Path,
        unit: SourceUnit,
        emit: Callable[[Chunk], None],
        joint: Joint | None = None,
    ) -> bool:
        target = self._target(path)
        before = stat_of(target)

        def settled() -> bool:  # at the end of the data: may a last line without newline be parsed?
            return stat_of(target) == before and self._quiet(before)

        self._read_file(target, name, unit, emit, joint, settled)
        after = stat_of(target)
        now = time.monotonic()  # the anyio clock of asyncio's loop
        seen = self._observed.pop(path, None)
        unchanged = now - seen.stable_since if seen and seen.stat == after else 0.0
        if after == before and self._quiet(after, unchanged):
            file_read(unit).stat = after[1:]
            self._read_stats[path] = after
            return True
        self._following[path] = Seen(after, now)
        return False

    def _size(self, path: Path) -> int:
        return self._read_stats[path][2]  # stat by `_unit`, of the target for a link

    def _origin(self, claimed: Path) -> Path:
        origin = self._origins.get(claimed)
        if origin is None:
            origin = self._origins[claimed] = origin_of(claimed)
        return origin

    def _unit(self, path: Path) -> tuple[SourceUnit, Path]:
        origin = self._origin(path)
        st = stat_of(self._target(path))
        self._read_stats[path] = st
        unit = SourceUnit(
            origin=self.name,
            name=printable(origin.as_posix()),
            handle=FileRead(self._acker(path), ack_many=self._ack_units),
            id=f"file:{path}",
            fingerprint=fingerprint(st),
            path=str(path),
            table=self.config.default_table,
        )
        return unit, origin

    def _acker(self, claimed: Path) -> Callable[[], Awaitable[bool]]:
        async def ack() -> bool:
            result = (await self._ack_paths([claimed]))[0]
            if isinstance(result, AckError):
                raise result
            return result

        return ack

    async def _ack_units(self, units: list[SourceUnit]) -> list[bool | AckError | None]:
        return list(await self._ack_paths([Path(u.path or "") for u in units]))

    async def _ack_paths(self, claimed: list[Path]) -> list[bool | AckError]:
        """Finish files read and uploaded, in one thread call: True, False for a file that changed
        since it was read (the rest is read first), or the AckError for one that could not be
        removed or moved."""
        outcomes = await in_threads(self._ack_now, claimed)
        results: list[bool | AckError] = []
        for path, outcome in zip(claimed, outcomes, strict=True):
            if isinstance(outcome, OSError):
                results.append(AckError(f"could not remove or move {path}: {outcome}"))
            elif outcome is not None:
                log.info("file changed after it was read; reading what was added", path=str(path))
                self._following[path] = Seen(outcome, anyio.current_time())
                results.append(False)
            else:
                results.append(True)
        return results

    def _ack_now(self, claimed: Path) -> Stat | OSError | None:
        """Finish a file read and uploaded (blocking); its stat instead if it changed since it was
        read (nothing done: the rest is read first), the error if it could not be removed or moved."""
        changed = self._changed_since_read(claimed)
        if changed is not None:
            return changed
        try:
            self._finish(claimed)
        except OSError as exc:
            return exc
        self._read_stats.pop(claimed, None)
        self._targets.pop(claimed, None)
        self._origins.pop(claimed, None)
        return None

    def _changed_since_read(self, claimed: Path) -> Stat | None:
        """The file's stat if it changed since its last byte was read (or a writer holds it)."""
        try:
            st = stat_of(self._target(claimed))
        except FileNotFoundError:
            return None
        expected = self._read_stats.get(claimed)
        if expected is not None and st != expected:
            return st
        self.watch.scan_writers(max_age=self._poll)  # claimed files and link targets are always covered
        if self.watch.writing(st):
            return st
        return None

    def _finish(self, claimed: Path) -> None:
        if self.done_dir is not None:
            target = wanted = self.done_dir / self._origin(claimed)
            make_dirs(target.parent)
            n = 1
            while os.path.lexists(claimed):
                try:
                    move_durably(claimed, target, overwrite=False)  # never over an earlier file
                except FileExistsError:
                    n += 1
                    target = numbered(wanted, n)
                    continue
                if n > 1:
                    log.info("done_dir already holds this name; kept both", done=str(wanted), now=str(target))
        else:
            claimed.unlink(missing_ok=True)
        # A crash here leaves the sidecar alone; `pending()` removes it at the next start or end.
        crash_point("finishing")
        if claimed in self._bare:
            self._bare.discard(claimed)
        else:
            origin_file(claimed).unlink(missing_ok=True)


__all__ = ["DirectorySource", "Format"]
