"""One S3 client per process whose credentials follow the provider, with reactive refresh.

The aiobotocore signer asks the session's credentials for a frozen copy on every request, so a
credentials object that reads `provider.current()` makes every refresh visible immediately, without
recreating clients or refreshing on the request path.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from aiobotocore.credentials import AioCredentials
from aiobotocore.session import AioSession
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError
from botocore.handlers import convert_body_to_file_like_object

from ingest.logs import get_logger
from ingest.r2.credentials import CredentialProvider, S3Credentials
from ingest.r2.endpoint import client_config
from ingest.r2.errors import code_of, is_access_denied, is_credentials_rejection

log = get_logger("ingest.r2.client")

# R2 (and S3) answers that mean "these credentials are no longer good", not "you may not do this".


class R2AccessDenied(Exception):
    """R2 refused an operation for lack of permission; the message names the scope."""


class _LiveCredentials(AioCredentials):  # type: ignore[misc]
    def __init__(self, provider: CredentialProvider) -> None:
        super().__init__("placeholder", "placeholder")
        self._provider = provider

    async def get_frozen_credentials(self) -> ReadOnlyCredentials:
        c = self._provider.current()
        token = c.session_token.get_secret_value() if c.session_token else None
        return ReadOnlyCredentials(c.access_key_id, c.secret_access_key.get_secret_value(), token, None)


class _Resolver:
    def __init__(self, creds: AioCredentials) -> None:
        self._creds = creds

    async def load_credentials(self) -> AioCredentials:
        return self._creds


def is_refresh_signal(exc: ClientError, used: S3Credentials) -> bool:
    if is_credentials_rejection(exc):
        return True
    # AccessDenied is a scope problem, unless the credentials are (about to be) expired.
    return is_access_denied(exc) and used.expires_at is not None and used.remaining() < 5.0


class R2Client:
    """`async with R2Client(...) as r2: await r2.call("put_object", Bucket=..., ...)`."""

    def __init__(self, endpoint_url: str, provider: CredentialProvider, max_connections: int = 10) -> None:
        self.endpoint_url = endpoint_url
        self.provider = provider
        self._max_connections = max_connections
        self._stack = AsyncExitStack()
        self.s3: Any = None
        self.reactive_refreshes = 0

    async def __aenter__(self) -> R2Client:
        session = AioSession()
        session.register_component("credential_provider", _Resolver(_LiveCredentials(self.provider)))
        self.s3 = await self._stack.enter_async_context(
            aioboto3.Session(botocore_session=session).client(
                "s3",
                endpoint_url=self.endpoint_url,
                config=client_config(max_pool_connections=self._max_connections),
            )
        )
        # botocore wraps a bytes body in BytesIO, which aiohttp then sends 64 KiB per loop turn: with
        # parsing threads holding the GIL, each turn waits, and a 27 MB PUT took seconds (measured).
        # Kept as bytes, it is handed to the socket in one write and hashed in one call.
        for operation in ("PutObject", "UploadPart"):
            self.s3.meta.events.unregister(
                f"before-parameter-build.s3.{operation}", convert_body_to_file_like_object
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Run one S3 operation; on a credentials rejection refresh once (shared) and retry once."""
        used = self.provider.current()
        method = getattr(self.s3, operation)
        try:
            result: dict[str, Any] = await method(**params)
            return result
        except ClientError as exc:
            if self.provider.refreshable and is_refresh_signal(exc, used):
                code = code_of(exc)
                started = time.monotonic()
                await self.provider.refresh(used, reason=f"rejected:{code}")
                self.reactive_refreshes += 1
                log.info(
                    "credentials rejected; refreshed and retrying",
                    operation=operation,
                    code=code,
                    waited=round(time.monotonic() - started, 3),
                )
                try:
                    result = await method(**params)
                    return result
                except ClientError as exc2:
                    raise self._explain(exc2, operation, params) from exc2
            raise self._explain(exc, operation, params) from exc

    def _explain(self, exc: ClientError, operation: str, params: dict[str, Any]) -> Exception:
        if not is_access_denied(exc):
            return exc
        target = f"s3://{params.get('Bucket', '?')}/{params.get('Key', params.get('Prefix', ''))}"
        scope = self.provider.describe_scope()
        return R2AccessDenied(f"R2 denied {operation} on {target}" + (f": {scope}" if scope else ""))
