"""Cloudflare API-token access policies → what the token may do → SeaweedFS identity actions.

Only the R2-related part of Cloudflare's policy language is modelled: bucket-scoped item permissions
(`com.cloudflare.edge.r2.bucket.<ACCOUNT>_<JURISDICTION>_<BUCKET>`), account-wide R2 storage
permissions (`com.cloudflare.api.account.<ACCOUNT>`), and the right to manage API tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Literal strings from Cloudflare's API token documentation (never imported from the product).
BUCKET_RESOURCE = "com.cloudflare.edge.r2.bucket."  # + <ACCOUNT_ID>_<JURISDICTION>_<BUCKET>
ITEM_WRITE = "Workers R2 Storage Bucket Item Write"
ITEM_READ = "Workers R2 Storage Bucket Item Read"
ACCOUNT_RESOURCE = "com.cloudflare.api.account"
USER_RESOURCE = "com.cloudflare.api.user"

STORAGE_WRITE = "Workers R2 Storage Write"
STORAGE_READ = "Workers R2 Storage Read"
CATALOG_WRITE = "Workers R2 Data Catalog Write"
CATALOG_READ = "Workers R2 Data Catalog Read"
QUEUES_WRITE = "Queues Write"
QUEUES_READ = "Queues Read"
TOKENS_WRITE = "API Tokens Write"
TOKENS_READ = "API Tokens Read"

PERMISSION_GROUPS: list[dict[str, Any]] = [
    {"id": "2efd5506f9c8494dacb1fa10a3e7d5b6", "name": ITEM_WRITE, "scopes": [BUCKET_RESOURCE.rstrip(".")]},
    {"id": "6a018a9f2fc74eb6b293b0c548f38b39", "name": ITEM_READ, "scopes": [BUCKET_RESOURCE.rstrip(".")]},
    {"id": "bf7481a1826f439697cb59a20b22293e", "name": STORAGE_WRITE, "scopes": [ACCOUNT_RESOURCE]},
    {"id": "b4992e1108244f5d8bfbd5744320c2e1", "name": STORAGE_READ, "scopes": [ACCOUNT_RESOURCE]},
    {"id": "d229766a2f7f4d299f20eaa8c9b1fde9", "name": CATALOG_WRITE, "scopes": [ACCOUNT_RESOURCE]},
    {"id": "f45430d92e2b4a6cb9f94f2594c141b8", "name": CATALOG_READ, "scopes": [ACCOUNT_RESOURCE]},
    {"id": "366f57075ffc42689627bcf8242a1b6d", "name": QUEUES_WRITE, "scopes": [ACCOUNT_RESOURCE]},
    {"id": "84a7755d54c646ca87cd50682a34bf7c", "name": QUEUES_READ, "scopes": [ACCOUNT_RESOURCE]},
    {"id": "686d18d5ac6c441c867cbf6771e58a0a", "name": TOKENS_WRITE, "scopes": [USER_RESOURCE]},
    {"id": "0cc3a61731504c89b99ec1be78b77aa0", "name": TOKENS_READ, "scopes": [USER_RESOURCE]},
]
_GROUP_NAMES = {g["id"]: g["name"] for g in PERMISSION_GROUPS}
TABLE_BUCKET_SUFFIX = "-catalog"  # a bucket's catalog tables live in <bucket>-catalog on SeaweedFS


def bucket_resource(account_id: str, bucket: str, jurisdiction: str = "default") -> str:
    return f"{BUCKET_RESOURCE}{account_id}_{jurisdiction}_{bucket}"


PERMISSIONS = ("admin-read-write", "admin-read-only", "object-read-write", "object-read-only")


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Grant:
    bucket: str  # "*" = every bucket of the account
    write: bool
    admin: bool = False


@dataclass
class Capabilities:
    grants: list[Grant]
    manage_tokens: bool = False
    catalog: str = ""  # "write", "read" or "" (R2 Data Catalog)
    queues: str = ""  # "write", "read" or "" (Cloudflare Queues)

    def allows(self, bucket: str, write: bool) -> bool:
        return any(g.bucket in ("*", bucket) and (g.write or not write) for g in self.grants)

    def catalog_allows(self, write: bool) -> bool:
        return self.catalog == "write" or (self.catalog == "read" and not write)

    def queues_allow(self, write: bool) -> bool:
        return self.queues == "write" or (self.queues == "read" and not write)

    def is_account_admin(self, write: bool) -> bool:
        return any(g.bucket == "*" and g.admin and (g.write or not write) for g in self.grants)


def capabilities(policies: list[dict[str, Any]], account_id: str) -> Capabilities:
    """Validate policies as the API would at creation, and say what they grant."""
    caps = Capabilities(grants=[])
    for i, policy in enumerate(policies):
        if policy.get("effect", "allow") != "allow":
            raise PolicyError(f"policies[{i}].effect: only 'allow' is supported by the local emulator")
        groups = []
        for g in policy.get("permission_groups") or []:
            name = _GROUP_NAMES.get(g.get("id", "")) or g.get("name")
            if name not in _GROUP_NAMES.values():
                raise PolicyError(f"policies[{i}].permission_groups: unknown permission group {g!r}")
            groups.append(name)
        resources = policy.get("resources") or {}
        if not resources:
            raise PolicyError(f"policies[{i}].resources: must name at least one resource")
        for resource in resources:
            caps.grants.extend(_grants_for(i, resource, groups, account_id))
            if resource.startswith(ACCOUNT_RESOURCE) and CATALOG_WRITE in groups:
                caps.catalog = "write"
            elif resource.startswith(ACCOUNT_RESOURCE) and CATALOG_READ in groups and not caps.catalog:
                caps.catalog = "read"
            if resource.startswith(ACCOUNT_RESOURCE) and QUEUES_WRITE in groups:
                caps.queues = "write"
            elif resource.startswith(ACCOUNT_RESOURCE) and QUEUES_READ in groups and not caps.queues:
                caps.queues = "read"
            if resource.startswith(USER_RESOURCE) and TOKENS_WRITE in groups:
                caps.manage_tokens = True
    return caps


def _grants_for(i: int, resource: str, groups: list[str], account_id: str) -> list[Grant]:
    if resource.startswith(BUCKET_RESOURCE):
        acct, _, rest = resource.removeprefix(BUCKET_RESOURCE).partition("_")
        jurisdiction, _, bucket = rest.partition("_")
        if acct != account_id or not bucket or not jurisdiction:
            raise PolicyError(
                f"policies[{i}].resources: {resource!r} must be "
                f"{BUCKET_RESOURCE}{account_id}_<jurisdiction>_<bucket>"
            )
        if ITEM_WRITE in groups:
            return [Grant(bucket, write=True)]
        if ITEM_READ in groups:
            return [Grant(bucket, write=False)]
        return []
    if resource in (f"{ACCOUNT_RESOURCE}.{account_id}", f"{ACCOUNT_RESOURCE}.*", ACCOUNT_RESOURCE):
        if STORAGE_WRITE in groups:
            return [Grant("*", write=True, admin=True)]
        if STORAGE_READ in groups:
            return [Grant("*", write=False, admin=True)]
        return []
    if resource.startswith(USER_RESOURCE):
        return []
    raise PolicyError(f"policies[{i}].resources: unknown resource {resource!r}")


def seaweed_actions(grants: list[Grant]) -> list[str]:
    """SeaweedFS identity actions for a token's S3 keys (never `Admin`: that would allow IAM writes)."""
    actions: list[str] = []
    for g in grants:
        verbs = ["Read", "List"] + (["Write", "Tagging"] if g.write else [])
        # A bucket's catalog lives in its table bucket (see local/catalog.py): the same rights there.
        scopes = [g.bucket, f"{g.bucket}{TABLE_BUCKET_SUFFIX}"]
        actions += verbs if g.bucket == "*" else [f"{v}:{b}" for v in verbs for b in scopes]
    return sorted(set(actions))


def temp_actions(bucket: str, permission: str, prefixes: list[str], objects: list[str]) -> list[str]:
    """SeaweedFS actions for temporary credentials: bucket, optionally narrowed to prefixes/objects."""
    verbs = ["Read", "List"] + (["Write"] if permission.endswith("read-write") else [])
    scopes = [f"{bucket}/{p}*" for p in prefixes] + [f"{bucket}/{o}" for o in objects] or [bucket]
    return sorted({f"{v}:{s}" for v in verbs for s in scopes})


def session_policy(bucket: str, permission: str, prefixes: list[str], objects: list[str]) -> dict[str, Any]:
    """The same scope as an IAM session policy, for STS-minted credentials."""
    actions = ["s3:GetObject", "s3:ListBucket"]
    if permission.endswith("read-write"):
        actions += [
            "s3:PutObject",
            "s3:DeleteObject",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
        ]
    resources = [f"arn:aws:s3:::{bucket}/{p}*" for p in prefixes] + [
        f"arn:aws:s3:::{bucket}/{o}" for o in objects
    ] or [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    statements: list[dict[str, Any]] = [{"Effect": "Allow", "Action": actions, "Resource": resources}]
    if prefixes:
        # LIST inside the scope: R2 lets prefix-scoped credentials list their own prefixes.
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}
