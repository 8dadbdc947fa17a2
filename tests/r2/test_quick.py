"""The quick signed GET of `ingest cors check`: signed as botocore signs, answered by the real store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ingest.config import AuthConfig, R2Config
from ingest.r2.quick import bucket_cors_rules, signed_headers
from tests.conftest import LocalR2

RULES = [
    {
        "ID": "uploads",
        "AllowedOrigins": ["https://app.example.com", "https://*.example.org"],
        "AllowedMethods": ["PUT", "GET"],
        "AllowedHeaders": ["content-type"],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 600,
    },
    {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]},
]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:20325/ingest?cors",
        "https://0123abcd.eu.r2.cloudflarestorage.com/my.bucket-1?cors",
        "https://acct.r2.cloudflarestorage.com/b?list-type=2&prefix=2024%2F08%2F&start-after=a%20b",
    ],
)
def test_the_signature_is_botocores(url: str) -> None:
    now = datetime(2024, 8, 2, 10, 11, 12, tzinfo=UTC)
    ours = signed_headers("GET", url, "AKID", "s3cr3t/+=", now)
    request = AWSRequest(
        method="GET", url=url, headers={k: v for k, v in ours.items() if k != "authorization"}
    )
    request.context["timestamp"] = ours["x-amz-date"]
    signer = S3SigV4Auth(Credentials("AKID", "s3cr3t/+="), "s3", "auto")
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    assert ours["authorization"].endswith(f"Signature={signature}")
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date" in ours["authorization"]


def _config(local_r2: LocalR2, secret: str | None = None, mode: str = "keys") -> R2Config:
    return R2Config(
        endpoint_url=local_r2.endpoint_url,
        bucket=local_r2.bucket,
        auth=AuthConfig(
            mode=mode,  # type: ignore[arg-type]
            access_key_id=local_r2.env["R2_ACCESS_KEY_ID"],
            secret_access_key=secret or local_r2.env["R2_SECRET_ACCESS_KEY"],  # type: ignore[arg-type]
        ),
    )


def test_the_store_answers_the_quick_get_as_it_answers_the_client(local_r2: LocalR2) -> None:
    s3 = local_r2.token_s3()
    s3.delete_bucket_cors(Bucket=local_r2.bucket)
    try:
        assert bucket_cors_rules(_config(local_r2)) == []  # no policy: [], not None
        s3.put_bucket_cors(Bucket=local_r2.bucket, CORSConfiguration={"CORSRules": RULES})
        quick = bucket_cors_rules(_config(local_r2))
        assert quick is not None
        assert quick == s3.get_bucket_cors(Bucket=local_r2.bucket)["CORSRules"]
        assert quick[0]["MaxAgeSeconds"] == 600 and "AllowedHeaders" not in quick[1]
        # A refusal is not this path's to explain: None, and the full client answers.
        assert bucket_cors_rules(_config(local_r2, secret="wrong")) is None
        assert bucket_cors_rules(_config(local_r2, mode="temporary")) is None
        gone = _config(local_r2)
        gone.endpoint_url = "http://127.0.0.1:9"  # nothing listens: None, no exception
        assert bucket_cors_rules(gone, timeout=2.0) is None
    finally:
        s3.delete_bucket_cors(Bucket=local_r2.bucket)
