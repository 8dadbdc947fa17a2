"""The Cloudflare API emulator, driven by the official SDK; every permission is checked on real S3."""

from __future__ import annotations

import time
import uuid

import cloudflare
import httpx
import pytest
from botocore.exceptions import ClientError

from ingest.r2.credentials import derive_secret
from ingest.r2.tokens import ITEM_READ, ITEM_WRITE, bucket_resource
from tests.conftest import LocalR2


def _error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def _make_token(r2: LocalR2, bucket: str, group_name: str) -> tuple[str, str]:
    cf = r2.cf()
    groups = {g.name: g.id for g in cf.user.tokens.permission_groups.list()}
    tok = cf.user.tokens.create(
        name=f"test-{uuid.uuid4().hex[:6]}",
        policies=[
            {
                "effect": "allow",
                "resources": {bucket_resource(r2.account_id, bucket): "*"},
                "permission_groups": [{"id": groups[group_name]}],
            }
        ],
    )
    assert tok.id and tok.value
    return tok.id, str(tok.value)


@pytest.fixture(scope="module")
def other_bucket(local_r2: LocalR2) -> str:
    name = f"other-{uuid.uuid4().hex[:8]}"
    local_r2.cf().r2.buckets.create(account_id=local_r2.account_id, name=name)
    return name


def test_token_keys_write_own_bucket_and_are_denied_elsewhere(local_r2: LocalR2, other_bucket: str) -> None:
    token_id, value = _make_token(local_r2, local_r2.bucket, ITEM_WRITE)
    s3 = local_r2.s3(token_id, derive_secret(value))
    s3.put_object(Bucket=local_r2.bucket, Key="tokens/w.txt", Body=b"written")
    assert s3.get_object(Bucket=local_r2.bucket, Key="tokens/w.txt")["Body"].read() == b"written"
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket=other_bucket, Key="x.txt", Body=b"no")
    assert _error_code(denied.value) == "AccessDenied"


def test_read_only_token_can_read_but_not_write(local_r2: LocalR2) -> None:
    local_r2.token_s3().put_object(Bucket=local_r2.bucket, Key="ro/existing.txt", Body=b"data")
    token_id, value = _make_token(local_r2, local_r2.bucket, ITEM_READ)
    s3 = local_r2.s3(token_id, derive_secret(value))
    assert s3.get_object(Bucket=local_r2.bucket, Key="ro/existing.txt")["Body"].read() == b"data"
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket=local_r2.bucket, Key="ro/new.txt", Body=b"no")
    assert _error_code(denied.value) == "AccessDenied"


def test_wrong_secret_is_rejected_by_sigv4(local_r2: LocalR2) -> None:
    token_id, value = _make_token(local_r2, local_r2.bucket, ITEM_WRITE)
    with pytest.raises(ClientError) as denied:
        local_r2.s3(token_id, value).put_object(Bucket=local_r2.bucket, Key="x", Body=b"raw value as secret")
    assert _error_code(denied.value) == "SignatureDoesNotMatch"


def test_verify_returns_id_and_status(local_r2: LocalR2) -> None:
    token_id, value = _make_token(local_r2, local_r2.bucket, ITEM_WRITE)
    verified = local_r2.cf(value).user.tokens.verify()
    assert verified is not None
    assert (verified.id, verified.status) == (token_id, "active")


def test_unknown_token_gets_error_envelope_and_sdk_raises(local_r2: LocalR2) -> None:
    with pytest.raises(cloudflare.APIStatusError) as exc:
        local_r2.cf("not-a-real-token-value-0000000000000000").user.tokens.verify()
    assert exc.value.status_code == 401
    body = exc.value.response.json()
    assert body["success"] is False and body["errors"][0]["code"] == 1000


def test_disabled_token_loses_its_s3_identity(local_r2: LocalR2) -> None:
    token_id, value = _make_token(local_r2, local_r2.bucket, ITEM_WRITE)
    s3 = local_r2.s3(token_id, derive_secret(value))
    s3.put_object(Bucket=local_r2.bucket, Key="disable/before", Body=b"1")
    local_r2.cf().user.tokens.update(token_id, name="disabled", policies=[], status="disabled")
    assert local_r2.cf(value).user.tokens.verify().status == "disabled"  # type: ignore[union-attr]
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket=local_r2.bucket, Key="disable/after", Body=b"2")
    assert _error_code(denied.value) == "InvalidAccessKeyId"


def test_wrong_bearer_is_403_envelope_and_bad_body_is_400(local_r2: LocalR2) -> None:
    url = f"{local_r2.api_base_url}/accounts/{local_r2.account_id}/r2/temp-access-credentials"
    wrong = httpx.post(url, headers={"Authorization": "Bearer nope"}, json={})
    assert wrong.status_code == 403
    assert wrong.json()["success"] is False and wrong.json()["errors"][0]["code"] == 10000
    bad = httpx.post(url, headers={"Authorization": f"Bearer {local_r2.api_token}"}, json={"bucket": 5})
    assert bad.status_code == 400
    assert bad.json()["success"] is False and "bucket" in bad.json()["errors"][0]["message"]
    too_long = httpx.post(
        url,
        headers={"Authorization": f"Bearer {local_r2.api_token}"},
        json={
            "bucket": local_r2.bucket,
            "parentAccessKeyId": local_r2.env["R2_ACCESS_KEY_ID"],
            "permission": "object-read-write",
            "ttlSeconds": 604801,
        },
    )
    assert too_long.status_code == 400 and "ttlSeconds" in too_long.json()["errors"][0]["message"]


def _temp(r2: LocalR2, ttl: int, prefixes: list[str], permission: str = "object-read-write") -> object:
    return r2.cf(r2.api_token).r2.temporary_credentials.create(
        account_id=r2.account_id,
        bucket=r2.bucket,
        parent_access_key_id=r2.env["R2_ACCESS_KEY_ID"],
        permission=permission,  # type: ignore[arg-type]
        ttl_seconds=ttl,
        prefixes=prefixes,
    )


def test_short_temp_credentials_are_scoped_and_expire(local_r2: LocalR2) -> None:
    creds = _temp(local_r2, 3, ["a/"])
    minted = time.monotonic()
    s3 = local_r2.s3(creds.access_key_id, creds.secret_access_key, creds.session_token)  # type: ignore[attr-defined]
    s3.put_object(Bucket=local_r2.bucket, Key="a/inside.txt", Body=b"ok")
    assert s3.get_object(Bucket=local_r2.bucket, Key="a/inside.txt")["Body"].read() == b"ok"
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket=local_r2.bucket, Key="b/outside.txt", Body=b"no")
    assert _error_code(denied.value) == "AccessDenied"
    time.sleep(max(0.0, 3 - (time.monotonic() - minted)) + 1.5)
    for call in (
        lambda: s3.put_object(Bucket=local_r2.bucket, Key="a/late.txt", Body=b"late"),
        lambda: s3.get_object(Bucket=local_r2.bucket, Key="a/inside.txt"),
        lambda: s3.list_objects_v2(Bucket=local_r2.bucket, Prefix="a/"),
    ):
        with pytest.raises(ClientError) as expired:
            call()
        assert _error_code(expired.value) == "InvalidAccessKeyId"


def test_sts_temp_credentials_carry_a_session_token_and_scope(local_r2: LocalR2) -> None:
    creds = _temp(local_r2, 900, ["sts/"])
    assert creds.session_token  # type: ignore[attr-defined]
    s3 = local_r2.s3(creds.access_key_id, creds.secret_access_key, creds.session_token)  # type: ignore[attr-defined]
    s3.put_object(Bucket=local_r2.bucket, Key="sts/in.txt", Body=b"ok")
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket=local_r2.bucket, Key="elsewhere/x.txt", Body=b"no")
    assert _error_code(denied.value) == "AccessDenied"
    forged = local_r2.s3(creds.access_key_id, creds.secret_access_key, creds.session_token[:-6] + "AAAAAA")  # type: ignore[attr-defined]
    with pytest.raises(ClientError):
        forged.put_object(Bucket=local_r2.bucket, Key="sts/forged.txt", Body=b"no")


def test_read_only_temp_credentials_cannot_write(local_r2: LocalR2) -> None:
    creds = _temp(local_r2, 60, ["ro-temp/"], permission="object-read-only")
    s3 = local_r2.s3(creds.access_key_id, creds.secret_access_key, creds.session_token)  # type: ignore[attr-defined]
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket=local_r2.bucket, Key="ro-temp/x", Body=b"no")
    assert _error_code(denied.value) == "AccessDenied"


def test_emulator_can_revoke_temp_credentials_early(local_r2: LocalR2) -> None:
    creds = _temp(local_r2, 300, ["rev/"])
    s3 = local_r2.s3(creds.access_key_id, creds.secret_access_key, creds.session_token)  # type: ignore[attr-defined]
    s3.put_object(Bucket=local_r2.bucket, Key="rev/1", Body=b"1")
    r = httpx.post(
        f"{local_r2.api_base_url}/_emulator/temp-access-credentials/{creds.access_key_id}/revoke",  # type: ignore[attr-defined]
        headers={"Authorization": f"Bearer {local_r2.root_token}"},
    )
    assert r.status_code == 200, r.text
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket=local_r2.bucket, Key="rev/2", Body=b"2")
    assert _error_code(denied.value) == "InvalidAccessKeyId"


def _preflight(r2: LocalR2, bucket: str, origin: str, method: str = "PUT") -> httpx.Response:
    return httpx.options(
        f"{r2.endpoint_url}/{bucket}/upload.jsonl",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type",
        },
    )


def test_cors_rules_from_sdk_become_real_preflight_headers(local_r2: LocalR2) -> None:
    cf = local_r2.cf()
    bucket = f"cors-{uuid.uuid4().hex[:8]}"
    cf.r2.buckets.create(account_id=local_r2.account_id, name=bucket)
    origin = "http://127.0.0.1:5173"
    blocked = _preflight(local_r2, bucket, origin)
    assert "access-control-allow-origin" not in blocked.headers  # like R2: no policy, no CORS
    cf.r2.buckets.cors.update(
        bucket,
        account_id=local_r2.account_id,
        rules=[
            {
                "allowed": {"origins": [origin], "methods": ["PUT", "GET"], "headers": ["content-type"]},
                "exposeHeaders": ["ETag"],
                "maxAgeSeconds": 600,
            }
        ],
    )
    ok = _preflight(local_r2, bucket, origin)
    assert ok.headers["access-control-allow-origin"] == origin
    assert "PUT" in ok.headers["access-control-allow-methods"]
    assert ok.headers["access-control-max-age"] == "600"
    rules = cf.r2.buckets.cors.get(bucket, account_id=local_r2.account_id).rules
    assert rules is not None and rules[0].allowed.origins == [origin] and rules[0].expose_headers == ["ETag"]
    assert "access-control-allow-origin" not in _preflight(local_r2, bucket, "http://evil.example").headers
    cf.r2.buckets.cors.delete(bucket, account_id=local_r2.account_id)
    assert "access-control-allow-origin" not in _preflight(local_r2, bucket, origin).headers


def test_bucket_scoped_token_cannot_manage_buckets(local_r2: LocalR2) -> None:
    with pytest.raises(cloudflare.APIStatusError) as exc:
        local_r2.cf(local_r2.api_token).r2.buckets.create(account_id=local_r2.account_id, name="nope-bucket")
    assert exc.value.status_code == 403


def test_the_emulator_spells_cloudflare_formats_itself() -> None:
    """The local R2 must not import the product's format helpers: a wrong format would pass every
    test. Its own spellings are checked against literals from Cloudflare's documentation."""
    import ast
    from pathlib import Path

    from ingest.local import policy, state
    from ingest.local.cors import InvalidCors, from_s3_rules, to_s3_rules

    for module in Path(policy.__file__).parent.glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert not [
            m
            for m in imported
            if m.startswith(("ingest.r2.cors.rules", "ingest.r2.tokens", "ingest.r2.credentials"))
        ], module
    assert state.token_secret("example-token-value-123") == (
        "69c37c98742bc5e82e9a382f72cf696b9b9b5ae52ed1defe4c1e5f4d3a82fb53"
    )
    assert policy.bucket_resource("acct", "b", "eu") == "com.cloudflare.edge.r2.bucket.acct_eu_b"
    rules = [{"allowed": {"origins": ["https://a.com"], "methods": ["PUT"]}, "maxAgeSeconds": 60}]
    assert from_s3_rules(to_s3_rules(rules)) == {"rules": rules}
    for bad in (
        [{"allowed": {"origins": ["https://a.com/"], "methods": ["PUT"]}}],
        [{"allowed": {"origins": ["https://a.com"], "methods": ["PATCH"]}}],
        [{"allowed": {"origins": ["https://a.com"], "methods": ["GET"]}, "maxAgeSeconds": 90000}],
    ):
        with pytest.raises(InvalidCors):
            to_s3_rules(bad)
