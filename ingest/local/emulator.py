"""A local Cloudflare API (v4 envelope) for the R2 endpoints this project uses.

The official `cloudflare` SDK talks to it unchanged through `base_url`. Every token and temporary
credential it issues is a real S3 identity on the local SeaweedFS, so scope and expiry are enforced
by the S3 server, not by this app.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from botocore.exceptions import ClientError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from ingest.local import policy as pol
from ingest.local.cors import InvalidCors, from_s3_rules, to_s3_rules
from ingest.local.identities import IdentityStore
from ingest.local.state import (
    LocalState,
    TempCredential,
    TokenRecord,
    new_token_value,
    token_secret,
    utc_iso,
)
from ingest.logs import get_logger

log = get_logger("ingest.local.emulator")
JURISDICTIONS = ("default", "eu", "fedramp", "fedramp-high", "us")
API_PREFIX = "/client/v4"  # as on api.cloudflare.com
STS_MIN, STS_MAX = 900, 43200  # SeaweedFS federation tokens; other TTLs get an identity we revoke


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def envelope(result: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"success": True, "errors": [], "messages": [], "result": result}, status)


def failure(status: int, code: int, message: str) -> JSONResponse:
    body = {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}
    return JSONResponse(body, status)


def _parse_time(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def token_status(tok: TokenRecord) -> str:
    expires = _parse_time(tok.expires_on)
    if tok.status == "active" and expires is not None and expires <= time.time():
        return "expired"
    return tok.status


Handler = Callable[[Request], Awaitable[Any]]


class Emulator:
    def __init__(self, state: LocalState, state_path: Path, store: IdentityStore) -> None:
        self.state = state
        self.state_path = state_path
        self.store = store
        self._lock = anyio.Lock()
        self.more_routes: list[Route] = []  # of other services of the API (R2 Data Catalog)
        self.mounts: list[Mount] = []  # served beside the API (the catalogs' Iceberg REST)
        self._rate_limited_until = 0.0  # test hook: answer 429 to temp-credential requests until then
        self._retry_after = 0

    # --- plumbing -----------------------------------------------------------------------------
    def _route(self, path: str, fn: Handler, method: str) -> Route:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                account = request.path_params.get("account_id")
                if account is not None and account != self.state.account_id:
                    raise ApiError(404, 7003, f"Could not route to /accounts/{account}: unknown account")
                result = await fn(request)
                return result if isinstance(result, JSONResponse) else envelope(result)
            except ApiError as exc:
                response = failure(exc.status, exc.code, exc.message)
                response.headers.update(exc.headers)
                return response
            except pol.PolicyError as exc:
                return failure(400, 1001, str(exc))

        return Route(path, endpoint, methods=[method])

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, 10040, "request body must be JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, 10040, "request body must be a JSON object")
        return body

    def _presented(self, request: Request) -> TokenRecord | None:
        """The token named by `Authorization: Bearer <value>`, whatever its status."""
        auth = request.headers.get("authorization", "")
        return (
            self.state.token_by_value(auth.removeprefix("Bearer ").strip())
            if auth.startswith("Bearer ")
            else None
        )

    def _bearer(self, request: Request) -> TokenRecord:
        tok = self._presented(request)
        if tok is None or token_status(tok) != "active":
            raise ApiError(403, 10000, "Authentication error")
        return tok

    def _caps(self, tok: TokenRecord) -> pol.Capabilities:
        return pol.capabilities(tok.policies, self.state.account_id)

    def _require_admin(self, request: Request, write: bool) -> None:
        if not self._caps(self._bearer(request)).is_account_admin(write):
            raise ApiError(403, 10000, "Authentication error: token lacks Workers R2 Storage permission")

    async def _save(self) -> None:
        await anyio.to_thread.run_sync(self.state.save, self.state_path)

    # --- tokens ------------------------------------------------------------------------------
    def _token_json(self, tok: TokenRecord, value: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": tok.id,
            "name": tok.name,
            "status": token_status(tok),
            "issued_on": tok.issued_on,
            "modified_on": tok.issued_on,
            "expires_on": tok.expires_on,
            "not_before": tok.not_before,
            "policies": tok.policies,
        }
        if value is not None:
            out["value"] = value
        return out

    async def create_token(self, request: Request) -> Any:
        account = request.path_params.get("account_id", "")
        if not self._caps(self._bearer(request)).manage_tokens:
            raise ApiError(403, 9109, "Unauthorized to access requested resource: needs API Tokens Write")
        body = await self._body(request)
        if not body.get("name"):
            raise ApiError(400, 1001, "name: required")
        policies = body.get("policies")
        if not isinstance(policies, list) or not policies:
            raise ApiError(400, 1001, "policies: a non-empty list of access policies is required")
        for i, p in enumerate(policies):
            p.setdefault("id", secrets.token_hex(16))
            p.setdefault("effect", "allow")
            for g in p.get("permission_groups") or []:
                g.setdefault(
                    "name", next((x["name"] for x in pol.PERMISSION_GROUPS if x["id"] == g.get("id")), "")
                )
            if not isinstance(p.get("resources"), dict):
                raise ApiError(400, 1001, f"policies[{i}].resources: must be an object")
        value = new_token_value()
        tok = TokenRecord(
            id=secrets.token_hex(16),
            name=body["name"],
            value_sha256=token_secret(value),
            policies=policies,
            issued_on=utc_iso(),
            account_id=account,
            expires_on=body.get("expires_on"),
            not_before=body.get("not_before"),
        )
        await self.issue_token(tok)
        return self._token_json(tok, value)

    async def issue_token(self, tok: TokenRecord) -> None:
        """Record a token and give it its S3 identity (id, sha256(value)) with the policy's grants."""
        grants = pol.capabilities(tok.policies, self.state.account_id).grants
        async with self._lock:
            self.state.tokens[tok.id] = tok
            if grants and token_status(tok) == "active":
                await self.store.put(f"token-{tok.id}", tok.id, tok.value_sha256, pol.seaweed_actions(grants))
            await self._save()

    def _verify(self, request: Request, account_owned: bool) -> dict[str, Any]:
        tok = self._presented(request)
        if tok is None or bool(tok.account_id) != account_owned:
            raise ApiError(401, 1000, "Invalid API Token")
        if account_owned and tok.account_id != request.path_params["account_id"]:
            raise ApiError(401, 1000, "Invalid API Token")
        return {
            "id": tok.id,
            "status": token_status(tok),
            "expires_on": tok.expires_on,
            "not_before": tok.not_before,
        }

    async def verify_user(self, request: Request) -> Any:
        return self._verify(request, account_owned=False)

    async def verify_account(self, request: Request) -> Any:
        return self._verify(request, account_owned=True)

    async def permission_groups(self, request: Request) -> Any:
        self._bearer(request)
        return pol.PERMISSION_GROUPS

    def _own_token(self, request: Request) -> TokenRecord:
        if not self._caps(self._bearer(request)).manage_tokens:
            raise ApiError(403, 9109, "Unauthorized to access requested resource: needs API Tokens Write")
        tok = self.state.tokens.get(request.path_params["token_id"])
        if tok is None:
            raise ApiError(404, 1003, "Token not found")
        return tok

    async def get_token(self, request: Request) -> Any:
        return self._token_json(self._own_token(request))

    async def update_token(self, request: Request) -> Any:
        tok = self._own_token(request)
        body = await self._body(request)
        if body.get("status") not in (None, "active", "disabled"):
            raise ApiError(400, 1001, "status: must be active or disabled")
        tok.status = body.get("status", tok.status)
        tok.name = body.get("name", tok.name)
        tok.expires_on = body.get("expires_on", tok.expires_on)
        if token_status(tok) == "active":
            await self.issue_token(tok)
        else:
            async with self._lock:
                await self.store.delete(f"token-{tok.id}", tok.id, tok.value_sha256)
                await self._save()
        return self._token_json(tok)

    async def delete_token(self, request: Request) -> Any:
        tok = self._own_token(request)
        async with self._lock:
            await self.store.delete(f"token-{tok.id}", tok.id, tok.value_sha256)
            del self.state.tokens[tok.id]
            await self._save()
        return {"id": tok.id}

    # --- temporary credentials ---------------------------------------------------------------
    async def temp_credentials(self, request: Request) -> Any:
        bearer = self._caps(self._bearer(request))
        if time.time() < self._rate_limited_until:
            response = failure(
                429, 10429, "Rate limited. Please wait and consider throttling your request speed"
            )
            response.headers["Retry-After"] = str(self._retry_after)
            return response
        body = await self._body(request)
        bucket, permission, ttl = body.get("bucket"), body.get("permission"), body.get("ttlSeconds")
        prefixes, objects = body.get("prefixes") or [], body.get("objects") or []
        if not isinstance(bucket, str) or not bucket:
            raise ApiError(400, 10040, "bucket: required")
        if permission not in pol.PERMISSIONS:
            raise ApiError(400, 10040, f"permission: must be one of {', '.join(pol.PERMISSIONS)}")
        if not isinstance(ttl, int | float) or not 1 <= ttl <= 604800:
            raise ApiError(400, 10040, "ttlSeconds: must be a number of seconds from 1 to 604800")
        if not all(isinstance(x, str) for x in [*prefixes, *objects]):
            raise ApiError(400, 10040, "prefixes/objects: must be lists of strings")
        write = permission.endswith("read-write")
        parent = self.state.tokens.get(str(body.get("parentAccessKeyId", "")))
        if parent is None or token_status(parent) != "active":
            raise ApiError(400, 10040, "parentAccessKeyId: no active R2 API token with that access key id")
        if not self._caps(parent).allows(bucket, write) or not bearer.allows(bucket, write=True):
            raise ApiError(403, 10000, f"the parent token may not grant {permission} on bucket {bucket}")
        await self._require_bucket(bucket, request)
        ttl = int(ttl)
        if STS_MIN <= ttl <= STS_MAX:
            if not self.state.sts_access_key:
                raise ApiError(500, 10001, "STS is not set up")
            creds, _ = await self.store.federation_token(
                (self.state.sts_access_key, self.state.sts_secret_key),
                f"r2-temp-{parent.id[:8]}",
                ttl,
                pol.session_policy(bucket, permission, prefixes, objects),
            )
            kind = "sts"
        else:
            creds = {"accessKeyId": secrets.token_hex(16), "secretAccessKey": secrets.token_hex(32)}
            actions = pol.temp_actions(bucket, permission, prefixes, objects)
            await self.store.put(
                f"temp-{creds['accessKeyId']}", creds["accessKeyId"], creds["secretAccessKey"], actions
            )
            kind = "identity"
        record = TempCredential(
            creds["accessKeyId"], parent.id, bucket, permission, time.time() + ttl, kind, prefixes, objects
        )
        async with self._lock:
            self.state.temp[record.access_key_id] = record
            await self._save()
        log.info("temporary credentials minted", access_key_id=record.access_key_id, ttl=ttl, kind=kind)
        return creds

    async def revoke_temp(self, access_key_id: str) -> bool:
        """Revoke now. Only emulator-held identities can be; STS tokens expire on their own."""
        async with self._lock:
            record = self.state.temp.get(access_key_id)
            if record is None:
                return False
            if record.kind == "identity":
                await self.store.delete(f"temp-{access_key_id}", access_key_id)
            del self.state.temp[access_key_id]
            await self._save()
        return record.kind == "identity"

    async def sweep_expired(self) -> None:
        now = time.time()
        for akid in [k for k, r in self.state.temp.items() if r.expires_at <= now]:
            await self.revoke_temp(akid)

    async def _sweeper(self) -> None:
        while True:
            try:
                await self.sweep_expired()
            except Exception as exc:  # keep sweeping; one failed revoke must not stop the others
                log.warning("expiry sweep failed", error=str(exc))
            await anyio.sleep(0.2)

    async def force_revoke(self, request: Request) -> Any:
        """Test hook: revoke temporary credentials before their expiry (root token only)."""
        self._require_root(request)
        akid = request.path_params["access_key_id"]
        if not await self.revoke_temp(akid):
            raise ApiError(409, 10040, f"{akid}: unknown, or an STS credential that cannot be revoked early")
        return {"revoked": akid}

    async def rate_limit(self, request: Request) -> Any:
        """Test hook: make temp-credential requests answer 429 for `seconds` (root token only)."""
        self._require_root(request)
        body = await self._body(request)
        seconds = float(body.get("seconds", 0))
        self._rate_limited_until = time.time() + seconds
        self._retry_after = int(body.get("retry_after", seconds))
        return {"rate_limited_for": seconds}

    def _require_root(self, request: Request) -> None:
        if self._bearer(request).value_sha256 != token_secret(self.state.root_token):
            raise ApiError(403, 10000, "Authentication error")

    # --- buckets and CORS --------------------------------------------------------------------
    async def _require_bucket(self, bucket: str, request: Request | None = None) -> None:
        # Every local bucket lives in the default jurisdiction; R2 finds a bucket only in its own.
        where = (request.headers.get("cf-r2-jurisdiction") if request is not None else None) or "default"
        if where not in JURISDICTIONS:
            raise ApiError(400, 10040, f"cf-r2-jurisdiction: unknown jurisdiction {where!r}")
        if where != "default":
            raise ApiError(
                404, 10006, f"The specified bucket does not exist in jurisdiction {where}: {bucket}"
            )
        async with self.store.admin_client() as s3:
            try:
                await s3.head_bucket(Bucket=bucket)
            except ClientError:
                raise ApiError(404, 10006, f"The specified bucket does not exist: {bucket}") from None

    async def create_bucket(self, request: Request) -> Any:
        self._require_admin(request, write=True)
        name = (await self._body(request)).get("name", "")
        if not isinstance(name, str) or not 3 <= len(name) <= 63:
            raise ApiError(400, 10005, "name: bucket names are 3-63 characters")
        async with self.store.admin_client() as s3:
            try:
                await s3.create_bucket(Bucket=name)
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                    raise ApiError(
                        409, 10004, f"The bucket you tried to create already exists: {name}"
                    ) from None
                raise ApiError(400, 10005, exc.response["Error"].get("Message", "invalid bucket")) from None
        return {"name": name, "creation_date": utc_iso(), "location": "enam", "storage_class": "Standard"}

    async def list_buckets(self, request: Request) -> Any:
        self._require_admin(request, write=False)
        async with self.store.admin_client() as s3:
            out = await s3.list_buckets()
        return {
            "buckets": [
                {"name": b["Name"], "creation_date": b["CreationDate"].strftime("%Y-%m-%dT%H:%M:%SZ")}
                for b in out.get("Buckets", [])
            ]
        }

    async def get_cors(self, request: Request) -> Any:
        self._require_admin(request, write=False)
        bucket = request.path_params["bucket"]
        await self._require_bucket(bucket, request)
        async with self.store.admin_client() as s3:
            try:
                rules = (await s3.get_bucket_cors(Bucket=bucket)).get("CORSRules", [])
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "NoSuchCORSConfiguration":
                    raise ApiError(404, 10059, "The CORS configuration does not exist.") from None
                raise
        return from_s3_rules(rules)

    async def put_cors(self, request: Request) -> Any:
        self._require_admin(request, write=True)
        bucket = request.path_params["bucket"]
        await self._require_bucket(bucket, request)
        rules = (await self._body(request)).get("rules")
        if not isinstance(rules, list):
            raise ApiError(400, 10040, "rules: must be a list")
        try:
            parsed = to_s3_rules(rules)
        except InvalidCors as exc:
            raise ApiError(400, 10040, f"The CORS configuration is invalid: {exc}") from None
        async with self.store.admin_client() as s3:
            if parsed:
                await s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": parsed})
            else:
                await s3.delete_bucket_cors(Bucket=bucket)
        return None

    async def delete_cors(self, request: Request) -> Any:
        self._require_admin(request, write=True)
        bucket = request.path_params["bucket"]
        await self._require_bucket(bucket, request)
        async with self.store.admin_client() as s3:
            await s3.delete_bucket_cors(Bucket=bucket)
        return None

    # --- app --------------------------------------------------------------------------------
    def app(self) -> Starlette:
        acct = "/accounts/{account_id}"
        routes = [
            self._route("/user/tokens", self.create_token, "POST"),
            self._route("/user/tokens/verify", self.verify_user, "GET"),
            self._route("/user/tokens/permission_groups", self.permission_groups, "GET"),
            self._route("/user/tokens/{token_id}", self.get_token, "GET"),
            self._route("/user/tokens/{token_id}", self.update_token, "PUT"),
            self._route("/user/tokens/{token_id}", self.delete_token, "DELETE"),
            self._route(f"{acct}/tokens", self.create_token, "POST"),
            self._route(f"{acct}/tokens/verify", self.verify_account, "GET"),
            self._route(f"{acct}/tokens/permission_groups", self.permission_groups, "GET"),
            self._route(f"{acct}/tokens/{{token_id}}", self.get_token, "GET"),
            self._route(f"{acct}/tokens/{{token_id}}", self.update_token, "PUT"),
            self._route(f"{acct}/tokens/{{token_id}}", self.delete_token, "DELETE"),
            self._route(f"{acct}/r2/temp-access-credentials", self.temp_credentials, "POST"),
            self._route(f"{acct}/r2/buckets", self.create_bucket, "POST"),
            self._route(f"{acct}/r2/buckets", self.list_buckets, "GET"),
            self._route(f"{acct}/r2/buckets/{{bucket}}/cors", self.get_cors, "GET"),
            self._route(f"{acct}/r2/buckets/{{bucket}}/cors", self.put_cors, "PUT"),
            self._route(f"{acct}/r2/buckets/{{bucket}}/cors", self.delete_cors, "DELETE"),
            self._route(
                "/_emulator/temp-access-credentials/{access_key_id}/revoke", self.force_revoke, "POST"
            ),
            self._route("/_emulator/rate-limit", self.rate_limit, "POST"),
            *self.more_routes,
        ]

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._sweeper)
                yield
                tg.cancel_scope.cancel()

        return Starlette(routes=[Mount(API_PREFIX, routes=routes), *self.mounts], lifespan=lifespan)
