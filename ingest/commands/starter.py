"""The commented `ingest.toml` that `ingest init` writes: the chosen sources, the settings a newcomer
is likely to change, and the environment names to set.

Defaults are written commented out (so a later release's defaults still apply) and are taken from the
settings models themselves, so this file never disagrees with what the worker does.
"""

from __future__ import annotations

import re
from typing import get_args

from ingest.config import (
    BatchConfig,
    LogConfig,
    OutputConfig,
    ServerConfig,
    SourceConfig,
    SpoolConfig,
    UploadConfig,
    WorkerConfig,
)

SOURCE_KINDS: tuple[str, ...] = get_args(SourceConfig.model_fields["kind"].annotation)
INBOX = "inbox"
COMMENT_COLUMN = 34
_COMMENTED = re.compile(r"^(.*?\S) {2,}(# .*)$")

_HEADER = """\
# r2-ingest configuration, written by `ingest init`. Commented lines show the defaults; every key is
# documented in config/ingest.example.toml. Durations: "500ms", "60s", "5m"; sizes: "64MiB", "10GiB".
# Relative paths are relative to this file's directory.
#
# Where the data goes: set these in the environment (never in this file on a shared machine):
#   R2_ACCOUNT_ID, R2_BUCKET_NAME             the Cloudflare account and the bucket
#   R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY    an R2 API token's S3 keys, or
#   R2_API_TOKEN (and R2_TOKEN_ID)            the API token itself (R2_AUTH_MODE=temporary: short-lived
#                                             credentials the worker refreshes by itself)
# With none of them set, `ingest run` starts a local R2 under .ingest/local/ to try things offline.
"""

_SOURCES = {
    "directory": """\
[[sources]]
kind = "directory"
path = "{inbox}"                 # the watched directory (files are claimed, read, then deleted)
# format = "{s.format}"                  # jsonl | json | csv | parquet; empty: by the file's extension
# settle_seconds = "{settle}"          # a file is taken once its size and mtime held still this long
# done_dir = "{s.done_dir}"                # move ingested files here instead of deleting them
""",
    "landing": """\
[[sources]]
kind = "landing"  # objects put under {{output.prefix}}_landing/ (by browsers: `ingest presign`)
# format = "{s.format}"                  # jsonl | json | csv | parquet; empty: by the object's extension
# settle_seconds = "{settle}"          # how often the landing prefix is listed
""",
    "http": """[[sources]]
kind = "http"  # POST /v1/records and /v1/records/{{table}} on server.listen (see the README)
# token = ""                     # set INGEST_HTTP_TOKEN instead: the bearer token senders present
# tables = []                    # tables a request may name; empty: any valid name
# ack = "{s.ack}"                   # spool: 202 once on this disk | upload: 200 once in R2
""",
    "stdin": """[[sources]]
kind = "stdin"  # standard input until EOF (usually: `cat f.jsonl | ingest run --once --source stdin`)
# format = "jsonl"                 # jsonl | csv
""",
    "redis": """\
[[sources]]
kind = "redis"  # Redis Streams through one consumer group shared by every worker
stream = "events"
# url = ""                       # set INGEST_REDIS_URL instead: redis://[:password@]host:6379/0
# group = "{s.group}"                  # created when missing, from the oldest entry (start = "0")
# claim_idle = "5m"              # entries of a worker idle this long are taken by the others
""",
    "queue": """\
[[sources]]
kind = "queue"  # a Cloudflare Queue, as an HTTP pull consumer (see docs/queues.md)
queue = "events"                 # its name; CLOUDFLARE_API_TOKEN needs Queues Write
# visibility_timeout = "5m"      # must outlast batch.max_age plus the upload
# concurrency = 2                # pulls in flight
""",
}

_REST = """\
[output]
# prefix = "{o.prefix}"                  # key prefix, e.g. "events/"
# key_template = "{o.key_template}"
# partition_by = "{o.partition_by}"  # an event-time field for {{date}}; empty: the time of ingestion
# compression = "{o.compression}"

[batch]
# max_records = {b.max_records}        # an object is written at this many records,
# max_bytes = "{max_bytes}"          # or this much data,
# max_age = "{max_age}"               # or when its first record is this old

[upload]
# concurrency = {u.concurrency}             # uploads in flight

[spool]
# dir = "{sp.dir}"        # encoded objects wait here until R2 has them (keep it on a persistent disk)
# max_bytes = "{spool_max}"          # above this, intake pauses until uploads catch up

[worker]
# id = "{w.id}"                       # default: the host name; set a stable one per replica on Kubernetes
# shutdown_timeout = "{shutdown}"      # after SIGTERM: finish in-flight work this long, then exit

[server]
# listen = "{sv.listen}"    # /healthz, /readyz and /metrics while `ingest run` runs as a daemon

[log]
# format = "{lg.format}"                 # auto: a console on a terminal, JSON lines elsewhere
# level = "{lg.level}"
"""


def duration(seconds: float) -> str:
    """60.0 → "1m", 1.0 → "1s", 0.05 → "50ms": the form the config accepts."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def render(kinds: list[str]) -> str:
    """The file for these source kinds, in the order given (each at most once)."""
    source = SourceConfig(kind="directory")
    batch, spool, worker = BatchConfig(), SpoolConfig(), WorkerConfig()
    parts = [_HEADER]
    for kind in dict.fromkeys(kinds):
        parts.append(_SOURCES[kind].format(inbox=INBOX, s=source, settle=duration(source.settle_seconds)))
    parts.append(
        _REST.format(
            o=OutputConfig(),
            b=batch,
            max_bytes=size(batch.max_bytes),
            max_age=duration(batch.max_age),
            u=UploadConfig(),
            sp=spool,
            spool_max=size(spool.max_bytes),
            w=worker,
            shutdown=duration(worker.shutdown_timeout),
            sv=ServerConfig(),
            lg=LogConfig(),
        )
    )
    return "\n".join(_align(line) for line in "\n".join(parts).split("\n"))


def _align(line: str) -> str:
    """Put a line's trailing comment at COMMENT_COLUMN (or two spaces after a longer value)."""
    m = _COMMENTED.match(line)
    if m is None:
        return line
    return f"{m.group(1).ljust(COMMENT_COLUMN - 2)}  {m.group(2)}"
