"""The official Cloudflare SDK, pointed at `r2.api_base_url` when set (e.g. the local emulator)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a client is made: runs with R2 keys never load the SDK
    from cloudflare import AsyncCloudflare

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"


def cloudflare_client(api_token: str, base_url: str = "", timeout: float = 30.0) -> AsyncCloudflare:
    from cloudflare import AsyncCloudflare

    # SDK retries are off: callers decide (429 must not be hammered; it blocks for 5 minutes).
    return AsyncCloudflare(
        api_token=api_token, base_url=base_url or DEFAULT_BASE_URL, max_retries=0, timeout=timeout
    )
