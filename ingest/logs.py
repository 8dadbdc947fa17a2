"""structlog setup: JSON off a TTY, console on one, and a redaction processor in front of both.

Redaction works two ways: values registered with `register_secret` are masked wherever they appear,
and well-known secret-bearing fields/headers are masked by name or by pattern.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Literal, TextIO, cast

import structlog
from pydantic import SecretStr

if TYPE_CHECKING:
    from rich.console import Console

REDACTED = "[REDACTED]"

_SECRET_FIELDS = re.compile(
    r"(secret|password|token|authorization|signature|session|credential|api_key)", re.IGNORECASE
)
# Header or query forms that carry secrets inside otherwise harmless text (exception messages, URLs).
_SECRET_PATTERNS = [
    re.compile(r"(Authorization['\"]?\s*[:=]\s*['\"]?)(Bearer\s+)?[^'\",\s]+", re.IGNORECASE),
    re.compile(r"(X-Amz-Security-Token['\"]?\s*[:=]\s*['\"]?)[^'\",&\s]+", re.IGNORECASE),
    re.compile(r"(X-Amz-Signature['\"]?\s*[:=]\s*['\"]?)[^'\",&\s]+", re.IGNORECASE),
    re.compile(r"(X-Amz-Credential['\"]?\s*[:=]\s*['\"]?)[^'\",&\s]+", re.IGNORECASE),
    re.compile(r"(Signature=)[0-9a-f]{16,}", re.IGNORECASE),
]

PAYLOAD_SHOWN = 1024  # a library's debug line shows a body up to this size; a longer one, its size

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(*values: str | SecretStr | None) -> None:
    """Remember secret values so they are masked anywhere in log output (min. 6 chars)."""
    with _lock:
        for v in values:
            raw = v.get_secret_value() if isinstance(v, SecretStr) else v
            if raw and len(raw) >= 6:
                _secrets.add(raw)


def redact_text(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, str):
        if _SECRET_FIELDS.search(key) and not key.endswith(("_id", "_count", "_total")) and value:
            return REDACTED
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(repr(value))
    return value


def redact_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: masks secrets in every field, including rendered exceptions."""
    for key in list(event):
        event[key] = _redact_value(key, event[key])
    return event


def _short(value: Any, depth: int = 0) -> Any:
    if isinstance(value, bytes | bytearray | memoryview) and len(value) > PAYLOAD_SHOWN:
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and len(value) > 64 * PAYLOAD_SHOWN:
        return f"{value[:PAYLOAD_SHOWN]}… <{len(value)} characters>"
    if depth < 8 and isinstance(value, dict):
        return {k: _short(v, depth + 1) for k, v in value.items()}
    if depth < 8 and type(value) in (tuple, list):  # not a named tuple: its fields are no iterable
        return type(value)(_short(v, depth + 1) for v in value)
    return value


class _ShortPayloads(logging.Filter):
    """Library debug lines with their payloads as sizes. botocore logs every request's parameters,
    body included (`Making request for ... with params: {..., 'body': b'...'}`): a 27 MB Parquet
    object became a 100 MB line and took 10 s to format, once per upload, and the records of the
    body ended up in the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            with suppress(Exception):  # never fail a library's log call: keep the record as it is
                record.args = _short(record.args)
        return True


def _redact_rendered(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # format_exc_info turns exc_info into text; mask that text too.
    if isinstance(event.get("exception"), str):
        event["exception"] = redact_text(event["exception"])
    return event


class _Output:
    """Where rendered log lines go: the stream, or, while a live display (the progress bar) is on the
    terminal, its rich Console, which prints each whole line above the display instead of into it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.console: Console | None = None
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self.console is None:
                return int(self.stream.write(text))
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                self._print(line)
            return len(text)

    def _print(self, line: str) -> None:
        from rich.text import Text

        assert self.console is not None
        self.console.print(Text.from_ansi(line), soft_wrap=True)

    def flush(self) -> None:
        if self.console is None:
            self.stream.flush()

    def isatty(self) -> bool:
        return bool(self.stream.isatty())

    def detach(self) -> None:
        with self._lock:
            if self._partial:
                self._print(self._partial)
                self._partial = ""
            self.console = None


_output = _Output(sys.stderr)


@contextmanager
def through(console: Console) -> Iterator[None]:
    """Log lines go through `console` (which shows a live display on the same terminal) meanwhile."""
    if console.file is not _output.stream:
        yield  # the logs go elsewhere (a file, a pipe): nothing to share
        return
    _output.console = console
    try:
        yield
    finally:
        _output.detach()


def configure(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info", stream: Any = None
) -> None:
    """Configure structlog (and stdlib logging, for library messages) once per process."""
    global _output
    out = stream or sys.stderr
    _output = _Output(out)
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    tail = [redact_processor, structlog.processors.format_exc_info, _redact_rendered, renderer]
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _output)),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard `logging` module (botocore, aiobotocore, uvicorn, httpx, the
    # cloudflare SDK): their records take the same way out, as the same JSON or console lines, redacted.
    handler = logging.StreamHandler(_output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    handler.addFilter(_ShortPayloads())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Library chatter only from warnings up, unless the worker itself is asked for debug output.
    root.setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def get_logger(name: str = "ingest") -> Any:
    return structlog.get_logger(name)
