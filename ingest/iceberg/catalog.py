"""Connecting to R2 Data Catalog (or any Iceberg REST catalog) with a bearer token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from ingest.config import ConfigError, IcebergConfig
from ingest.logs import register_secret

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

TOKEN_HELP = (
    "a Cloudflare API token with Workers R2 Data Catalog Write and R2 storage write on the bucket "
    "(R2_CATALOG_TOKEN)"
)


class CatalogUnreachable(ConfigError):
    """Down, overloaded or not answering (a connection error, 5xx, 429): worth waiting for, unlike a
    refusal."""


def connect(config: IcebergConfig, fallback_token: SecretStr | None = None) -> Catalog:
    """The catalog, reached once (GET /v1/config); a refusal is one line naming the setting."""
    from pyiceberg.catalog.rest import RestCatalog
    from pyiceberg.exceptions import (
        ForbiddenError,
        RESTError,
        ServerError,
        ServiceUnavailableError,
        TooManyRequestsError,
        UnauthorizedError,
    )

    token = config.token.get_secret_value() or (fallback_token.get_secret_value() if fallback_token else "")
    if not token:
        raise ConfigError(f"iceberg.token is empty: set it to {TOKEN_HELP}, or set CLOUDFLARE_API_TOKEN")
    register_secret(token)
    try:
        return RestCatalog("r2", uri=config.catalog_uri, warehouse=config.warehouse, token=token)
    except UnauthorizedError:
        raise ConfigError(f"iceberg.token: the catalog refused it (401); use {TOKEN_HELP}") from None
    except ForbiddenError as exc:
        raise ConfigError(f"iceberg.token: {_said(exc)}; use {TOKEN_HELP}") from None
    except (ServerError, ServiceUnavailableError, TooManyRequestsError) as exc:
        raise CatalogUnreachable(f"iceberg.catalog_uri {config.catalog_uri}: {_said(exc)}") from None
    except RESTError as exc:
        raise ConfigError(
            f"iceberg.warehouse {config.warehouse!r} at {config.catalog_uri}: {_said(exc)} (is R2 Data "
            "Catalog enabled on the bucket? `wrangler r2 bucket catalog enable <bucket>`)"
        ) from None
    except OSError as exc:
        raise CatalogUnreachable(f"iceberg.catalog_uri {config.catalog_uri}: not reachable ({exc})") from None


def _said(exc: Exception) -> str:
    text = str(exc).strip()
    return text.split(": ", 1)[-1] if ": " in text else text
