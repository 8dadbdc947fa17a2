"""PUTs signed with the SHA-256 the spool already has, not one botocore computes on the event loop.

SigV4 signs a hash of the payload, which the store checks against the bytes it receives. With the
checksum settings R2 needs (endpoint.py: no Content-MD5, no x-amz-checksum-*), botocore signs the
payload over https too, and hashes the whole body on the thread that signs: the event loop. A 28 MB
object held the loop about 18 ms, once per attempt, under every HTTP request waiting for a 202.
A `Body` that carries its SHA-256 (the spool's digest, computed by the encoder in a thread and
checked again after a restart; a part's, computed by the thread that reads it) is signed with it.
If the bytes no longer match it, the store refuses the PUT: a spool file changed on disk is never
uploaded.
"""

from __future__ import annotations

from typing import Any

import botocore.auth
from botocore.awsrequest import AWSRequest

from ingest.r2.body import Body

SIGNATURE_VERSION = "s3v4-ingest-prehashed"
OPERATIONS = ("PutObject", "UploadPart")


class PrehashedS3SigV4Auth(botocore.auth.S3SigV4Auth):
    """botocore's S3 SigV4, except that a `Body` with a digest is not read to hash it."""

    def payload(self, request: AWSRequest) -> str:
        body = request.body
        # (botocore's own rule for when a payload is signed at all; its stubs leave it out)
        signed = self._should_sha256_sign_payload(request)  # type: ignore[attr-defined]
        if isinstance(body, Body) and body.sha256 and signed:
            return body.sha256
        return str(super().payload(request))


def sign_with_known_digests(s3: Any) -> None:
    """Make `s3` (an aiobotocore S3 client) sign the PUTs of `Body`s with their digest."""
    botocore.auth.AUTH_TYPE_MAPS.setdefault(SIGNATURE_VERSION, PrehashedS3SigV4Auth)
    for operation in OPERATIONS:
        s3.meta.events.register(f"choose-signer.s3.{operation}", _choose)


def _choose(signature_version: str, **_: Any) -> str | None:
    """Our signer where botocore's would be S3 SigV4 (anything else, e.g. a presigned URL, as is)."""
    return SIGNATURE_VERSION if signature_version in ("s3v4", "v4") else None
