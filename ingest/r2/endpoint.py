"""Where R2's S3 API lives for an account/jurisdiction, and how S3 clients must be configured for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # botocore is imported by the clients that use it (not by `ingest cors check`)
    from botocore.config import Config

REGION = "auto"
_JURISDICTION_HOSTS = {"default": "", "eu": "eu.", "fedramp": "fedramp.", "us": "us."}


def endpoint_url(account_id: str, jurisdiction: str = "default", override: str = "") -> str:
    """`https://<account>[.<jurisdiction>].r2.cloudflarestorage.com`, unless `override` is set."""
    if override:
        return override.rstrip("/")
    if not account_id:
        raise ValueError("r2.account_id is required when r2.endpoint_url is not set")
    try:
        infix = _JURISDICTION_HOSTS[jurisdiction]
    except KeyError:
        raise ValueError(f"unknown jurisdiction {jurisdiction!r}") from None
    return f"https://{account_id}.{infix}r2.cloudflarestorage.com"


def client_config(max_pool_connections: int = 10, **extra: Any) -> Config:
    """botocore Config for R2.

    R2 rejects some of the default integrity-checksum headers of recent SDKs, so checksums are only
    computed/validated when an operation requires them. Retries are ours (tenacity), not botocore's.
    """
    from botocore.config import Config

    return Config(
        region_name=REGION,
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max_pool_connections,
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"},
        **extra,
    )
