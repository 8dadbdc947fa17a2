"""The local R2's persistent state: account, admin keys, API tokens and live temporary credentials.

Kept in one JSON file (mode 0600) under the local directory so that `ingest local` restarts with the
same tokens, and temporary credentials that expired while it was down are revoked on the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def token_secret(value: str) -> str:
    """Cloudflare's rule, spelled here on purpose (never the product's helper, or a wrong rule would
    pass every test): an R2 token's S3 secret access key is the SHA-256 hex digest of its value."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def utc_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_token_value() -> str:
    """40 URL-safe characters, the shape of a Cloudflare API token value."""
    return secrets.token_urlsafe(30)[:40]


@dataclass
class TokenRecord:
    id: str
    name: str
    value_sha256: str
    policies: list[dict[str, Any]]
    issued_on: str
    account_id: str = ""  # set for account-owned tokens
    status: str = "active"  # active | disabled (expired is derived from expires_on)
    expires_on: str | None = None
    not_before: str | None = None


@dataclass
class TempCredential:
    access_key_id: str
    parent: str
    bucket: str
    permission: str
    expires_at: float
    kind: str  # "identity" (revoked by the emulator) or "sts" (expired by SeaweedFS itself)
    prefixes: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)


@dataclass
class LocalState:
    account_id: str
    admin_access_key: str
    admin_secret_key: str
    default_bucket: str
    root_token: str = ""
    default_token: str = ""
    sts_access_key: str = ""
    sts_secret_key: str = ""
    tokens: dict[str, TokenRecord] = field(default_factory=dict)
    temp: dict[str, TempCredential] = field(default_factory=dict)
    # Ports chosen on the first start (s3, master, volume, filer, admin, api): kept, so env files and
    # running workers stay right across restarts.
    ports: dict[str, int] = field(default_factory=dict)
    catalog_token: str = ""  # R2 Data Catalog (read and write) + R2 storage on the default bucket
    catalogs: dict[str, dict[str, Any]] = field(default_factory=dict)  # bucket → its R2 Data Catalog

    @classmethod
    def new(cls, default_bucket: str) -> LocalState:
        return cls(
            account_id=secrets.token_hex(16),
            admin_access_key="ADMIN" + secrets.token_hex(8).upper(),
            admin_secret_key=secrets.token_hex(32),
            default_bucket=default_bucket,
        )

    @classmethod
    def load(cls, path: Path) -> LocalState | None:
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        raw["tokens"] = {k: TokenRecord(**v) for k, v in raw.get("tokens", {}).items()}
        raw["temp"] = {k: TempCredential(**v) for k, v in raw.get("temp", {}).items()}
        return cls(**raw)

    def save(self, path: Path) -> None:
        """Atomic write: a crash never leaves a half-written state file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def token_by_value(self, value: str) -> TokenRecord | None:
        digest = token_secret(value)
        return next((t for t in self.tokens.values() if t.value_sha256 == digest), None)
