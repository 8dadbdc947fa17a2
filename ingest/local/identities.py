"""Real S3 identities on SeaweedFS, for tokens and temporary credentials.

SeaweedFS keeps each identity as `/etc/iam/identities/<name>.json` in its filer and its S3 gateway
reloads them live, so an identity with a *chosen* access key and secret (token id, sha256(value)) is
one filer write away, and revoking it is one delete. Changes reach the gateway asynchronously
(~0.3 s), so every change waits until the gateway really accepts or rejects the key.
STS `GetFederationToken` (SeaweedFS' own expiry and session tokens) serves long-lived temporaries.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import aioboto3
import anyio
import httpx
from botocore.exceptions import ClientError

from ingest.r2.endpoint import client_config

IDENTITY_DIR = "/etc/iam/identities"
STS_PARENT_USER = "r2-emulator-sts"
_PROPAGATION_TIMEOUT = 15.0


class IdentityStore:
    def __init__(self, s3_url: str, filer_url: str, admin_key: str, admin_secret: str) -> None:
        self.s3_url = s3_url
        self.filer_url = filer_url
        self._admin = (admin_key, admin_secret)
        self._http = httpx.AsyncClient(timeout=10.0)
        self._session = aioboto3.Session()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _client(self, service: str, key: str, secret: str, token: str | None = None) -> Any:
        return self._session.client(
            service,
            endpoint_url=self.s3_url,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=token,
            region_name="us-east-1" if service in ("iam", "sts") else "auto",
            config=client_config(),
        )

    def admin_client(self, service: str = "s3") -> Any:
        return self._client(service, *self._admin)

    async def put(self, name: str, access_key: str, secret_key: str, actions: list[str]) -> None:
        doc = {
            "name": name,
            "credentials": [{"access_key": access_key, "secret_key": secret_key, "status": "Active"}],
            "actions": actions,
        }
        r = await self._http.post(
            f"{self.filer_url}{IDENTITY_DIR}/{name}.json",
            files={"file": (f"{name}.json", json.dumps(doc), "application/json")},
        )
        r.raise_for_status()
        await self._wait(access_key, secret_key, live=True)

    async def delete(self, name: str, access_key: str, secret_key: str = "x") -> None:
        r = await self._http.delete(f"{self.filer_url}{IDENTITY_DIR}/{name}.json")
        if r.status_code not in (200, 202, 204, 404):
            r.raise_for_status()
        await self._wait(access_key, secret_key, live=False)

    async def _wait(self, access_key: str, secret_key: str, live: bool) -> None:
        """Poll the gateway until it knows (or has forgotten) the access key."""
        with anyio.move_on_after(_PROPAGATION_TIMEOUT):
            async with self._client("s3", access_key, secret_key) as s3:
                while True:
                    known = True
                    try:
                        await s3.list_buckets()
                    except ClientError as exc:
                        known = exc.response["Error"]["Code"] != "InvalidAccessKeyId"
                    if known == live:
                        return
                    await anyio.sleep(0.05)
        raise RuntimeError(f"SeaweedFS did not {'accept' if live else 'revoke'} {access_key} in time")

    async def ensure_sts_parent(self) -> tuple[str, str]:
        """An IAM user allowed to mint federation tokens; session policies narrow each token."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]},
                {"Effect": "Allow", "Action": ["sts:GetFederationToken"], "Resource": ["*"]},
            ],
        }
        async with self.admin_client("iam") as iam:
            try:
                await iam.create_user(UserName=STS_PARENT_USER)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "EntityAlreadyExists":
                    raise
            key = (await iam.create_access_key(UserName=STS_PARENT_USER))["AccessKey"]
            await iam.put_user_policy(
                UserName=STS_PARENT_USER, PolicyName="federation", PolicyDocument=json.dumps(policy)
            )
        await self._wait(key["AccessKeyId"], key["SecretAccessKey"], live=True)
        return key["AccessKeyId"], key["SecretAccessKey"]

    async def federation_token(
        self, parent: tuple[str, str], name: str, seconds: int, policy: dict[str, Any]
    ) -> tuple[dict[str, str], datetime]:
        async with self._client("sts", *parent) as sts:
            out = await sts.get_federation_token(
                Name=name[:32], DurationSeconds=seconds, Policy=json.dumps(policy)
            )
        c = out["Credentials"]
        creds = {
            "accessKeyId": c["AccessKeyId"],
            "secretAccessKey": c["SecretAccessKey"],
            "sessionToken": c["SessionToken"],
        }
        return creds, c["Expiration"]
