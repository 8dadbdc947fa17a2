"""PUT bodies sent a slice per loop turn: the same bytes arrive in R2, whatever a read left behind."""

from __future__ import annotations

import os
from typing import Any

import pytest
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import PAYLOAD_REGISTRY
from pydantic import SecretStr

from ingest.r2.body import SLICE, Body, BodyPayload
from ingest.r2.client import R2Client
from ingest.r2.credentials import CredentialProvider, S3Credentials
from tests.conftest import LocalR2


class _Recorder(AbstractStreamWriter):
    """Keeps what a payload writes (aiohttp's writer interface, no socket)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    async def write(self, chunk: Any) -> None:
        self.pieces.append(bytes(chunk))

    async def write_eof(self, chunk: bytes = b"") -> None:
        pass

    async def drain(self) -> None:
        pass

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        pass

    def enable_chunking(self) -> None:
        pass

    async def write_headers(self, status_line: str, headers: Any) -> None:
        pass

    def send_headers(self) -> None:
        pass


def test_a_body_reads_as_a_seekable_file_for_botocore() -> None:
    data = os.urandom(3 * SLICE + 17)
    body = Body(data)
    assert len(body) == len(data) and body.tell() == 0 and "bytes" in repr(body)
    assert bytes(body.read(10)) == data  # the rest in one view, whatever the size asked
    assert body.tell() == len(data) and bytes(body.read()) == b""
    assert body.seek(-17, os.SEEK_END) == 3 * SLICE
    assert bytes(body.read()) == data[-17:]
    body.seek(0)
    assert bytes(body.read()) == data


@pytest.mark.anyio
async def test_aiohttp_sends_a_body_as_slices_of_at_most_one_mib() -> None:
    data = os.urandom(3 * SLICE + 17)
    body = Body(data)
    body.read()  # botocore hashed it: the position is at the end
    payload = PAYLOAD_REGISTRY.get(body)
    assert isinstance(payload, BodyPayload) and payload.size == len(data)
    out = _Recorder()
    await payload.write_with_length(out, None)
    assert [len(p) for p in out.pieces] == [SLICE, SLICE, SLICE, 17]
    assert b"".join(out.pieces) == data  # all of it, not what a read left
    clipped = _Recorder()
    await payload.write_with_length(clipped, SLICE + 5)
    assert b"".join(clipped.pieces) == data[: SLICE + 5]


@pytest.mark.anyio
async def test_a_body_put_twice_arrives_whole_in_r2_each_time(local_r2: LocalR2) -> None:
    env = local_r2.env
    data = os.urandom(5 * SLICE + 123)  # several slices, and a part of one
    body = Body(data)
    keys = S3Credentials(env["R2_ACCESS_KEY_ID"], SecretStr(env["R2_SECRET_ACCESS_KEY"]))
    provider = CredentialProvider(keys)
    bucket = env["R2_BUCKET_NAME"]
    async with R2Client(env["R2_ENDPOINT_URL"], provider) as client:
        for key in ("body/first", "body/again"):  # an attempt after another: the same object
            await client.call("put_object", Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            got = await client.call("get_object", Bucket=bucket, Key=key)
            assert await got["Body"].read() == data
        with pytest.raises(Exception, match=r"PreconditionFailed|412"):  # the key is taken: refused
            await client.call(
                "put_object", Bucket=bucket, Key="body/first", Body=Body(b"other"), IfNoneMatch="*"
            )
        got = await client.call("get_object", Bucket=bucket, Key="body/first")
        assert await got["Body"].read() == data
