"""One S3 client per process whose credentials follow the provider, with reactive refresh.

How the credentials follow the provider: see `ingest.r2.session`, imported when the client is built.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.to_thread
from botocore.exceptions import ClientError

from ingest.logs import get_logger
from ingest.r2.credentials import CredentialProvider, S3Credentials
from ingest.r2.endpoint import client_config
from ingest.r2.errors import code_of, is_access_denied, is_credentials_rejection

log = get_logger("ingest.r2.client")


class R2AccessDenied(Exception):
    """R2 refused an operation for lack of permission; the message names the scope."""


def _session(provider: CredentialProvider) -> Any:
    import ingest.r2.body  # noqa: F401  (aiohttp's payload for Body, registered in this thread)
    from ingest.r2.session import s3_session

    return s3_session(provider)


def is_refresh_signal(exc: ClientError, used: S3Credentials) -> bool:
    if is_credentials_rejection(exc):
        return True
    # AccessDenied is a scope problem, unless the credentials are (about to be) expired.
    return is_access_denied(exc) and used.expires_at is not None and used.remaining() < 5.0


class R2Client:
    """`async with R2Client(...) as r2: await r2.call("put_object", Bucket=..., ...)`."""

    def __init__(
        self, endpoint_url: str, provider: CredentialProvider, max_connections: int = 10, lazy: bool = False
    ) -> None:
        self.endpoint_url = endpoint_url
        self.provider = provider
        self._max_connections = max_connections
        self._lazy = lazy
        self._stack = AsyncExitStack()
        self._opening: anyio.Lock | None = None
        self.s3: Any = None
        self.reactive_refreshes = 0

    async def __aenter__(self) -> R2Client:
        """Builds the client now, or with `lazy` on first use or `warm()`: `ingest run` reads its
        first files meanwhile instead of waiting for the S3 client's imports."""
        self._opening = anyio.Lock()
        if not self._lazy:
            await self.warm()
        return self

    async def warm(self) -> None:
        """Build the S3 client if it is not built yet; the imports and model files in a thread."""
        assert self._opening is not None, "use R2Client in `async with`"
        async with self._opening:
            if self.s3 is not None:
                return
            session = await anyio.to_thread.run_sync(_session, self.provider)
            s3 = await self._stack.enter_async_context(
                session.create_client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    config=client_config(max_pool_connections=self._max_connections),
                    # No TLS to verify on a plain-HTTP endpoint (the local R2): no CA bundle is
                    # loaded on the event loop at the first request (50-80 ms, measured).
                    verify=not self.endpoint_url.startswith("http://"),
                )
            )
            from ingest.r2.session import keep_bodies_as_bytes
            from ingest.r2.signing import sign_with_known_digests

            keep_bodies_as_bytes(s3)
            sign_with_known_digests(s3)
            self.s3 = s3
            log.debug("s3 client built", endpoint=self.endpoint_url)

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def built(self) -> Any:
        """The S3 client, built first if it is not yet (a lazy client's first use may come before
        `warm` is done: a presigned upload asked for the moment the server listens)."""
        if self.s3 is None:
            await self.warm()
        return self.s3

    async def pages(
        self, bucket: str, prefix: str, delimiter: str = ""
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The objects under `prefix` (with a delimiter: only those not below a further one), one
        listing page at a time; each as the listing gives it (Key, Size, LastModified, ETag)."""
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if delimiter:
            params["Delimiter"] = delimiter
        while True:
            page = await self.call("list_objects_v2", **params)
            yield page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    async def list_all(self, bucket: str, prefix: str, delimiter: str = "") -> list[dict[str, Any]]:
        """Every object under `prefix`, all pages (see `pages`)."""
        return [o async for page in self.pages(bucket, prefix, delimiter) for o in page]

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Run one S3 operation; on a credentials rejection refresh once (shared) and retry once."""
        await self.built()
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
