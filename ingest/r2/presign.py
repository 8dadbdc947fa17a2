"""Presigned URLs: what browsers use to reach R2 without holding credentials.

R2 supports presigned GET, PUT, HEAD and DELETE (SigV4 query auth, at most 7 days) but not presigned
POST (HTML form uploads), so POST is refused here with that reason rather than failing at upload time.
A URL signed with temporary credentials dies with them, so the expiry reported is the one that holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ingest.r2.client import R2Client

OPERATIONS = {"GET": "get_object", "PUT": "put_object", "HEAD": "head_object", "DELETE": "delete_object"}
MAX_EXPIRES = 7 * 86400


class PresignError(ValueError):
    """A presign request R2 would not honour; the message says why and what to do instead."""


@dataclass(frozen=True)
class Presigned:
    url: str
    method: str
    key: str
    expires_at: datetime
    headers: dict[str, str] = field(default_factory=dict)  # the browser must send exactly these
    shortened: bool = False  # the credentials expire before the requested expiry

    def as_json(self) -> dict[str, object]:
        return {
            "url": self.url,
            "method": self.method,
            "key": self.key,
            "expires_at": self.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "headers": self.headers,
        }


def check_request(method: str, expires: float) -> str:
    """The normalised method, or PresignError naming the problem and the fix."""
    m = method.upper()
    if m == "POST":
        raise PresignError(
            "--method POST: R2 does not support presigned POST (HTML form uploads); use a presigned "
            "PUT (--method PUT) and send the file as the request body"
        )
    if m not in OPERATIONS:
        raise PresignError(f"--method {method}: must be one of {', '.join(OPERATIONS)}")
    if not 1 <= expires <= MAX_EXPIRES:
        raise PresignError(
            f"--expires {expires:g}s: must be from 1s to 7d ({MAX_EXPIRES} s), the longest R2 accepts"
        )
    return m


async def presign(
    client: R2Client, bucket: str, key: str, method: str, expires: float, content_type: str = ""
) -> Presigned:
    method = check_request(method, expires)
    if content_type and method != "PUT":
        raise PresignError("--content-type: only a PUT sends a body; leave it out for " + method)
    seconds = int(expires)
    creds = client.provider.current()
    shortened = creds.remaining() < seconds
    if shortened:
        seconds = max(1, int(creds.remaining()))
    params: dict[str, str] = {"Bucket": bucket, "Key": key}
    headers: dict[str, str] = {}
    if content_type:
        params["ContentType"] = content_type
        headers["Content-Type"] = content_type
    s3 = await client.built()
    url = await s3.generate_presigned_url(
        OPERATIONS[method], Params=params, ExpiresIn=seconds, HttpMethod=method
    )
    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)
    return Presigned(str(url), method, key, expires_at, headers, shortened)
