"""Bucket CORS rules in the two forms users meet: S3's `CORSRules` and Cloudflare's API/wrangler form."""

from __future__ import annotations

from typing import Any


def s3_from_cloudflare(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cloudflare `{"allowed": {...}, "exposeHeaders", "maxAgeSeconds", "id"}` → S3 `CORSRules` entries."""
    out = []
    for rule in rules:
        allowed = rule.get("allowed") or {}
        s3: dict[str, Any] = {
            "AllowedOrigins": list(allowed.get("origins") or []),
            "AllowedMethods": list(allowed.get("methods") or []),
        }
        if allowed.get("headers"):
            s3["AllowedHeaders"] = list(allowed["headers"])
        if rule.get("exposeHeaders"):
            s3["ExposeHeaders"] = list(rule["exposeHeaders"])
        if rule.get("maxAgeSeconds") is not None:
            s3["MaxAgeSeconds"] = int(rule["maxAgeSeconds"])
        if rule.get("id"):
            s3["ID"] = rule["id"]
        out.append(s3)
    return out


def cloudflare_from_s3(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """S3 `CORSRules` entries → Cloudflare form."""
    out = []
    for rule in rules:
        allowed: dict[str, Any] = {
            "origins": list(rule.get("AllowedOrigins") or []),
            "methods": list(rule.get("AllowedMethods") or []),
        }
        if rule.get("AllowedHeaders"):
            allowed["headers"] = list(rule["AllowedHeaders"])
        cf: dict[str, Any] = {"allowed": allowed}
        if rule.get("ExposeHeaders"):
            cf["exposeHeaders"] = list(rule["ExposeHeaders"])
        if rule.get("MaxAgeSeconds") is not None:
            cf["maxAgeSeconds"] = int(rule["MaxAgeSeconds"])
        if rule.get("ID"):
            cf["id"] = rule["ID"]
        out.append(cf)
    return out
