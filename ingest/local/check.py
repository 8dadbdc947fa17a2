"""A quick end-to-end self-check of a running local R2, through the same clients users use."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import aioboto3
from cloudflare import AsyncCloudflare

from ingest.local.server import LocalR2Info
from ingest.local.state import sha256_hex
from ingest.r2.endpoint import client_config

Report = Callable[[bool, str], None]


async def self_check(info: LocalR2Info, report: Report) -> bool:
    """Verify the token, write+read+delete with token-derived keys, mint temporary credentials."""
    ok: bool = True
    key = f"_selfcheck/{uuid.uuid4().hex}.txt"
    async with AsyncCloudflare(api_token=info.api_token, base_url=info.api_base_url, max_retries=0) as cf:
        verified = await cf.user.tokens.verify()
        good = verified is not None and verified.id == info.access_key_id and verified.status == "active"
        status = verified.status if verified else "unknown"
        report(good, f"API token verifies: id {verified.id if verified else '?'} is {status}")
        ok &= good
        session = aioboto3.Session()
        async with session.client(
            "s3",
            endpoint_url=info.endpoint_url,
            aws_access_key_id=info.access_key_id,
            aws_secret_access_key=sha256_hex(info.api_token),
            config=client_config(),
        ) as s3:
            await s3.put_object(Bucket=info.bucket, Key=key, Body=b"hello r2")
            body = await (await s3.get_object(Bucket=info.bucket, Key=key))["Body"].read()
            await s3.delete_object(Bucket=info.bucket, Key=key)
        good = body == b"hello r2"
        report(good, f"token-derived S3 keys write, read and delete s3://{info.bucket}/{key}")
        ok &= good
        temp = await cf.r2.temporary_credentials.create(
            account_id=info.account_id,
            bucket=info.bucket,
            parent_access_key_id=info.access_key_id,
            permission="object-read-write",
            ttl_seconds=900,
            prefixes=["_selfcheck/"],
        )
        good = bool(temp.access_key_id and temp.secret_access_key and temp.session_token)
        report(good, "temporary credentials minted (ttl 900 s, prefix _selfcheck/)")
        ok &= good
    return ok
