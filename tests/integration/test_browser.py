"""Real Chromium (the system's, driven by Playwright) uploading to and reading from the local R2.

A page served from its own origin asks the worker for an upload grant and PUTs a JSONL file straight
to SeaweedFS. What the browser does is the assertion: blocked without a CORS policy, allowed after
`ingest cors set`, ETag readable only because it is exposed, and the worker ingests what landed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.integration.conftest import Job, free_port, readyz, today_dir, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "upload-token-for-tests"

UPLOAD = """
async ({grantUrl, token, filename, body, extraHeaders}) => {
  const out = {};
  try {
    const g = await fetch(grantUrl, {
      method: "POST",
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
      body: JSON.stringify({filename}),
    });
    out.grantStatus = g.status;
    const grant = await g.json();
    out.key = grant.key;
    const put = await fetch(grant.url, {
      method: "PUT", headers: {...grant.headers, ...extraHeaders}, body,
    });
    out.status = put.status;
    out.etag = put.headers.get("ETag");
  } catch (e) {
    out.error = String(e);
  }
  return out;
}
"""

DOWNLOAD = """
async (url) => {
  try {
    const r = await fetch(url);
    const buf = await r.arrayBuffer();
    return {status: r.status, size: buf.byteLength, magic: new TextDecoder().decode(buf.slice(0, 4))};
  } catch (e) {
    return {error: String(e)};
  }
}
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """A static site on its own origin (another port than the worker and R2 = cross-origin)."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "upload.html").write_text("<!doctype html><title>upload</title><p>upload page</p>")
    (root / "dashboard.html").write_text("<!doctype html><title>dashboard</title><p>dashboard</p>")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (scripts/test installs it with apt-get)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_browser_upload_through_grant_and_cors_then_dashboard_reads_parquet(
    job: Job, site: str, browser: Any
) -> None:
    port = free_port()
    job.configure(
        sources=[{"kind": "landing", "settle_seconds": "200ms"}],
        batch={"max_age": "500ms"},
        server={"listen": f"127.0.0.1:{port}", "upload_token": TOKEN, "cors_origins": [site]},
    )
    assert job.cli("cors", "delete").returncode == 0  # the shared bucket starts without a policy
    proc = job.start()
    try:
        wait_for(lambda: readyz(port) is not None, 60, "the worker's HTTP server")
        page = browser.new_page()
        page.goto(f"{site}/upload.html")
        rows = [{"id": i, "user": f"u{i}", "amount": i * 1.5} for i in range(50)]
        body = "".join(json.dumps(r) + "\n" for r in rows)
        args = {
            "grantUrl": f"http://127.0.0.1:{port}/v1/uploads",
            "token": TOKEN,
            "filename": "events.jsonl",
            "body": body,
            "extraHeaders": {},
        }

        # 1. No CORS policy on the bucket: the grant works (the worker allows the origin), the PUT is
        #    blocked by the browser and nothing lands.
        blocked = page.evaluate(UPLOAD, args)
        assert blocked.get("grantStatus") == 201, (blocked, proc.poll())
        assert blocked["key"].startswith(f"{job.prefix}_landing/")
        assert "status" not in blocked and "Failed to fetch" in blocked["error"], blocked
        assert not job.landing_keys()

        # 2. The policy this page needs: its origin, PUT (and GET for the dashboard) with
        #    Content-Type, ETag exposed.
        rule = {
            "AllowedOrigins": [site],
            "AllowedMethods": ["PUT", "GET"],
            "AllowedHeaders": ["content-type"],
            "MaxAgeSeconds": 0,
        }
        policy = job.dir / "cors.json"
        policy.write_text(json.dumps([rule]))
        applied = job.cli("cors", "set", str(policy))
        assert applied.returncode == 0, applied.stderr
        hidden = page.evaluate(UPLOAD, args | {"filename": "hidden.jsonl", "body": ""})
        assert hidden.get("status") == 200 and hidden["etag"] is None, hidden  # not exposed: unreadable

        policy.write_text(json.dumps([rule | {"ExposeHeaders": ["ETag"]}]))
        applied = job.cli("cors", "set", str(policy))
        assert applied.returncode == 0, applied.stderr
        done = page.evaluate(UPLOAD, args)
        assert done.get("status") == 200, done
        assert done["etag"] == f'"{hashlib.md5(body.encode()).hexdigest()}"'  # readable: exposed

        # 3. A header the policy does not allow: the browser blocks it, and `cors check` says why.
        extra = page.evaluate(UPLOAD, args | {"extraHeaders": {"x-api-key": "k"}})
        assert "Failed to fetch" in extra.get("error", ""), extra
        why = job.cli("cors", "check", "--origin", site, "--method", "PUT", "--header", "x-api-key")
        assert why.returncode == 1 and "does not allow x-api-key" in why.stdout, why.stdout

        # 4. The worker turns the landed file into a dated Parquet object and deletes the upload.
        wait_for(lambda: not job.landing_keys(), 60, "the uploads to be ingested and deleted")
        data = job.keys()
        assert len(data) == 1 and data[0].startswith(f"{job.prefix}{today_dir()}/"), data
        assert data[0].endswith(".parquet")
        assert sorted(job.rows(), key=lambda r: r["id"]) == rows

        # 5. A second page (the dashboard) reads the Parquet object with a presigned GET.
        url = job.cli("presign", data[0], "--method", "GET", "--expires", "10m")
        assert url.returncode == 0, url.stderr
        dashboard = browser.new_page()
        dashboard.goto(f"{site}/dashboard.html")
        got = dashboard.evaluate(DOWNLOAD, url.stdout.strip())
        size = job.r2.token_s3().head_object(Bucket=job.r2.bucket, Key=data[0])["ContentLength"]
        assert got == {"status": 200, "size": size, "magic": "PAR1"}, got
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        job.cli("cors", "delete")
