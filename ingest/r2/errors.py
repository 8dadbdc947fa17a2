"""The one place that reads an S3 error and says what it means: retry it, refresh the credentials, or
give up (permanent). Every other module asks here instead of digging in `ClientError.response`."""

from __future__ import annotations

import asyncio
import sys

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

# Codes R2 (and S3) answer for credentials that expired or that it no longer knows.
CLOCK_SKEW = "RequestTimeTooSkewed"  # this machine's clock is off: fixed by NTP, so retried meanwhile
TRANSIENT_CODES = {"SlowDown", "RequestTimeout", CLOCK_SKEW}
EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "ExpiredRequest", "TokenRefreshRequired"}
UNKNOWN_KEY_CODES = {"InvalidAccessKeyId", "InvalidToken", "InvalidClientTokenId"}


def status_of(exc: ClientError) -> tuple[int | None, str]:
    """(HTTP status, error code) of an S3 error."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status, code_of(exc)


def code_of(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def message_of(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def is_retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts, 5xx, 429 and throttling: the same request may succeed later."""
    if isinstance(exc, ClientError):
        status, code = status_of(exc)
        return status is None or status >= 500 or status == 429 or code in TRANSIENT_CODES
    network = (HTTPClientError, BotoConnectionError, OSError, asyncio.TimeoutError)
    aiohttp = sys.modules.get("aiohttp")  # loaded with the S3 client; none of its errors before that
    return isinstance(exc, network) or (aiohttp is not None and isinstance(exc, aiohttp.ClientError))


def is_conflict(exc: BaseException) -> bool:
    """412 on a conditional write: the key is taken."""
    return isinstance(exc, ClientError) and status_of(exc)[0] == 412


def is_credentials_rejection(exc: ClientError) -> bool:
    """The credentials expired or are unknown (as opposed to lacking a permission)."""
    status, code = status_of(exc)
    return code in EXPIRED_CODES or code in UNKNOWN_KEY_CODES or status == 401


def is_access_denied(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and code_of(exc) == "AccessDenied"


def describe(exc: BaseException) -> str:
    """One line for logs and readiness: status, code and message, or the exception's type and text."""
    if isinstance(exc, ClientError):
        status, code = status_of(exc)
        return f"{status} {code}: {message_of(exc)}".strip()
    if isinstance(exc, BaseExceptionGroup):  # a task group's: say what went wrong inside it
        return "; ".join(describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"
