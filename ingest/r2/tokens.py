"""Least-privilege R2 API tokens, as the R2 docs build them: one bucket, item read or write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cloudflare import AsyncCloudflare

from ingest.r2.credentials import derive_secret

BUCKET_RESOURCE = "com.cloudflare.edge.r2.bucket."
ITEM_WRITE = "Workers R2 Storage Bucket Item Write"
ITEM_READ = "Workers R2 Storage Bucket Item Read"
QUEUES_WRITE = "Queues Write"  # pull and acknowledge (a queue source)


def bucket_resource(account_id: str, bucket: str, jurisdiction: str = "default") -> str:
    """`com.cloudflare.edge.r2.bucket.<ACCOUNT>_<JURISDICTION>_<BUCKET>`."""
    return f"{BUCKET_RESOURCE}{account_id}_{jurisdiction}_{bucket}"


@dataclass(frozen=True)
class CreatedToken:
    id: str
    value: str

    @property
    def access_key_id(self) -> str:
        return self.id

    @property
    def secret_access_key(self) -> str:
        return derive_secret(self.value)


async def create_bucket_token(
    cf: AsyncCloudflare,
    account_id: str,
    bucket: str,
    permission: Literal["read", "write"] = "write",
    jurisdiction: str = "default",
    account_owned: bool = False,
    name: str = "",
    expires_on: str | None = None,
    queues: bool = False,
) -> CreatedToken:
    """`queues`: the token may also pull from and acknowledge the account's queues (Queues Write)."""
    group_name = ITEM_WRITE if permission == "write" else ITEM_READ
    groups: Any
    if account_owned:
        groups = cf.accounts.tokens.permission_groups.list(account_id=account_id)
    else:
        groups = cf.user.tokens.permission_groups.list()
    ids: dict[str, str] = {}
    async for group in groups:
        if group.name in (group_name, QUEUES_WRITE) and group.id:
            ids[group.name] = group.id
    if group_name not in ids:
        raise LookupError(f"permission group {group_name!r} not found; is R2 enabled on the account?")
    if queues and QUEUES_WRITE not in ids:
        raise LookupError(f"permission group {QUEUES_WRITE!r} not found; is Queues enabled on the account?")
    policies: Any = [
        {
            "effect": "allow",
            "resources": {bucket_resource(account_id, bucket, jurisdiction): "*"},
            "permission_groups": [{"id": ids[group_name]}],
        }
    ]
    if queues:
        policies.append(
            {
                "effect": "allow",
                "resources": {f"com.cloudflare.api.account.{account_id}": "*"},
                "permission_groups": [{"id": ids[QUEUES_WRITE]}],
            }
        )
    name = name or f"r2-ingest {bucket} {permission}"
    extra: dict[str, Any] = {"expires_on": expires_on} if expires_on else {}
    out: Any
    if account_owned:
        out = await cf.accounts.tokens.create(account_id=account_id, name=name, policies=policies, **extra)
    else:
        out = await cf.user.tokens.create(name=name, policies=policies, **extra)
    if out is None or not out.id or not out.value:
        raise RuntimeError("the Cloudflare API created a token but returned no id or value")
    return CreatedToken(out.id, str(out.value))
