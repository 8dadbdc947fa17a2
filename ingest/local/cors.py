"""Bucket CORS as the Cloudflare API speaks it, spelled here from Cloudflare's documentation (never the
product's `ingest.r2.cors`, or a wrong format would pass every test): wrangler-form rules in,
validated like R2 does, converted to and from the S3 form SeaweedFS stores.

API form: `{"rules": [{"allowed": {"origins": [...], "methods": [...], "headers": [...]},
"exposeHeaders": [...], "maxAgeSeconds": 3600, "id": "..."}]}`.
"""

from __future__ import annotations

import re
from typing import Any

METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
MAX_AGE = 86400
_ORIGIN = re.compile(r"^\*$|^[A-Za-z][A-Za-z0-9+.-]*://[^/?#:*]*\*?[^/?#:*]*(:[0-9]+)?$")


class InvalidCors(ValueError):
    pass


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidCors(f"{where} must be a list of strings")
    return list(value)


def to_s3_rules(rules: list[Any]) -> list[dict[str, Any]]:
    """API rules → S3 CORSRules, refusing what R2 refuses."""
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or not isinstance(rule.get("allowed"), dict):
            raise InvalidCors(f"rules[{i}].allowed is required")
        allowed = rule["allowed"]
        origins = _strings(allowed.get("origins"), f"rules[{i}].allowed.origins")
        methods = _strings(allowed.get("methods"), f"rules[{i}].allowed.methods")
        if not origins or not methods:
            raise InvalidCors(f"rules[{i}]: allowed.origins and allowed.methods are required")
        for origin in origins:
            if not _ORIGIN.match(origin):
                raise InvalidCors(f"rules[{i}]: origin {origin!r} is not scheme://host[:port]")
        for method in methods:
            if method not in METHODS:
                raise InvalidCors(f"rules[{i}]: method {method!r} is not one of {', '.join(METHODS)}")
        s3: dict[str, Any] = {"AllowedOrigins": origins, "AllowedMethods": methods}
        if "headers" in allowed:
            s3["AllowedHeaders"] = _strings(allowed["headers"], f"rules[{i}].allowed.headers")
        if "exposeHeaders" in rule:
            s3["ExposeHeaders"] = _strings(rule["exposeHeaders"], f"rules[{i}].exposeHeaders")
        if "maxAgeSeconds" in rule:
            age = rule["maxAgeSeconds"]
            if not isinstance(age, int) or isinstance(age, bool) or not 0 <= age <= MAX_AGE:
                raise InvalidCors(f"rules[{i}].maxAgeSeconds must be 0..{MAX_AGE}")
            s3["MaxAgeSeconds"] = age
        if isinstance(rule.get("id"), str):
            s3["ID"] = rule["id"]
        out.append(s3)
    return out


def from_s3_rules(rules: list[dict[str, Any]]) -> dict[str, Any]:
    """S3 CORSRules → the API's answer."""
    out = []
    for r in rules:
        allowed: dict[str, Any] = {
            "origins": r.get("AllowedOrigins", []),
            "methods": r.get("AllowedMethods", []),
        }
        if r.get("AllowedHeaders"):
            allowed["headers"] = r["AllowedHeaders"]
        rule: dict[str, Any] = {"allowed": allowed}
        if r.get("ExposeHeaders"):
            rule["exposeHeaders"] = r["ExposeHeaders"]
        if "MaxAgeSeconds" in r:
            rule["maxAgeSeconds"] = r["MaxAgeSeconds"]
        if r.get("ID"):
            rule["id"] = r["ID"]
        out.append(rule)
    return {"rules": out}
