"""PUTs of a `Body` with its digest are signed with that digest: botocore never reads the body to
hash it on the event loop, the header it sends is the body's SHA-256, and the object arrives whole."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from pydantic import SecretStr

from ingest.r2.body import SLICE, Body
from ingest.r2.client import R2Client
from ingest.r2.credentials import CredentialProvider, S3Credentials
from tests.conftest import LocalR2


class _CountedBody(Body):
    """A `Body` that counts botocore's reads (its hash reads the whole body; aiohttp never reads)."""

    reads = 0

    def read(self, size: int = -1) -> memoryview:
        self.reads += 1
        return super().read(size)


@pytest.mark.anyio
async def test_a_body_with_its_digest_is_signed_with_it_and_never_read_to_hash(local_r2: LocalR2) -> None:
    env = local_r2.env
    bucket = env["R2_BUCKET_NAME"]
    data = os.urandom(4 * SLICE + 99)
    digest = hashlib.sha256(data).hexdigest()
    provider = CredentialProvider(
        S3Credentials(env["R2_ACCESS_KEY_ID"], SecretStr(env["R2_SECRET_ACCESS_KEY"]))
    )
    sent: list[str] = []

    def seen(request: Any, **_: Any) -> None:
        value = request.headers["X-Amz-Content-SHA256"]
        sent.append(value.decode() if isinstance(value, bytes) else value)

    async with R2Client(env["R2_ENDPOINT_URL"], provider) as client:
        await client.built()
        client.s3.meta.events.register("before-send.s3.PutObject", seen)
        known = _CountedBody(data, digest)
        await client.call("put_object", Bucket=bucket, Key="signed/known", Body=known, IfNoneMatch="*")
        assert known.reads == 0 and sent == [digest]
        unknown = _CountedBody(data)  # no digest: botocore hashes it, as before
        await client.call("put_object", Bucket=bucket, Key="signed/unknown", Body=unknown, IfNoneMatch="*")
        assert unknown.reads > 0 and sent == [digest, digest]
        await client.call("put_object", Bucket=bucket, Key="signed/bytes", Body=b"small", IfNoneMatch="*")
        assert sent[-1] == hashlib.sha256(b"small").hexdigest()
        for key in ("signed/known", "signed/unknown"):
            got = await client.call("get_object", Bucket=bucket, Key=key)
            assert await got["Body"].read() == data
        # Presigned URLs still get botocore's own signer (they sign no payload).
        url = await client.s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "signed/known"}
        )
        assert "X-Amz-Signature=" in url and "UNSIGNED-PAYLOAD" not in url
