"""Credential derivation and mode inference (pure), and each mode against the local R2."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from pydantic import SecretStr

from ingest.config import AuthConfig, R2Config
from ingest.r2.client import R2Client
from ingest.r2.credentials import (
    CredentialError,
    derive_secret,
    infer_mode,
    looks_derived,
    provider_from_settings,
)
from ingest.r2.tokens import ITEM_WRITE, bucket_resource
from tests.conftest import LocalR2


def test_secret_is_sha256_hex_of_token_value() -> None:
    assert derive_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert looks_derived(derive_secret("anything"))
    assert not looks_derived("Gey2hLGp-4UFl-ev_0rYyfJ_NEXQbfcSPWGplAKD")


@pytest.mark.parametrize(
    ("auth", "mode"),
    [
        (AuthConfig(access_key_id="k", secret_access_key=SecretStr("s")), "keys"),
        (AuthConfig(api_token=SecretStr("t" * 40)), "token"),
        (AuthConfig(mode="temporary", api_token=SecretStr("t" * 40)), "temporary"),
    ],
)
def test_mode_inference(auth: AuthConfig, mode: str) -> None:
    assert infer_mode(auth) == mode


def test_no_credentials_is_a_clear_error() -> None:
    with pytest.raises(CredentialError, match="R2_ACCESS_KEY_ID"):
        infer_mode(AuthConfig())


def r2_config(r2: LocalR2, **auth: object) -> R2Config:
    return R2Config(
        account_id=r2.account_id,
        bucket=r2.bucket,
        endpoint_url=r2.endpoint_url,
        api_base_url=r2.api_base_url,
        auth=AuthConfig.model_validate(auth),
    )


async def roundtrip(cfg: R2Config, key: str, prefix: str = "") -> str:
    provider = await provider_from_settings(cfg, prefix)
    async with provider, R2Client(cfg.endpoint_url, provider) as r2:
        body = f"hello {key}".encode()
        await r2.call("put_object", Bucket=cfg.bucket, Key=key, Body=body)
        got = await (await r2.call("get_object", Bucket=cfg.bucket, Key=key))["Body"].read()
        assert got == body
        return provider.current().access_key_id


@pytest.mark.anyio
async def test_keys_mode(local_r2: LocalR2) -> None:
    cfg = r2_config(
        local_r2,
        access_key_id=local_r2.env["R2_ACCESS_KEY_ID"],
        secret_access_key=local_r2.env["R2_SECRET_ACCESS_KEY"],
    )
    assert await roundtrip(cfg, "modes/keys.txt") == local_r2.env["R2_ACCESS_KEY_ID"]


@pytest.mark.anyio
async def test_token_mode_resolves_id_through_verify(local_r2: LocalR2) -> None:
    cfg = r2_config(local_r2, api_token=local_r2.api_token)
    assert await roundtrip(cfg, "modes/token.txt") == local_r2.env["R2_ACCESS_KEY_ID"]


@pytest.mark.anyio
async def test_account_owned_token_falls_back_to_account_verify(local_r2: LocalR2) -> None:
    cf = local_r2.cf()
    groups = {g.name: g.id for g in cf.user.tokens.permission_groups.list()}
    tok = cf.accounts.tokens.create(
        account_id=local_r2.account_id,
        name=f"acct-{uuid.uuid4().hex[:6]}",
        policies=[
            {
                "effect": "allow",
                "resources": {bucket_resource(local_r2.account_id, local_r2.bucket): "*"},
                "permission_groups": [{"id": groups[ITEM_WRITE]}],
            }
        ],
    )
    cfg = r2_config(local_r2, api_token=str(tok.value))
    assert await roundtrip(cfg, "modes/account-owned.txt") == tok.id


@pytest.mark.anyio
async def test_disabled_token_error_names_its_status(local_r2: LocalR2) -> None:
    cf = local_r2.cf()
    groups = {g.name: g.id for g in cf.user.tokens.permission_groups.list()}
    tok = cf.user.tokens.create(
        name="to-disable",
        policies=[
            {
                "effect": "allow",
                "resources": {bucket_resource(local_r2.account_id, local_r2.bucket): "*"},
                "permission_groups": [{"id": groups[ITEM_WRITE]}],
            }
        ],
    )
    assert tok.id
    cf.user.tokens.update(tok.id, name="to-disable", policies=[], status="disabled")
    with pytest.raises(CredentialError, match="the API token is disabled"):
        await provider_from_settings(r2_config(local_r2, api_token=str(tok.value)))


@pytest.mark.anyio
async def test_temporary_mode(local_r2: LocalR2) -> None:
    cfg = r2_config(local_r2, mode="temporary", api_token=local_r2.api_token, ttl_seconds=900)
    akid = await roundtrip(cfg, "modes/temporary/x.txt", prefix="modes/temporary/")
    assert akid != local_r2.env["R2_ACCESS_KEY_ID"]
