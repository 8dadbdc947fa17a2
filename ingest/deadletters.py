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
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ingest.files import fsync_dir
from ingest.logs import get_logger

log = get_logger("ingest.deadletters")
MAX_RAW = 1 << 20  # keep at most 1 MiB of a bad record's text


@dataclass(frozen=True)
class DeadLetter:
    source: str
    line: int | None
    reason: str
    raw: bytes | str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "line": self.line, "reason": self.reason}
        raw = self.raw
        if isinstance(raw, str):
            out["raw"] = raw[:MAX_RAW]
        elif isinstance(raw, bytes):
            try:
                out["raw"] = raw[:MAX_RAW].decode("utf-8")
            except UnicodeDecodeError:
                out["raw_base64"] = base64.b64encode(raw[:MAX_RAW]).decode("ascii")
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

    def write(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        from ingest import metrics

        lines = "".join(json.dumps(d.as_json(), ensure_ascii=False) + "\n" for d in letters)
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.path_for(datetime.now(UTC))
            with path.open("a", encoding="utf-8") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())
            self.count += len(letters)
        metrics.DEAD_LETTERS.inc(len(letters))
        first = letters[0]
        log.warning(
            "dead letters written",
            count=len(letters),
            source=first.source,
            line=first.line,
            reason=first.reason,
            path=str(path),
        )


def _lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
