"""With no R2 configured, commands run on the local R2, started for their duration.

Its own module (not the worker's): `ingest cors …` and `ingest presign` need it without importing the
data path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rich.console import Console

from ingest import logs
from ingest.config import Settings


@asynccontextmanager
async def r2_settings(settings: Settings, say: Console) -> AsyncIterator[Settings]:
    """The settings to run with; with no R2 configured, the local R2 is started for the duration."""
    if settings.r2.configured:
        yield settings
        return
    from ingest.local.server import DEFAULT_DIR, LocalR2

    bucket = settings.r2.bucket or "ingest"
    async with LocalR2(DEFAULT_DIR, bucket).running() as info:
        say.print(
            f"no R2 configured: using the local R2 at {info.endpoint_url} (bucket {info.bucket}, "
            f"data in {DEFAULT_DIR}); set R2_ACCOUNT_ID and credentials to use Cloudflare R2",
            markup=False,
            highlight=False,
        )
        local = info.settings("keys").r2
        logs.register_secret(local.auth.secret_access_key, local.auth.api_token, local.admin_api_token)
        yield settings.model_copy(update={"r2": local})
