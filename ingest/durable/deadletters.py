"""Dead letters: records we could not turn into rows, kept with the reason instead of being dropped.

Written as JSONL (`source`, `line`, `reason`, `raw` or `raw_base64`) to the spool directory and fsynced
before the source unit they came from can be acknowledged. Callers run in reader and encoder threads,
hence the lock.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from ingest.durable.faults import disk_full_point
from ingest.durable.files import fsync_dir, is_disk_full
from ingest.logs import get_logger

log = get_logger("ingest.durable.deadletters")
MAX_RAW = 1 << 20  # HTTP: at most 1 MiB of a rejected line is answered back and kept


@dataclass(frozen=True)
class DeadLetter:
    source: str
    line: int | None
    reason: str
    raw: bytes | str | None = None
    entry: str | None = None  # a stream entry's id (Redis), where a line number means nothing

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "line": self.line, "reason": self.reason}
        if self.entry is not None:
            out["entry"] = self.entry
        raw = self.raw
        if isinstance(raw, str):
            out["raw"] = raw
        elif isinstance(raw, bytes):  # whole: whoever raises a limit can replay it
            try:
                out["raw"] = raw.decode("utf-8")
            except UnicodeDecodeError:  # kept byte for byte; the key says how
                out["raw_base64"] = base64.b64encode(raw).decode("ascii")
            out["raw_bytes"] = len(raw)
        return out


class DeadLetters:
    """Appends dead letters to `<dir>/errors-YYYY-MM-DD.jsonl` (UTC) and counts them.

    `seal()` moves the files written so far to `<dir>/outbox/YYYY-MM-DD--<uuid>.jsonl` for upload;
    new dead letters then start a new file.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.outbox_dir = directory / "outbox"
        self.count = 0
        self._lock = threading.Lock()
        self.on_full: Callable[[str], None] = _noop  # readiness hooks, set by the pipeline
        self.on_room: Callable[[], None] = _noop

    def path_for(self, day: datetime) -> Path:
        return self.dir / f"errors-{day:%Y-%m-%d}.jsonl"

    def seal(self) -> list[tuple[Path, date, int]]:
        """(sealed file, its day, dead letters in it) for every file written since the last seal."""
        out = []
        with self._lock:
            if not self.dir.is_dir():
                return []
            for path in sorted(self.dir.glob("errors-*.jsonl")):
                day = date.fromisoformat(path.stem.removeprefix("errors-"))
                self.outbox_dir.mkdir(exist_ok=True)
                target = self.outbox_dir / f"{day.isoformat()}--{uuid.uuid4()}.jsonl"
                os.rename(path, target)
                out.append((target, day, _lines(target)))
            if out:
                fsync_dir(self.dir)
        return out

    def outbox(self) -> list[tuple[Path, date, int]]:
        if not self.outbox_dir.is_dir():
            return []
        return [
            (p, date.fromisoformat(p.name.split("--", 1)[0]), _lines(p))
            for p in sorted(self.outbox_dir.glob("*.jsonl"))
        ]

    def today(self) -> int:
        """Dead letters in today's file not sealed yet."""
        path = self.path_for(datetime.now(UTC))
        return _lines(path) if path.is_file() else 0

    def _append(self, data: bytes) -> Path:
        """Append whole lines, fsynced; a failed append is cut back so no half line stays behind."""
        with self._lock:
            disk_full_point("deadletters", "file")
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.path_for(datetime.now(UTC))
            with path.open("ab") as fh:
                size = fh.tell()
                try:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError:
                    fh.truncate(size)
                    raise
            self.count += data.count(b"\n")
        return path

    def write_stream(
        self, letter: DeadLetter, pieces: Iterable[bytes], reason: Callable[[int], str], origin: str = ""
    ) -> None:
        """One dead letter whose raw bytes arrive in pieces (a record too big to hold), written as
        `raw_base64` as they come; its reason is made from its size once that is known. A failure
        (a full disk) raises: the input is then read again, it cannot be replayed here."""
        from ingest import metrics

        head = json.dumps({"source": letter.source, "line": letter.line})[:-1]
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.path_for(datetime.now(UTC))
            with path.open("ab") as fh:
                start = fh.tell()
                try:
                    fh.write(head.encode() + b', "raw_base64": "')
                    size, carry = 0, b""
                    for piece in pieces:
                        size += len(piece)
                        data = carry + piece
                        whole = len(data) - len(data) % 3
                        fh.write(base64.b64encode(data[:whole]))
                        carry = data[whole:]
                    fh.write(base64.b64encode(carry) + b'"')
                    tail = json.dumps({"raw_bytes": size, "reason": reason(size)}, ensure_ascii=False)
                    fh.write(b", " + tail[1:].encode() + b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                except BaseException:
                    fh.truncate(start)
                    raise
            self.count += 1
        metrics.DEAD_LETTERS.labels(origin).inc()
        log.warning("dead letter written", source=letter.source, line=letter.line, reason=reason(size))

    def write(self, letters: list[DeadLetter], origin: str = "") -> None:
        """Append and fsync `letters`; `origin` names the configured source they came from (metrics)."""
        if not letters:
            return
        from ingest import metrics

        data = "".join(json.dumps(d.as_json(), ensure_ascii=False) + "\n" for d in letters).encode()
        waited = False

        def waiting(state: RetryCallState) -> None:
            nonlocal waited
            waited = True
            exc = state.outcome.exception() if state.outcome else None
            self.on_full(f"spool disk full at {self.dir} (dead letters); free space or move spool.dir")
            log.error(
                "spool disk full; dead letters wait for space",
                error=str(exc),
                retry_in=round(state.upcoming_sleep, 3),
            )

        # Callers are reader and encoder threads: waiting here (a blocking sleep) stalls no event loop.
        for attempt in Retrying(
            retry=retry_if_exception(is_disk_full),  # no stop: a full disk is waited out
            wait=wait_exponential(multiplier=0.5, max=30.0),
            before_sleep=waiting,
            reraise=True,
        ):
            with attempt:
                path = self._append(data)
        if waited:
            self.on_room()
        metrics.DEAD_LETTERS.labels(origin).inc(len(letters))
        first = letters[0]
        log.warning(
            "dead letters written",
            count=len(letters),
            source=first.source,
            line=first.line,
            reason=first.reason,
            path=str(path),
        )


def _noop(*_: object) -> None:
    return None


def _lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
