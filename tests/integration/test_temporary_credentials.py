"""Temporary credentials under load against the real local R2: refresh, revoke, scope, 429, redaction."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest

from ingest import logs
from ingest.r2.client import R2AccessDenied, R2Client
from ingest.r2.credentials import TemporaryCredentials, provider_from_settings
from tests.conftest import LocalR2
from tests.r2.test_credentials import r2_config


@pytest.fixture(autouse=True)
def _quiet_logs_afterwards() -> Iterator[None]:
    """Tests here point logging at a buffer, at debug level: put it back for the rest of the session."""
    yield
    logs.configure("json", "warning")


@asynccontextmanager
async def temporary(
    r2: LocalR2, ttl: int, prefix: str, fraction: float = 0.5
) -> AsyncIterator[tuple[TemporaryCredentials, R2Client]]:
    cfg = r2_config(r2, mode="temporary", api_token=r2.api_token, ttl_seconds=ttl, refresh_fraction=fraction)
    provider = await provider_from_settings(cfg, prefix)
    assert isinstance(provider, TemporaryCredentials)
    async with provider, R2Client(cfg.endpoint_url, provider, max_connections=16) as client:
        yield provider, client


def emulator(r2: LocalR2, path: str, body: dict[str, object] | None = None) -> httpx.Response:
    r = httpx.post(
        f"{r2.api_base_url}/_emulator/{path}",
        headers={"Authorization": f"Bearer {r2.root_token}"},
        json=body or {},
    )
    r.raise_for_status()
    return r


async def upload_stream(
    client: R2Client, bucket: str, prefix: str, seconds: float, workers: int, seen: set[str] | None = None
) -> tuple[int, list[str]]:
    """`workers` concurrent uploaders for `seconds`; returns (uploads, failures)."""
    done = 0
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < deadline:
            key = f"{prefix}w{n}/{i:05d}"
            if seen is not None:
                creds = client.provider.current()
                seen.update(
                    {creds.secret_access_key.get_secret_value()}
                    | ({creds.session_token.get_secret_value()} if creds.session_token else set())
                )
            try:
                await client.call("put_object", Bucket=bucket, Key=key, Body=key.encode())
                done += 1
            except Exception as exc:
                failures.append(f"{key}: {exc!r}")
            i += 1
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        for n in range(workers):
            tg.start_soon(worker, n)
    return done, failures


def count_objects(r2: LocalR2, prefix: str) -> int:
    s3 = r2.token_s3()
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=r2.bucket, Prefix=prefix):
        total += len(page.get("Contents", []))
    return total


@pytest.mark.anyio
async def test_ttl_3s_stream_has_zero_failures_and_single_flight_refreshes(local_r2: LocalR2) -> None:
    prefix = f"stream-{uuid.uuid4().hex[:6]}/"
    async with temporary(local_r2, ttl=3, prefix=prefix) as (provider, client):
        done, failures = await upload_stream(client, local_r2.bucket, prefix, seconds=20, workers=6)
    assert failures == []
    assert done > 100
    assert provider.refreshes >= 6  # initial + at least 5 refreshes in 20 s
    # Single-flight: one API call per refresh (a proactive one in flight when the block ends is
    # cancelled after it was counted as a call, so at most one call more).
    assert provider.refreshes <= provider.api_calls <= provider.refreshes + 1
    assert count_objects(local_r2, prefix) == done


@pytest.mark.anyio
async def test_revoked_credentials_are_refreshed_reactively(local_r2: LocalR2) -> None:
    prefix = f"reactive-{uuid.uuid4().hex[:6]}/"
    async with temporary(local_r2, ttl=300, prefix=prefix) as (provider, client):
        await client.call("put_object", Bucket=local_r2.bucket, Key=f"{prefix}before", Body=b"1")
        first = provider.current().access_key_id
        emulator(local_r2, f"temp-access-credentials/{first}/revoke")

        async def put(i: int) -> None:
            await client.call("put_object", Bucket=local_r2.bucket, Key=f"{prefix}after-{i}", Body=b"2")

        async with anyio.create_task_group() as tg:  # 5 concurrent rejections -> one refresh
            for i in range(5):
                tg.start_soon(put, i)
        assert provider.current().access_key_id != first
        assert provider.api_calls == 2
        assert client.reactive_refreshes >= 1
    assert count_objects(local_r2, prefix) == 6


@pytest.mark.anyio
async def test_scope_denial_names_the_prefix(local_r2: LocalR2) -> None:
    async with temporary(local_r2, ttl=300, prefix="p/") as (_provider, client):
        await client.call("put_object", Bucket=local_r2.bucket, Key="p/allowed", Body=b"ok")
        with pytest.raises(R2AccessDenied) as denied:
            await client.call("put_object", Bucket=local_r2.bucket, Key="q/x", Body=b"no")
    message = str(denied.value)
    assert "q/x" in message and "prefixes p/" in message
    assert count_objects(local_r2, "q/x") == 0


@pytest.mark.anyio
async def test_rate_limit_keeps_uploading_on_valid_credentials_and_warns_once(local_r2: LocalR2) -> None:
    buf = io.StringIO()
    logs.configure("json", "info", stream=buf)
    prefix = f"ratelimit-{uuid.uuid4().hex[:6]}/"
    try:
        # TTL 12 s, refresh after ~3 s; the API answers 429 (Retry-After 5) for the next 6 s.
        async with temporary(local_r2, ttl=12, prefix=prefix, fraction=0.25) as (provider, client):
            first = provider.current().access_key_id
            emulator(local_r2, "rate-limit", {"seconds": 6, "retry_after": 5})
            done, failures = await upload_stream(client, local_r2.bucket, prefix, seconds=10, workers=4)
            assert provider.current().access_key_id != first  # refreshed after the block lifted
    finally:
        emulator(local_r2, "rate-limit", {"seconds": 0})
    assert failures == []
    assert count_objects(local_r2, prefix) == done
    events = [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]
    warnings = [e for e in events if e["event"].startswith("cloudflare API rate limited")]
    assert len(warnings) == 1, warnings
    assert warnings[0]["retry_after"] == 5.0


@pytest.mark.anyio
async def test_log_of_temporary_run_contains_no_secret(local_r2: LocalR2) -> None:
    buf, prefix, secrets = _debug_logs(local_r2, "redact")
    async with temporary(local_r2, ttl=2, prefix=prefix) as (provider, client):
        done, failures = await upload_stream(client, local_r2.bucket, prefix, 4, workers=2, seen=secrets)
        emulator(local_r2, f"temp-access-credentials/{provider.current().access_key_id}/revoke")
        await client.call("put_object", Bucket=local_r2.bucket, Key=f"{prefix}after-revoke", Body=b"x")
        with pytest.raises(R2AccessDenied) as denied:
            await client.call("put_object", Bucket=local_r2.bucket, Key="outside/x", Body=b"x")
        logs.get_logger("test").error("upload failed", error=denied.value, exc_info=denied.value)
    assert failures == [] and done > 0 and provider.refreshes >= 3
    text = _no_secret_and_every_line_json(buf.getvalue(), secrets)
    assert "temporary credentials refreshed" in text


def _debug_logs(r2: LocalR2, name: str) -> tuple[io.StringIO, str, set[str]]:
    """Every log line (ours and the libraries', at debug) into a buffer; a fresh prefix; the secrets
    known so far (the tests add each minted one as it is used)."""
    buf = io.StringIO()
    logs.configure("json", "debug", stream=buf)
    return buf, f"{name}-{uuid.uuid4().hex[:6]}/", {r2.api_token, r2.env["R2_SECRET_ACCESS_KEY"]}


def _no_secret_and_every_line_json(text: str, secrets: set[str]) -> str:
    assert len(secrets) >= 4  # token value, derived secret, and at least one minted secret pair
    for secret in secrets:
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines()]  # fails on any line that is not JSON
    loggers = {str(r.get("logger", "")).split(".")[0] for r in records}
    assert "botocore" in loggers, loggers  # library debug records came through the same renderer
    return text


@pytest.mark.anyio
async def test_botocore_debug_logs_of_session_credentials_are_json_and_redacted(local_r2: LocalR2) -> None:
    buf, prefix, secrets = _debug_logs(local_r2, "redact-sts")
    async with temporary(local_r2, ttl=900, prefix=prefix) as (provider, client):  # STS: a session token
        done, failures = await upload_stream(client, local_r2.bucket, prefix, 1.5, workers=2, seen=secrets)
        assert provider.current().session_token is not None
        body = b"row\n" * 500_000  # botocore logs each request's body at debug: here by its size
        await client.call("put_object", Bucket=local_r2.bucket, Key=f"{prefix}big", Body=body)
    assert failures == [] and done > 0
    text = _no_secret_and_every_line_json(buf.getvalue(), secrets)
    assert "X-Amz-Security-Token" in text or "x-amz-security-token" in text.lower()  # it was logged, masked
    assert "<2000000 bytes>" in text
    longest = max(text.splitlines(), key=len)
    assert len(longest) < 64 * 1024, longest[:300]


@pytest.mark.anyio
async def test_expiry_metric_is_the_expiry_time(local_r2: LocalR2) -> None:
    from prometheus_client import REGISTRY

    before = time.time()
    async with temporary(local_r2, ttl=900, prefix="metric/"):
        value = REGISTRY.get_sample_value("ingest_credential_expiry_timestamp_seconds")
    assert value is not None and before + 890 <= value <= time.time() + 900


@pytest.mark.anyio
@pytest.mark.parametrize("ttl", [300, 1800])  # both kinds the local R2 mints: identity, and STS
async def test_prefix_scoped_credentials_list_inside_their_prefix_only(local_r2: LocalR2, ttl: int) -> None:
    prefix = f"scoped-{uuid.uuid4().hex[:6]}/"
    async with temporary(local_r2, ttl=ttl, prefix=prefix) as (_provider, client):
        await client.call("put_object", Bucket=local_r2.bucket, Key=f"{prefix}2024/08/02/a", Body=b"1")
        for inside in (prefix, f"{prefix}2024/08/02/"):
            listed = await client.call("list_objects_v2", Bucket=local_r2.bucket, Prefix=inside)
            assert [o["Key"] for o in listed["Contents"]] == [f"{prefix}2024/08/02/a"]
        for outside in ("", "other/", prefix.rstrip("/")):
            with pytest.raises(R2AccessDenied, match=f"prefixes {prefix}"):
                await client.call("list_objects_v2", Bucket=local_r2.bucket, Prefix=outside)
