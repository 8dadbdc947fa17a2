"""`ingest cors` and `ingest presign` against the live local R2 (SeaweedFS + the API emulator).

The bucket's policy is checked where it matters: SeaweedFS answers a real preflight by it, and what
`cors check` says must agree with what the store answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Job, ingest_without_r2

ORIGIN = "http://127.0.0.1:5173"
POLICY = [
    {
        "AllowedOrigins": [ORIGIN],
        "AllowedMethods": ["GET", "PUT"],
        "AllowedHeaders": ["content-type"],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 600,
    }
]


@pytest.fixture
def cors_job(job: Job) -> Iterator[Job]:
    """A job whose bucket has no policy before and after (the bucket is shared between tests)."""
    assert job.cli("cors", "delete").returncode == 0
    yield job
    job.cli("cors", "delete")


def _api(job: Job) -> dict[str, str]:
    return {"CLOUDFLARE_API_TOKEN": job.r2.root_token, "CLOUDFLARE_API_BASE_URL": job.r2.api_base_url}


def _preflight(job: Job, origin: str, method: str, headers: str = "") -> httpx.Response:
    """What a browser sends before a cross-origin request, straight to the S3 endpoint."""
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return httpx.options(f"{job.r2.endpoint_url}/{job.r2.bucket}/{job.prefix}x.jsonl", headers=h, timeout=10)


def _set(job: Job, policy: Any, *args: str, **env: str) -> None:
    path = job.dir / "cors.json"
    path.write_text(json.dumps(policy))
    done = job.cli("cors", "set", str(path), *args, **env)
    assert done.returncode == 0, done.stderr
    assert "applied 1 CORS rules" in done.stdout


def test_set_via_api_in_wrangler_form_is_live_over_s3(cors_job: Job) -> None:
    job = cors_job
    assert _preflight(job, ORIGIN, "PUT").headers.get("access-control-allow-origin") is None

    wrangler = {
        "rules": [
            {
                "allowed": {"origins": [ORIGIN], "methods": ["GET", "PUT"], "headers": ["content-type"]},
                "exposeHeaders": ["ETag"],
                "maxAgeSeconds": 600,
            }
        ]
    }
    _set(job, wrangler, "--via", "api", **_api(job))

    got = job.cli("cors", "get")  # over S3, with the data keys
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"CORSRules": POLICY}
    back = job.cli("cors", "get", "--format", "wrangler", "--via", "api", **_api(job))
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == wrangler

    answer = _preflight(job, ORIGIN, "PUT", "content-type")
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "PUT" in answer.headers["access-control-allow-methods"]


def test_api_sends_the_jurisdiction_and_the_bucket_is_not_there(cors_job: Job) -> None:
    job = cors_job
    _set(job, POLICY)
    eu = job.cli("cors", "get", "--via", "api", R2_JURISDICTION="eu", **_api(job))
    assert eu.returncode == 1
    assert "jurisdiction eu" in eu.stderr, eu.stderr
    assert job.cli("cors", "get", "--via", "api", **_api(job)).returncode == 0


def test_api_without_a_token_is_a_config_error(cors_job: Job) -> None:
    done = cors_job.cli("cors", "get", "--via", "api")
    assert done.returncode == 2
    assert "CLOUDFLARE_API_TOKEN" in done.stderr


def test_invalid_policy_names_every_problem_and_changes_nothing(cors_job: Job) -> None:
    job = cors_job
    _set(job, POLICY)
    bad = job.dir / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {"AllowedOrigins": ["https://app.example.com/"], "AllowedMethods": ["GET", "PATCH"]},
                {"AllowedOrigins": ["https://a.com"], "AllowedMethods": ["GET"], "MaxAgeSeconds": 90000},
            ]
        )
    )
    done = job.cli("cors", "set", str(bad))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith(f"{bad}: rule ") for line in lines)
    assert any("rule 0: AllowedOrigins[0]" in line and "https://app.example.com" in line for line in lines)
    assert any("rule 0: AllowedMethods[1]" in line and "PATCH" in line for line in lines)
    assert any("rule 1: MaxAgeSeconds" in line and "86400" in line for line in lines)
    assert json.loads(job.cli("cors", "get").stdout) == {"CORSRules": POLICY}


def test_check_explains_a_missing_method_and_a_blocked_header_like_the_store(cors_job: Job) -> None:
    job = cors_job
    _set(job, POLICY)

    ok = job.cli("cors", "check", "--origin", ORIGIN, "--method", "PUT", "--header", "Content-Type")
    assert ok.returncode == 0, ok.stdout
    assert "allowed by rule 0" in ok.stdout and "ETag" in ok.stdout
    assert _preflight(job, ORIGIN, "PUT", "content-type").headers["access-control-allow-origin"] == ORIGIN

    method = job.cli("cors", "check", "--origin", ORIGIN, "--method", "DELETE")
    assert method.returncode == 1
    assert "blocked: method DELETE is not allowed" in method.stdout
    assert "rule 0 allows GET, PUT" in method.stdout
    assert "DELETE" not in _preflight(job, ORIGIN, "DELETE").headers.get("access-control-allow-methods", "")

    header = job.cli("cors", "check", "--origin", ORIGIN, "--method", "PUT", "--header", "x-api-key: k")
    assert header.returncode == 1
    assert "rule 0 does not allow x-api-key (it allows content-type)" in header.stdout
    refused = _preflight(job, ORIGIN, "PUT", "x-api-key")
    assert "x-api-key" not in refused.headers.get("access-control-allow-headers", "").lower()

    stranger = job.cli("cors", "check", "--origin", "https://evil.example", "--method", "GET")
    assert stranger.returncode == 1
    assert f"origin https://evil.example is not allowed by any rule (allowed origins: {ORIGIN})" in (
        stranger.stdout
    )
    assert _preflight(job, "https://evil.example", "GET").headers.get("access-control-allow-origin") is None


def test_get_and_check_without_a_policy(cors_job: Job) -> None:
    job = cors_job
    got = job.cli("cors", "get")
    assert got.returncode == 1 and "has no CORS policy" in got.stderr
    check = job.cli("cors", "check", "--origin", ORIGIN)
    assert check.returncode == 1 and "blocked" in check.stdout


def test_check_answers_without_the_s3_client_and_falls_back_to_it_on_a_refusal(cors_job: Job) -> None:
    """`cors check` is one signed GET (ingest/r2/quick.py): aioboto3 is never imported when it
    answers; when the store refuses it, the full client runs and explains the refusal."""
    job = cors_job
    policy = job.dir / "policy.json"
    policy.write_text(json.dumps([{"AllowedOrigins": [ORIGIN], "AllowedMethods": ["PUT"]}]))
    assert job.cli("cors", "set", str(policy)).returncode == 0
    check = job.cli("cors", "check", "--origin", ORIGIN, "--method", "PUT", PYTHONPROFILEIMPORTTIME="1")
    assert check.returncode == 0 and "allowed" in check.stdout, check.stdout + check.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in check.stderr.splitlines() if "|" in line}
    assert "ingest.r2.quick" in imported and "aioboto3" not in imported and "botocore" not in imported
    denied = job.cli("cors", "check", "--origin", ORIGIN, R2_SECRET_ACCESS_KEY="not-the-secret")
    assert denied.returncode == 1 and denied.stderr.startswith("error:"), denied.stderr
    assert "not-the-secret" not in denied.stdout + denied.stderr


def test_presign_refuses_post_and_long_expiry(job: Job) -> None:
    post = job.cli("presign", "a.jsonl", "--method", "POST")
    assert post.returncode == 2
    assert "R2 does not support presigned POST" in post.stderr and "--method PUT" in post.stderr
    long = job.cli("presign", "a.jsonl", "--expires", "8d")
    assert long.returncode == 2 and "from 1s to 7d" in long.stderr
    assert post.stdout == long.stdout == ""


def test_presigned_put_then_get_round_trip(job: Job) -> None:
    key = f"{job.prefix}upload/data.jsonl"
    body = b'{"id": 1}\n{"id": 2}\n'
    put = job.cli("presign", key, "--method", "PUT", "--content-type", "application/x-ndjson", "--json")
    assert put.returncode == 0, put.stderr
    grant = json.loads(put.stdout)
    assert grant["headers"] == {"Content-Type": "application/x-ndjson"}
    assert grant["method"] == "PUT" and grant["key"] == key

    wrong = httpx.put(grant["url"], content=body, headers={"Content-Type": "text/plain"}, timeout=10)
    assert wrong.status_code == 403  # the content type is part of the signature
    assert httpx.put(grant["url"], content=body, headers=grant["headers"], timeout=10).status_code == 200

    url = job.cli("presign", key, "--expires", "30s")
    assert url.returncode == 0, url.stderr
    assert f"GET s3://{job.r2.bucket}/{key} until " in url.stderr
    got = httpx.get(url.stdout.strip(), timeout=10)
    assert got.status_code == 200 and got.content == body
    assert httpx.get(url.stdout.strip().replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=10).is_error


def test_presign_on_the_embedded_local_r2_says_the_url_dies_with_it(tmp_path: Path) -> None:
    done = ingest_without_r2(tmp_path, "presign", "2024/08/02/ingested_0001.parquet")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("http://127.0.0.1:")
    assert "the URL is dead already" in done.stderr and "ingest local --env-file" in done.stderr


def test_a_policy_without_max_age_applies(cors_job: Job) -> None:
    rule = {"AllowedOrigins": [ORIGIN], "AllowedMethods": ["GET"]}
    _set(cors_job, [rule])  # the store fills in MaxAgeSeconds; that is not "a different policy"
    live = json.loads(cors_job.cli("cors", "get").stdout)["CORSRules"]
    assert [{k: v for k, v in r.items() if k != "MaxAgeSeconds"} for r in live] == [rule]
