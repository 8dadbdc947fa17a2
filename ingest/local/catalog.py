"""R2 Data Catalog on the local R2: the management API the `cloudflare` SDK calls, and an Iceberg REST
catalog that answers as R2's does.

The catalog itself is SeaweedFS's (`weed mini -s3.port.iceberg`), which keeps its tables in a *table
bucket*. This module puts R2's face on it: the catalog URI `<api>/catalog/<account_id>/<bucket>` and the
warehouse `<account_id>_<bucket>` per bucket, bearer authentication with a Cloudflare API token (Data
Catalog permission to call it, R2 storage permission on the bucket), and, in every table it loads,
S3 credentials vended for the presenting token (its own R2 keys: token id, SHA-256 of its value), as
R2's catalog vends credentials that inherit the token's storage permissions.

A difference that cannot be hidden: R2 keeps a bucket's tables inside that bucket; SeaweedFS keeps them
in the table bucket `<bucket>-catalog`, which refuses writes outside table locations. A table's
`location` says which bucket holds it; writers put data files under it, which works for both.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingest.local import policy as pol
from ingest.local.emulator import ApiError, Emulator, token_status
from ingest.local.state import token_secret

TABLE_BUCKET_SUFFIX = pol.TABLE_BUCKET_SUFFIX
CATALOG_PATH = "/catalog"  # the catalog URI is <api base>/catalog/<account_id>/<bucket>
_HOP_HEADERS = {"content-type", "accept", "x-iceberg-access-delegation"}


def table_bucket(bucket: str) -> str:
    """The SeaweedFS table bucket that holds `bucket`'s catalog."""
    return f"{bucket}{TABLE_BUCKET_SUFFIX}"


def iceberg_error(status: int, kind: str, message: str) -> JSONResponse:
    """An error as the Iceberg REST spec spells it (what pyiceberg and Spark read)."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class Catalogs:
    """The management API (`/accounts/{id}/r2-catalog…`) and the REST proxy of every bucket's catalog."""

    def __init__(self, emulator: Emulator, iceberg_url: str, s3_url: str, admin: tuple[str, str]) -> None:
        self.emulator = emulator
        self.state = emulator.state
        self.iceberg_url = iceberg_url
        self.s3_url = s3_url
        self._admin = admin
        self._http = httpx.AsyncClient(timeout=60.0)
        self._token: tuple[str, float] | None = None  # SeaweedFS's OAuth token, and when it expires

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- management API ----------------------------------------------------------------------
    def _warehouse(self, bucket: str) -> dict[str, Any]:
        entry = self.state.catalogs[bucket]
        return {
            "id": entry["id"],
            "bucket": bucket,
            "name": f"{self.state.account_id}_{bucket}",
            "status": "active" if entry.get("active") else "inactive",
            "credential_status": "present" if entry.get("credential") else "absent",
            "maintenance_config": entry.get("maintenance") or _default_maintenance(),
        }

    def _known(self, request: Request) -> str:
        bucket = str(request.path_params["bucket"])
        if bucket not in self.state.catalogs:
            raise ApiError(404, 40401, f"R2 Data Catalog is not enabled on bucket {bucket}")
        return bucket

    async def list_catalogs(self, request: Request) -> Any:
        self.emulator._require_admin(request, write=False)
        return {"warehouses": [self._warehouse(b) for b in sorted(self.state.catalogs)]}

    async def get(self, request: Request) -> Any:
        self.emulator._require_admin(request, write=False)
        return self._warehouse(self._known(request))

    async def enable(self, request: Request) -> Any:
        self.emulator._require_admin(request, write=True)
        bucket = str(request.path_params["bucket"])
        if bucket != self.state.default_bucket:
            raise ApiError(
                400,
                10006,
                f"the local R2 serves a catalog for its bucket {self.state.default_bucket} only, "
                f"not for {bucket}",
            )
        entry = self.state.catalogs.setdefault(bucket, {"id": str(uuid.uuid4())})
        entry["active"] = True
        await self.emulator._save()
        return {"id": entry["id"], "name": f"{self.state.account_id}_{bucket}"}

    async def disable(self, request: Request) -> Any:
        self.emulator._require_admin(request, write=True)
        self.state.catalogs[self._known(request)]["active"] = False
        await self.emulator._save()
        return None

    async def get_maintenance(self, request: Request) -> Any:
        self.emulator._require_admin(request, write=False)
        entry = self.state.catalogs[self._known(request)]
        return {
            "maintenance_config": entry.get("maintenance") or _default_maintenance(),
            "credential_status": ("present" if entry.get("credential") else "absent"),
        }

    async def update_maintenance(self, request: Request) -> Any:
        self.emulator._require_admin(request, write=True)
        entry = self.state.catalogs[self._known(request)]
        body = await self.emulator._body(request)
        config = entry.setdefault("maintenance", _default_maintenance())
        for part in ("compaction", "snapshot_expiration"):
            if isinstance(body.get(part), dict):
                config[part] = {**config.get(part, {}), **body[part]}
        await self.emulator._save()
        return config

    async def store_credential(self, request: Request) -> Any:
        self.emulator._require_admin(request, write=True)
        entry = self.state.catalogs[self._known(request)]
        body = await self.emulator._body(request)
        entry["credential"] = bool(body.get("token"))
        await self.emulator._save()
        return {}

    def management_routes(self, acct: str) -> list[Route]:
        """Under both names the SDK knows: `r2-catalog` (its methods) and `basin-catalog` (the path its
        deprecation notices point to)."""
        return [route for name in ("r2-catalog", "basin-catalog") for route in self._routes(f"{acct}/{name}")]

    def _routes(self, base: str) -> list[Route]:
        r = self.emulator._route
        return [
            r(base, self.list_catalogs, "GET"),
            r(f"{base}/{{bucket}}", self.get, "GET"),
            r(f"{base}/{{bucket}}/enable", self.enable, "POST"),
            r(f"{base}/{{bucket}}/disable", self.disable, "POST"),
            r(f"{base}/{{bucket}}/maintenance-configs", self.get_maintenance, "GET"),
            r(f"{base}/{{bucket}}/maintenance-configs", self.update_maintenance, "POST"),
            r(f"{base}/{{bucket}}/credential", self.store_credential, "POST"),
        ]

    # --- the Iceberg REST catalog -------------------------------------------------------------
    def catalog_routes(self) -> list[Route]:
        methods = ["GET", "HEAD", "POST", "DELETE"]
        return [Route("/{account_id}/{bucket}/v1/{rest:path}", self.proxy, methods=methods)]

    async def proxy(self, request: Request) -> Response:
        account, bucket = request.path_params["account_id"], request.path_params["bucket"]
        if account != self.state.account_id:
            return iceberg_error(404, "NoSuchWarehouseException", f"unknown account {account}")
        tok = self.emulator._presented(request)
        if tok is None or token_status(tok) != "active":
            return iceberg_error(401, "NotAuthorizedException", "a valid Cloudflare API token is required")
        caps = self.emulator._caps(tok)
        write = request.method in ("POST", "DELETE")
        if not caps.catalog_allows(write):
            needed = pol.CATALOG_WRITE if write else pol.CATALOG_READ
            return iceberg_error(403, "ForbiddenException", f"the token lacks the permission {needed}")
        if not caps.allows(bucket, write=False):
            return iceberg_error(
                403, "ForbiddenException", f"the token has no R2 storage permission on {bucket}"
            )
        entry = self.state.catalogs.get(bucket)
        if entry is None or not entry.get("active"):
            return iceberg_error(
                404, "NoSuchWarehouseException", f"R2 Data Catalog is not enabled on bucket {bucket}"
            )
        params = dict(request.query_params)
        if "warehouse" in params:
            params["warehouse"] = table_bucket(bucket)
        body = await request.body()
        answer = await self._forward(
            request.method, f"/v1/{request.path_params['rest']}", params, body, request
        )
        content = answer.content
        if answer.status_code == 200 and answer.headers.get("content-type", "").startswith(
            "application/json"
        ):
            document = answer.json()
            if isinstance(document, dict) and "metadata-location" in document:
                value = request.headers["authorization"].removeprefix("Bearer ").strip()
                document["config"] = {
                    **(document.get("config") or {}),
                    "s3.endpoint": self.s3_url,
                    "s3.access-key-id": tok.id,
                    "s3.secret-access-key": token_secret(value),
                    "s3.region": "auto",
                }
                return JSONResponse(document)
        headers = {"content-type": answer.headers.get("content-type", "application/json")}
        return Response(content, status_code=answer.status_code, headers=headers)

    async def _forward(
        self, method: str, path: str, params: dict[str, str], body: bytes, request: Request
    ) -> httpx.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() in _HOP_HEADERS}
        for attempt in range(2):
            headers["authorization"] = f"Bearer {await self._seaweed_token(fresh=attempt > 0)}"
            answer = await self._http.request(
                method, self.iceberg_url + path, params=params, content=body, headers=headers
            )
            if answer.status_code != 401:
                return answer
        return answer

    async def _seaweed_token(self, fresh: bool = False) -> str:
        if self._token is not None and not fresh and self._token[1] > time.monotonic() + 60:
            return self._token[0]
        key, secret = self._admin
        answer = await self._http.post(
            self.iceberg_url + "/v1/oauth/tokens",
            data={"grant_type": "client_credentials", "client_id": key, "client_secret": secret},
        )
        answer.raise_for_status()
        doc = answer.json()
        self._token = (str(doc["access_token"]), time.monotonic() + float(doc.get("expires_in", 3600)))
        return self._token[0]


def _default_maintenance() -> dict[str, Any]:
    return {
        "compaction": {"state": "disabled", "target_size_mb": "128"},
        "snapshot_expiration": {"state": "disabled", "max_snapshot_age": "7d", "min_snapshots_to_keep": 100},
    }
