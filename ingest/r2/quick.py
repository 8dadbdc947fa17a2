"""One signed S3 read without the SDK's client, for a command that makes one call and exits.

`ingest cors check` is run by hand and in scripts; importing aioboto3 and loading S3's service model
took most of its time (0.4 of 0.7 s, measured), and importing botocore's signer alone 60 ms of the
0.3 s it may take. So this one GET is signed here (AWS Signature V4, the few lines S3 needs for a
body-less request; tests/r2/test_quick.py holds it equal to botocore's signer) and sent with the
standard library. Only the plain answer is taken: static keys, and a 200 or "no policy". Anything else
(temporary credentials, a refusal, a network error) gives None, and the full client answers instead,
with its retries and its error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from ingest.config import R2Config
from ingest.r2.endpoint import REGION, endpoint_url

TIMEOUT = 10.0
# What each element of a <CORSRule> becomes in botocore's answer: (key, is a list).
_FIELDS = {
    "ID": ("ID", False),
    "AllowedOrigin": ("AllowedOrigins", True),
    "AllowedMethod": ("AllowedMethods", True),
    "AllowedHeader": ("AllowedHeaders", True),
    "ExposeHeader": ("ExposeHeaders", True),
    "MaxAgeSeconds": ("MaxAgeSeconds", False),
}


def bucket_cors_rules(r2: R2Config, timeout: float = TIMEOUT) -> list[dict[str, Any]] | None:
    """The bucket's `CORSRules` as botocore would return them ([] when it has none), or None when
    this path does not answer (blocking: run it in a thread)."""
    auth = r2.auth
    secret = auth.secret_access_key.get_secret_value()
    if auth.mode not in ("", "keys") or not auth.access_key_id or not secret or not r2.bucket:
        return None
    try:
        base = endpoint_url(r2.account_id, r2.jurisdiction, r2.endpoint_url).rstrip("/")
    except ValueError:
        return None
    url = f"{base}/{quote(r2.bucket, safe='')}?cors"
    headers = signed_headers("GET", url, auth.access_key_id, secret, datetime.now(UTC))
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and _code(exc.read()) == "NoSuchCORSConfiguration":
            return []
        return None
    except (OSError, ValueError):
        return None
    try:
        return _rules(body)
    except ElementTree.ParseError:
        return None


_EMPTY = hashlib.sha256(b"").hexdigest()
_UNRESERVED = "-_.~"


def signed_headers(method: str, url: str, key_id: str, secret: str, now: datetime) -> dict[str, str]:
    """Headers of a body-less S3 request signed with AWS Signature V4 (path already URI-encoded, as
    S3 signs it: not encoded twice)."""
    parts = urlsplit(url)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": parts.netloc, "x-amz-content-sha256": _EMPTY, "x-amz-date": stamp}
    names = ";".join(sorted(headers))
    query = "&".join(
        sorted(
            f"{quote(k, safe=_UNRESERVED)}={quote(v, safe=_UNRESERVED)}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
    )
    canonical = "\n".join(
        [method, parts.path or "/", query, *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, _EMPTY]
    )
    scope = f"{stamp[:8]}/{REGION}/s3/aws4_request"
    text = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (stamp[:8], REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={names}, Signature={signature}"
    )
    return headers


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _code(body: bytes) -> str:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return ""
    return next((el.text or "" for el in root if _local(el.tag) == "Code"), "")


def _rules(body: bytes) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for element in ElementTree.fromstring(body):
        if _local(element.tag) != "CORSRule":
            continue
        rule: dict[str, Any] = {}
        for part in element:
            name, many = _FIELDS.get(_local(part.tag), ("", False))
            text = (part.text or "").strip()
            if not name:
                continue
            if many:
                rule.setdefault(name, []).append(text)
            else:
                rule[name] = int(text) if name == "MaxAgeSeconds" else text
        rules.append(rule)
    return rules
