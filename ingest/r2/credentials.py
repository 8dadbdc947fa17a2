"""S3 credentials for R2: given keys, keys derived from an API token, or refreshed temporary credentials.

A provider always has a `current()` credential. Temporary credentials are refreshed in the background
at `refresh_fraction` of their TTL (with jitter, so replicas spread out), and on demand when R2 rejects
them; either way concurrent callers share one Cloudflare API call (single-flight, by generation).
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import SecretStr

from ingest import metrics
from ingest.config import AuthConfig, R2Config
from ingest.logs import get_logger, register_secret
from ingest.r2.api import cloudflare_client

if TYPE_CHECKING:  # the SDK is imported by the modes that call the API, not for R2 keys
    import cloudflare
    from cloudflare import AsyncCloudflare

log = get_logger("ingest.r2.credentials")
DERIVED_SECRET = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_RATE_LIMIT_BLOCK = 300.0  # a Cloudflare 429 blocks all calls for 5 minutes


class CredentialError(Exception):
    """Credentials cannot be obtained; the message says why and what to change."""


def derive_secret(token_value: str) -> str:
    """R2's Secret Access Key for an API token: the lowercase hex SHA-256 of the token value."""
    return hashlib.sha256(token_value.encode()).hexdigest()


def looks_derived(secret: str) -> bool:
    return bool(DERIVED_SECRET.match(secret))


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: SecretStr
    session_token: SecretStr | None = None
    expires_at: float | None = None  # time.monotonic() deadline; None = does not expire
    generation: int = 0

    def remaining(self) -> float:
        return float("inf") if self.expires_at is None else self.expires_at - time.monotonic()


class CredentialProvider:
    """Static credentials; the base of the refreshing provider."""

    refreshable = False

    def __init__(self, creds: S3Credentials | None = None) -> None:
        self._current = creds

    def current(self) -> S3Credentials:
        if self._current is None:
            raise CredentialError("credentials requested before the provider was started")
        return self._current

    def describe_scope(self) -> str:
        return ""

    async def refresh(self, stale: S3Credentials, reason: str) -> S3Credentials:
        return self.current()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CredentialProvider]:
        """The provider, ready, for the duration of the block (background work lives exactly as long)."""
        yield self

    # `async with provider:` is `async with provider.running():`.
    async def __aenter__(self) -> CredentialProvider:
        self._stack = AsyncExitStack()
        return await self._stack.enter_async_context(self.running())

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._stack.__aexit__(*exc)


async def verify_token(cf: AsyncCloudflare, account_id: str) -> tuple[str, str]:
    """(token id, status) through the Verify Token API: user tokens first, then account-owned ones."""
    import cloudflare

    result: Any
    try:
        result = await cf.user.tokens.verify()
    except cloudflare.APIStatusError as exc:
        if exc.status_code not in (400, 401, 403, 404) or not account_id:
            raise CredentialError(f"verifying the API token failed: HTTP {exc.status_code}") from None
        try:
            result = await cf.accounts.tokens.verify(account_id=account_id)
        except cloudflare.APIStatusError as exc2:
            raise CredentialError(
                f"the API token is not valid (Cloudflare answered HTTP {exc2.status_code} for user and "
                "account-owned tokens); check R2_API_TOKEN"
            ) from None
    except cloudflare.APIConnectionError as exc:
        raise CredentialError(f"cannot reach the Cloudflare API to verify the token: {exc}") from None
    if result is None or not result.id:
        raise CredentialError("the Verify Token API returned no token id")
    return result.id, str(result.status)


def require_active(status: str) -> None:
    if status != "active":
        raise CredentialError(
            f"the API token is {status}; create a new token or re-enable it in the Cloudflare dashboard"
        )


@dataclass
class TemporaryCredentials(CredentialProvider):
    """Mints R2 temporary credentials through the Cloudflare API and keeps them fresh."""

    cf: AsyncCloudflare
    account_id: str
    bucket: str
    parent_access_key_id: str
    permission: str = "object-read-write"
    ttl_seconds: int = 3600
    prefixes: list[str] = field(default_factory=list)
    refresh_fraction: float = 0.5
    jitter: float = 0.1
    api_calls: int = 0
    refreshes: int = 0
    refreshable = True

    def __post_init__(self) -> None:
        super().__init__(None)
        self._lock = anyio.Lock()
        self._blocked_until = 0.0  # after a 429: no API calls before this (monotonic)
        self._retry_at = 0.0  # after a failed proactive refresh: try again at this time
        self._warned_window = -1.0

    def describe_scope(self) -> str:
        where = f"prefixes {', '.join(self.prefixes)}" if self.prefixes else "the whole bucket"
        return f"temporary credentials are scoped to bucket {self.bucket}, {where} ({self.permission})"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CredentialProvider]:
        """Mint the first credentials, refresh them in the background while the block runs; the API
        client is closed however the block ends (shielded: Ctrl-C included)."""
        try:
            await self.refresh(None, "initial")
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._refresh_loop)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.cf.close()

    def _next_refresh_in(self) -> float:
        now = time.monotonic()
        if (hold := max(self._blocked_until, self._retry_at)) > now:
            return hold - now
        creds = self.current()
        elapsed = self.ttl_seconds - creds.remaining()
        target = self.ttl_seconds * self.refresh_fraction * random.uniform(1 - self.jitter, 1 + self.jitter)
        return max(0.05, target - elapsed)

    async def _refresh_loop(self) -> None:
        while True:
            await anyio.sleep(self._next_refresh_in())
            stale = self.current()
            try:
                await self.refresh(stale, "proactive")
            except Exception as exc:
                # Keep using what we have; try again soon, well before it expires.
                if time.monotonic() >= self._blocked_until:
                    log.warning("proactive credential refresh failed", error=str(exc))
                self._retry_at = time.monotonic() + min(5.0, max(0.2, stale.remaining() / 4))

    async def refresh(self, stale: S3Credentials | None, reason: str) -> S3Credentials:
        """Mint new credentials unless someone already replaced `stale` (single-flight)."""
        async with self._lock:
            current = self._current
            if current is not None and (stale is None or current.generation != stale.generation):
                return current
            wait = self._blocked_until - time.monotonic()
            if wait > 0:
                if current is not None and current.remaining() > 0 and reason == "proactive":
                    return current  # rate limited: keep the still-valid credentials
                await anyio.sleep(wait)
            return await self._mint(reason)

    async def _mint(self, reason: str) -> S3Credentials:
        import cloudflare

        self.api_calls += 1
        started = time.monotonic()
        try:
            out = await self.cf.r2.temporary_credentials.create(
                account_id=self.account_id,
                bucket=self.bucket,
                parent_access_key_id=self.parent_access_key_id,
                permission=self.permission,  # type: ignore[arg-type]
                ttl_seconds=self.ttl_seconds,
                prefixes=self.prefixes if self.prefixes else cloudflare.omit,
            )
        except cloudflare.RateLimitError as exc:
            self._note_rate_limit(exc)
            raise CredentialError(
                "the Cloudflare API is rate limiting temporary-credential requests"
            ) from None
        except cloudflare.APIStatusError as exc:
            metrics.CREDENTIAL_REFRESH_FAILURES.inc()
            detail = (
                "; ".join(e.get("message", "") for e in (exc.body or {}).get("errors", []))
                if isinstance(exc.body, dict)
                else ""
            )
            raise CredentialError(
                f"minting temporary credentials failed: HTTP {exc.status_code} {detail}".strip()
            ) from None
        if not out or not out.access_key_id or not out.secret_access_key:
            raise CredentialError("the temporary-credentials API returned no credentials")
        register_secret(out.secret_access_key, out.session_token)
        generation = self._current.generation + 1 if self._current else 1
        self._current = S3Credentials(
            access_key_id=out.access_key_id,
            secret_access_key=SecretStr(out.secret_access_key),
            session_token=SecretStr(out.session_token) if out.session_token else None,
            expires_at=started + self.ttl_seconds,  # the API returns no expiry: request time + ttl
            generation=generation,
        )
        self.refreshes += 1
        metrics.CREDENTIAL_REFRESHES.labels(reason=reason).inc()
        metrics.CREDENTIAL_EXPIRY.set(time.time() + self.ttl_seconds - (time.monotonic() - started))
        log.info("temporary credentials refreshed", reason=reason, access_key_id=out.access_key_id)
        return self._current

    def _note_rate_limit(self, exc: cloudflare.RateLimitError) -> None:
        metrics.CLOUDFLARE_RATE_LIMITED.inc()
        try:
            block = float(exc.response.headers.get("retry-after", DEFAULT_RATE_LIMIT_BLOCK))
        except ValueError:
            block = DEFAULT_RATE_LIMIT_BLOCK
        now = time.monotonic()
        self._blocked_until = now + block
        if now >= self._warned_window:  # one warning per block window
            self._warned_window = self._blocked_until
            remaining = self._current.remaining() if self._current else 0.0
            log.warning(
                "cloudflare API rate limited; keeping current credentials",
                retry_after=block,
                credentials_valid_for=round(remaining, 1),
            )


def infer_mode(auth: AuthConfig) -> str:
    if auth.mode:
        return auth.mode
    if auth.access_key_id or auth.secret_access_key.get_secret_value():
        return "keys"
    if auth.api_token.get_secret_value():
        return "token"
    raise CredentialError(
        "r2.auth: no credentials; set R2_ACCESS_KEY_ID + R2_SECRET_ACCESS_KEY, or R2_API_TOKEN "
        '(with r2.auth.mode = "temporary" for short-lived credentials)'
    )


async def provider_from_settings(r2: R2Config, prefix: str = "") -> CredentialProvider:
    """The provider for the configured mode (token ids resolved); enter it with `async with`."""
    auth = r2.auth
    mode = infer_mode(auth)
    if mode == "keys":
        secret = auth.secret_access_key.get_secret_value()
        if not auth.access_key_id or not secret:
            missing = "access_key_id (R2_ACCESS_KEY_ID)" if not auth.access_key_id else "secret_access_key"
            raise CredentialError(f"r2.auth.{missing}: required in keys mode")
        return CredentialProvider(S3Credentials(auth.access_key_id, SecretStr(secret)))
    value = auth.api_token.get_secret_value()
    if not value:
        raise CredentialError(f"r2.auth.api_token: required in {mode} mode (R2_API_TOKEN)")
    cf = cloudflare_client(value, r2.api_base_url)
    try:
        token_id = auth.token_id
        if not token_id:
            token_id, status = await verify_token(cf, r2.account_id)
            require_active(status)
        if mode == "token":
            await cf.close()
            secret = derive_secret(value)
            register_secret(secret)
            return CredentialProvider(S3Credentials(token_id, SecretStr(secret)))
        if not r2.account_id or not r2.bucket:
            raise CredentialError("r2.account_id and r2.bucket: both required in temporary mode")
    except BaseException:
        await cf.close()
        raise
    return TemporaryCredentials(
        cf=cf,
        account_id=r2.account_id,
        bucket=r2.bucket,
        parent_access_key_id=token_id,
        permission=auth.permission,
        ttl_seconds=auth.ttl_seconds,
        prefixes=[prefix] if prefix else [],
        refresh_fraction=auth.refresh_fraction,
    )
