"""`ingest doctor` against the local R2: all ✓ when healthy, the right ✗ line and exit 1 otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ingest.commands.doctor import _seconds
from tests.conftest import LocalR2


def doctor(r2: LocalR2, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
    full = {**base, **{k: v for k, v in r2.env.items() if k != "CLOUDFLARE_API_TOKEN"}, **env}
    full = {k: v for k, v in full.items() if v != ""}
    return subprocess.run(
        [sys.executable, "-m", "ingest", "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        env=full,
        cwd=tmp_path,
    )


def lines(r: subprocess.CompletedProcess[str], mark: str) -> list[str]:
    return [line for line in r.stdout.splitlines() if line.startswith(mark)]


def test_all_checks_pass_on_local_r2(local_r2: LocalR2, tmp_path: Path) -> None:
    r = doctor(local_r2, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines(r, "✗") == []
    names = {line.split()[1].rstrip(":") for line in lines(r, "✓")}
    assert {"config", "endpoint", "clock", "token", "secret", "bucket", "write", "conditional"} <= names


def test_temporary_mode_mints(local_r2: LocalR2, tmp_path: Path) -> None:
    r = doctor(local_r2, tmp_path, R2_AUTH_MODE="temporary", R2_ACCESS_KEY_ID="", R2_SECRET_ACCESS_KEY="")
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(line.startswith("✓ temporary: minted") for line in lines(r, "✓"))


@pytest.mark.parametrize(
    ("env", "name", "says"),
    [
        ({"R2_SECRET_ACCESS_KEY": "0" * 64}, "bucket", "secret access key does not belong"),
        ({"R2_BUCKET_NAME": "no-such-bucket-here"}, "bucket", "bucket no-such-bucket-here does not exist"),
    ],
)
def test_failures_name_the_problem(
    local_r2: LocalR2, tmp_path: Path, env: dict[str, str], name: str, says: str
) -> None:
    r = doctor(local_r2, tmp_path, **env)
    assert r.returncode == 1
    failed = lines(r, "✗")
    assert any(line.startswith(f"✗ {name}:") and says in line for line in failed), r.stdout


def test_raw_token_as_secret_is_recognised(local_r2: LocalR2, tmp_path: Path) -> None:
    r = doctor(local_r2, tmp_path, R2_SECRET_ACCESS_KEY=local_r2.api_token)
    assert r.returncode == 1
    failed = lines(r, "✗")
    assert any(
        line.startswith("✗ secret:") and "raw API token value" in line and "sha256sum" in line
        for line in failed
    )
    assert local_r2.api_token not in r.stdout + r.stderr


def test_unreachable_endpoint(local_r2: LocalR2, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = doctor(local_r2, tmp_path, R2_ENDPOINT_URL=f"http://127.0.0.1:{closed}")
    assert r.returncode == 1
    assert any(line.startswith("✗ endpoint: cannot reach") for line in lines(r, "✗")), r.stdout


def _own_bucket(r2: LocalR2, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A bucket of the test's own, and keys for it: its CORS changes touch no other test."""
    bucket = f"doctor-{uuid.uuid4().hex[:8]}"
    r2.cf().r2.buckets.create(account_id=r2.account_id, name=bucket)
    env_file = tmp_path / "bucket.env"
    made = subprocess.run(
        [sys.executable, "-m", "ingest", "token", "create", "--bucket", bucket, "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **r2.env},
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    return bucket, dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)


def test_upload_grants_for_a_browser_origin_need_the_bucket_to_allow_its_put(
    local_r2: LocalR2, tmp_path: Path
) -> None:
    site = "http://127.0.0.1:5173"
    (tmp_path / "ingest.toml").write_text(
        f'[[sources]]\nkind = "landing"\n\n[server]\ncors_origins = ["{site}"]\n'
    )
    bucket, keys = _own_bucket(local_r2, tmp_path)
    s3 = local_r2.s3(keys["R2_ACCESS_KEY_ID"], keys["R2_SECRET_ACCESS_KEY"])
    env = keys  # R2_BUCKET_NAME, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_API_TOKEN of the new bucket
    try:
        blocked = doctor(local_r2, tmp_path, INGEST_UPLOAD_TOKEN="t0ken", **env)
        assert blocked.returncode == 1
        assert lines(blocked, "✗") == [
            f"✗ cors: uploads from {site} would be blocked by the browser: the bucket has no CORS policy, "
            "so browsers get no Access-Control-Allow-Origin from it; set one with `ingest cors set FILE` "
            "(grants need PUT with header content-type; example: config/cors.example.json)"
        ]
        s3.put_bucket_cors(
            Bucket=bucket,
            CORSConfiguration={"CORSRules": [{"AllowedOrigins": [site], "AllowedMethods": ["GET"]}]},
        )
        method = doctor(local_r2, tmp_path, INGEST_UPLOAD_TOKEN="t0ken", **env)
        assert method.returncode == 1
        assert f"✗ cors: uploads from {site} would be blocked by the browser: method PUT is not allowed" in (
            method.stdout
        )
        s3.put_bucket_cors(
            Bucket=bucket,
            CORSConfiguration={
                "CORSRules": [
                    {"AllowedOrigins": [site], "AllowedMethods": ["PUT"], "AllowedHeaders": ["content-type"]}
                ]
            },
        )
        allowed = doctor(local_r2, tmp_path, INGEST_UPLOAD_TOKEN="t0ken", **env)
        assert allowed.returncode == 0, allowed.stdout
        assert f"✓ cors: uploads from {site}: allowed by rule 0" in allowed.stdout
        assert "t0ken" not in allowed.stdout + allowed.stderr
        without_grants = doctor(local_r2, tmp_path, **env)
        assert "uploads from" not in without_grants.stdout
    finally:
        s3.delete_bucket_cors(Bucket=bucket)


def test_the_clock_line_never_says_minus_zero() -> None:
    assert [_seconds(x) for x in (-0.4, 0.0, 0.4, -2.6, 3.2)] == ["0 s", "0 s", "0 s", "-3 s", "+3 s"]
