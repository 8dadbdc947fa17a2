from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError, ReadTimeoutError

from ingest.r2.errors import describe, is_conflict, is_retryable


def _error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (_error(500, "InternalError"), True),
        (_error(503, "503"), True),
        (_error(429, "TooManyRequests"), True),
        (_error(400, "SlowDown"), True),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ReadTimeoutError(endpoint_url="http://x"), True),
        (ConnectionResetError(), True),
        (_error(403, "AccessDenied"), False),
        (_error(404, "NoSuchBucket"), False),
        (_error(400, "InvalidArgument"), False),
        (_error(412, "PreconditionFailed"), False),
        (ParamValidationError(report="bad"), False),
    ],
)
def test_what_is_retried(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc) is retry


def test_conflict_and_description() -> None:
    assert is_conflict(_error(412, "PreconditionFailed"))
    assert not is_conflict(_error(409, "Conflict"))
    assert describe(_error(403, "AccessDenied")) == "403 AccessDenied: m"
    group = ExceptionGroup(
        "unhandled errors in a TaskGroup", [_error(404, "NoSuchBucket"), OSError("refused")]
    )
    assert describe(group) == "404 NoSuchBucket: m; OSError: refused"  # what went wrong inside, not the group
