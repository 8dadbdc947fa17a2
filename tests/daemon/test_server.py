"""The worker's HTTP API, served in-process over ASGI, signing against the real local R2."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import anyio
import anyio.abc
import httpx
import pytest
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import metrics
from ingest.daemon.grants import UploadGrants
from ingest.daemon.health import Health
from ingest.daemon.server import ProbeServer, app, bind
from ingest.r2.client import R2Client
from ingest.r2.credentials import CredentialProvider, S3Credentials
from tests.conftest import LocalR2

pytestmark = pytest.mark.anyio
TOKEN = "grant-token"
SITE = "http://127.0.0.1:5173"


@pytest.fixture
async def grants(local_r2: LocalR2) -> AsyncIterator[UploadGrants]:
    creds = S3Credentials(local_r2.env["R2_ACCESS_KEY_ID"], SecretStr(local_r2.env["R2_SECRET_ACCESS_KEY"]))
    async with R2Client(local_r2.endpoint_url, CredentialProvider(creds)) as client:
        yield UploadGrants(client, local_r2.bucket, f"t-{uuid.uuid4().hex[:8]}/", expires=120)


def _client(application: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://worker")  # type: ignore[arg-type]


async def test_probes() -> None:
    health = Health()
    async with _client(app(health)) as c:
        assert (await c.get("/healthz")).text == "ok\n"
        assert (await c.get("/readyz")).status_code == 200
        health.problems["store"] = "bucket refused the write"
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"]
        assert "ingest_" in (await c.get("/metrics")).text


async def test_grants_are_off_without_a_token(grants: UploadGrants) -> None:
    async with _client(app(Health(), grants, SecretStr(""))) as c:
        r = await c.post("/v1/uploads", json={"filename": "a.jsonl"})
    assert r.status_code == 404 and "server.upload_token" in r.json()["error"]


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"]
)
async def test_a_grant_needs_the_bearer_token(grants: UploadGrants, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with _client(app(Health(), grants, SecretStr(TOKEN))) as c:
        r = await c.post("/v1/uploads", json={"filename": "a.jsonl"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b'["a.jsonl"]', "filename"),
        (b'{"name": "a.jsonl"}', "filename"),
        (b'{"filename": 7}', "filename"),
        (b'{"filename": "../etc/passwd.jsonl"}', "filename"),
        (b'{"filename": "dir/a.jsonl"}', "filename"),
        (b'{"filename": ".hidden.jsonl"}', "filename"),
        (b'{"filename": "notes.txt"}', "filename"),
        (b'{"filename": ""}', "filename"),
    ],
)
async def test_a_bad_request_names_the_field(grants: UploadGrants, body: bytes, field: str) -> None:
    async with _client(app(Health(), grants, SecretStr(TOKEN))) as c:
        r = await c.post("/v1/uploads", content=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400
    assert r.json()["error"].startswith(f"{field}:")


async def test_a_grant_is_a_working_presigned_put_into_its_own_landing_key(
    grants: UploadGrants, local_r2: LocalR2
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with _client(app(Health(), grants, SecretStr(TOKEN))) as c:
        first = (await c.post("/v1/uploads", json={"filename": "events.jsonl"}, headers=auth)).json()
        second = await c.post("/v1/uploads", json={"filename": "events.jsonl.gz"}, headers=auth)
    assert second.status_code == 201
    landing = f"{grants.prefix}"
    assert first["key"].startswith(landing) and first["key"].endswith("/events.jsonl")
    assert len(first["key"][len(landing) :].split("/")[0]) == 32  # a uuid of its own
    assert second.json()["key"].split("/")[-2] != first["key"].split("/")[-2]
    assert first["headers"] == {"Content-Type": "application/x-ndjson"}
    assert second.json()["headers"] == {"Content-Type": "application/gzip"}
    expires = datetime.fromisoformat(first["expires_at"].replace("Z", "+00:00")).timestamp()
    assert abs(expires - (time.time() + 120)) < 10

    body = b'{"id": 1}\n'
    async with httpx.AsyncClient() as s3:
        assert (
            await s3.put(first["url"], content=body, headers={"Content-Type": "text/plain"})
        ).status_code == 403
        assert (await s3.put(first["url"], content=body, headers=first["headers"])).status_code == 200
    got = local_r2.token_s3().get_object(Bucket=local_r2.bucket, Key=first["key"])
    assert got["Body"].read() == body


async def test_cors_for_listed_origins_only(grants: UploadGrants) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with _client(app(Health(), grants, SecretStr(TOKEN), [SITE])) as c:
        ok = await c.options("/v1/uploads", headers=preflight | {"Origin": SITE})
        other = await c.options("/v1/uploads", headers=preflight | {"Origin": "https://evil.example"})
        real = await c.post(
            "/v1/uploads",
            json={"filename": "a.csv"},
            headers={"Origin": SITE, "Authorization": f"Bearer {TOKEN}"},
        )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == SITE
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert real.status_code == 201 and real.headers["access-control-allow-origin"] == SITE
    assert real.json()["headers"] == {"Content-Type": "text/csv"}


async def test_a_grant_that_fails_inside_is_a_503_a_browser_can_read(local_r2: LocalR2) -> None:
    """A provider with no credentials yet (the real class, not started): the browser gets a readable
    503 with the CORS headers, not a bare 500 it reports as 'Failed to fetch'."""
    async with R2Client(local_r2.endpoint_url, CredentialProvider()) as client:
        grants = UploadGrants(client, local_r2.bucket, "t-unsigned/", expires=120)
        async with _client(app(Health(), grants, SecretStr(TOKEN), [SITE])) as c:
            r = await c.post(
                "/v1/uploads",
                json={"filename": "a.jsonl"},
                headers={"Origin": SITE, "Authorization": f"Bearer {TOKEN}"},
            )
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.headers["access-control-allow-origin"] == SITE
    assert r.json()["error"] == "could not sign an upload URL now (CredentialError); try again"


async def test_any_route_that_fails_inside_is_a_json_500_with_the_cors_headers() -> None:
    """A push source's route (here one that fails) raising: JSON a browser can read, not a bare 500."""

    async def failing(_: Request) -> Response:
        raise RuntimeError("the spool went away")

    routes = [Route("/v1/records", failing, methods=["POST"])]
    async with _client(app(Health(), cors_origins=[SITE], routes=routes)) as c:
        r = await c.post("/v1/records", content=b"{}", headers={"Origin": SITE})
        ok = await c.get("/healthz")
    assert r.status_code == 500 and r.headers["access-control-allow-origin"] == SITE
    assert r.json()["error"] == "internal error (RuntimeError); the worker's log says more"
    assert "spool" not in r.text  # the reason goes to the log, not to whoever asked
    assert ok.status_code == 200  # the server goes on


async def _cut_off(stream: anyio.abc.ByteStream, trickle: bytes, seconds: float) -> float | None:
    """Send `trickle` a byte per 0.1 s for at most `seconds`: when the server closed the connection
    (seconds after the first byte), or None if it never did."""
    start = time.monotonic()
    for i in range(int(seconds / 0.1)):
        try:
            await stream.send(trickle[i % len(trickle) : i % len(trickle) + 1])
            with anyio.move_on_after(0.1):
                await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return time.monotonic() - start
    return None


async def test_a_client_whose_headers_trickle_in_is_cut_off_while_others_are_served() -> None:
    """Slowloris: uvicorn's keep-alive timer stops at the first byte, so headers sent a byte at a
    time held a connection for ever. Now they get `header_timeout`, on a new connection and on a
    kept-alive one from the next request's first byte; a request that is merely slow but in time is
    answered, and an idle kept-alive connection (the fast client's) is not counted as slow."""
    cut_before = metrics.SLOW_HEADERS._value.get()
    sock = bind("127.0.0.1:0")
    server = ProbeServer(app(Health()), sock, header_timeout=1.5)
    port = server.port
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(30):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as fast:
                while True:  # serving
                    try:
                        await fast.get("/healthz")
                        break
                    except httpx.ConnectError:
                        await anyio.sleep(0.05)
                # a new connection whose headers never end: cut after about 1.5 s, not 8
                async with await anyio.connect_tcp("127.0.0.1", port) as slow:
                    await slow.send(b"GET /healthz HTTP/1.1\r\nHost: w\r\n")
                    cut = await _cut_off(slow, b"X-Slow: abcdefgh\r\n", 8.0)
                    assert (await fast.get("/healthz")).status_code == 200  # meanwhile, others are served
                assert cut is not None and 1.0 < cut < 6.0, cut
                # a kept-alive connection: answered once, then the next headers trickle
                async with await anyio.connect_tcp("127.0.0.1", port) as kept:
                    await kept.send(b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n")
                    answer = b""
                    while not answer.endswith(b"ok\n"):
                        answer += await kept.receive()
                    assert answer.startswith(b"HTTP/1.1 200")
                    cut = await _cut_off(kept, b"GET /healthz HTTP/1.1\r\nHost: w\r\n", 8.0)
                assert cut is not None and 1.0 < cut < 6.0, cut
                # slow but in time: headers over 0.6 s (of the 1.5 s allowed) are answered
                async with await anyio.connect_tcp("127.0.0.1", port) as patient:
                    for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: w\r\n", b"X-A: b\r\n", b"\r\n"):
                        await patient.send(part)
                        await anyio.sleep(0.2)
                    answer = b""
                    while not answer.endswith(b"ok\n"):
                        answer += await patient.receive()
                    assert answer.startswith(b"HTTP/1.1 200")
                # the two cut connections are counted (/metrics), the patient one is not
                assert metrics.SLOW_HEADERS._value.get() - cut_before == 2
                scraped = (await fast.get("/metrics")).text
                assert "ingest_http_slow_headers_total" in scraped
        server.stop()
