"""`ingest token create`: the created keys can write exactly one bucket."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import LocalR2, read_env_file


def test_token_create_keys_write_only_that_bucket(local_r2: LocalR2, tmp_path: Path) -> None:
    bucket = f"tok-{uuid.uuid4().hex[:8]}"
    local_r2.cf().r2.buckets.create(account_id=local_r2.account_id, name=bucket)
    env_file = tmp_path / "token.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
    env |= {
        "CLOUDFLARE_API_TOKEN": local_r2.root_token,
        "CLOUDFLARE_API_BASE_URL": local_r2.api_base_url,
        "R2_ACCOUNT_ID": local_r2.account_id,
    }
    r = subprocess.run(
        [sys.executable, "-m", "ingest", "token", "create", "--bucket", bucket, "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    keys = read_env_file(env_file)
    assert keys["R2_SECRET_ACCESS_KEY"] not in r.stdout
    s3 = local_r2.s3(keys["R2_ACCESS_KEY_ID"], keys["R2_SECRET_ACCESS_KEY"])
    s3.put_object(Bucket=bucket, Key="ok.txt", Body=b"ok")
    assert s3.get_object(Bucket=bucket, Key="ok.txt")["Body"].read() == b"ok"
    with pytest.raises(ClientError) as denied:
        s3.put_object(Bucket=local_r2.bucket, Key="not-mine.txt", Body=b"no")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"


def test_known_answers_for_the_token_formats() -> None:
    """Fixed inputs and outputs written out by hand, so a wrong format cannot agree with itself."""
    from ingest.r2.credentials import derive_secret
    from ingest.r2.tokens import ITEM_READ, ITEM_WRITE, bucket_resource

    # sha256("example-token-value-123") computed independently (coreutils sha256sum).
    assert derive_secret("example-token-value-123") == (
        "69c37c98742bc5e82e9a382f72cf696b9b9b5ae52ed1defe4c1e5f4d3a82fb53"
    )
    assert bucket_resource("0123456789abcdef0123456789abcdef", "logs", "eu") == (
        "com.cloudflare.edge.r2.bucket.0123456789abcdef0123456789abcdef_eu_logs"
    )
    assert ITEM_WRITE == "Workers R2 Storage Bucket Item Write"
    assert ITEM_READ == "Workers R2 Storage Bucket Item Read"
