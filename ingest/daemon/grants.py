"""Upload grants: a presigned PUT into the landing prefix, so a browser uploads straight to R2.

The worker never sees the file's bytes; the landing source picks the object up once it exists.
Each grant gets its own `<uuid>/` so two uploads of `events.jsonl` never collide.
"""

from __future__ import annotations

import re
import uuid
from pathlib import PurePosixPath

from ingest.layout import landing_prefix
from ingest.parsing.formats import detect
from ingest.r2.client import R2Client
from ingest.r2.presign import Presigned, presign

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._ -]{1,200}$")
CONTENT_TYPES = {
    "jsonl": "application/x-ndjson",
    "json": "application/json",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}
COMPRESSED_TYPES = {"gzip": "application/gzip", "zstd": "application/zstd"}


class GrantError(ValueError):
    """A grant request we refuse; the message names the field and the fix."""


def content_type_for(filename: str, fmt: str = "") -> str:
    detected = detect(PurePosixPath(filename), fmt)  # type: ignore[arg-type]
    if detected is None:
        raise GrantError(
            f"filename: {filename!r} has no format we read; name it .jsonl, .ndjson, .csv or .parquet "
            "(optionally .gz or .zst)"
        )
    kind, compression = detected
    return COMPRESSED_TYPES[compression] if compression else CONTENT_TYPES[kind]


class UploadGrants:
    def __init__(self, client: R2Client, bucket: str, prefix: str, expires: float, fmt: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = landing_prefix(prefix)
        self.expires = expires
        self.fmt = fmt

    async def grant(self, filename: str, content_type: str = "") -> Presigned:
        if not _SAFE_NAME.match(filename) or filename.startswith(".") or filename != filename.strip():
            raise GrantError(  # the landing source skips dot files: such an upload would never be read
                f"filename: {filename!r} must be a plain file name (letters, digits, '.', '_', '-', "
                "inner spaces; not starting with '.'; at most 200), e.g. events.jsonl"
            )
        expected = content_type_for(filename, self.fmt)
        key = f"{self.prefix}{uuid.uuid4().hex}/{filename}"
        return await presign(self.client, self.bucket, key, "PUT", self.expires, content_type or expected)
