"""The S3 client: built lazily for `ingest run` (its imports overlap the first reads), eagerly otherwise;
either way it talks to the real local R2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor

import anyio
from pydantic import SecretStr

from ingest.r2.client import R2Client
from ingest.r2.credentials import CredentialProvider, S3Credentials
from tests.conftest import LocalR2

# In a fresh interpreter: nothing else has loaded aiohttp or aiobotocore yet.
PROGRAM = textwrap.dedent(
    """
    import json, sys, threading
    import anyio, httpx

    loop_opened = []  # botocore data files the event loop's thread opened itself

    def audit(event, args):
        if event == "open" and threading.current_thread() is threading.main_thread():
            path = str(args[0])
            if "botocore" in path and ".json" in path:
                loop_opened.append(path.rsplit("/", 3)[-3:])

    sys.addaudithook(audit)
    from pydantic import SecretStr
    import ingest.worker  # everything `ingest run` imports before it starts reading
    from ingest.r2.client import R2Client
    from ingest.r2.credentials import CredentialProvider, S3Credentials
    from ingest.r2.presign import presign

    def loaded():
        return sorted(m for m in ("aiohttp", "aiobotocore.session", "boto3", "uvicorn") if m in sys.modules)

    async def main(endpoint, key_id, secret, bucket, lazy):
        seen = {"after_import": loaded()}
        provider = CredentialProvider(S3Credentials(key_id, SecretStr(secret)))
        async with R2Client(endpoint, provider, lazy=lazy) as client:
            seen["after_enter"] = loaded()
            # The first use may be a presigned URL (an upload grant asked for as the server listens).
            grant = await presign(client, bucket, "lazy/p", "PUT", 300)
            seen["presigned_put"] = httpx.put(grant.url, content=b"y" * 10).status_code
            await client.call("put_object", Bucket=bucket, Key="lazy/a", Body=b"x" * 5000)
            seen["after_call"] = loaded()
            got = await client.call("get_object", Bucket=bucket, Key="lazy/a")
            seen["body"] = len(await got["Body"].read())
            await client.warm()  # a second build is a no-op
        seen["loop_opened"] = loop_opened
        print(json.dumps(seen))

    anyio.run(main, *sys.argv[1:5], sys.argv[5] == "lazy")
    """
)


def run(r2: LocalR2, mode: str) -> dict[str, object]:
    env = r2.env
    names = ("R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET_NAME")
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, *(env[n] for n in names), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The figures are the last line (structlog, not configured here, prints log lines before it).
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_lazy_client_loads_the_s3_stack_on_first_use_and_then_works(local_r2: LocalR2) -> None:
    seen = run(local_r2, "lazy")
    assert seen["after_import"] == [] and seen["after_enter"] == []
    # boto3 (aioboto3's wrapper) and uvicorn (the server's) are never imported: every run's CPU
    assert seen["after_call"] == ["aiobotocore.session", "aiohttp"]
    assert seen["body"] == 5000 and seen["presigned_put"] == 200
    # S3's model, its endpoint rules and the endpoints file are read in the build's thread: the
    # event loop, already serving the first files, never waits on them
    assert seen["loop_opened"] == []


def test_an_eager_client_is_built_when_entered(local_r2: LocalR2) -> None:
    seen = run(local_r2, "eager")
    assert seen["after_import"] == [] and seen["after_enter"] == ["aiobotocore.session", "aiohttp"]
    assert seen["body"] == 5000 and seen["presigned_put"] == 200
    assert seen["loop_opened"] == []


def test_pages_follow_every_page_and_a_delimiter_keeps_out_the_folders_below(local_r2: LocalR2) -> None:
    """A listing past one page (1,000 keys): every key once, in order; what the landing source and
    the queue ledger page through."""
    env = local_r2.env
    s3 = local_r2.s3(env["R2_ACCESS_KEY_ID"], env["R2_SECRET_ACCESS_KEY"])
    prefix = f"pages-{uuid.uuid4().hex[:8]}/"
    top = [f"{prefix}{i:05d}.jsonl" for i in range(1_003)]
    below = [f"{prefix}sub/{i}.jsonl" for i in range(3)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=local_r2.bucket, Key=k, Body=b"{}\n"), top + below))

    async def main() -> tuple[list[int], list[str], list[str]]:
        creds = S3Credentials(env["R2_ACCESS_KEY_ID"], SecretStr(env["R2_SECRET_ACCESS_KEY"]))
        async with R2Client(env["R2_ENDPOINT_URL"], CredentialProvider(creds)) as client:
            sizes = [len(page) async for page in client.pages(local_r2.bucket, prefix)]
            every = [o["Key"] for o in await client.list_all(local_r2.bucket, prefix)]
            level = [o["Key"] for o in await client.list_all(local_r2.bucket, prefix, "/")]
        return sizes, every, level

    sizes, every, level = anyio.run(main)
    assert sizes == [1_000, 6]
    assert every == sorted(top + below)
    assert level == top
