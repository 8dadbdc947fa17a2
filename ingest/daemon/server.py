"""The worker's HTTP server: liveness, readiness, Prometheus metrics, and browser upload grants."""

from __future__ import annotations

import contextlib
import hmac
import os
import socket

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.config import ConfigError
from ingest.daemon.connections import header_deadline
from ingest.daemon.grants import GrantError, UploadGrants
from ingest.daemon.health import Health
from ingest.logs import get_logger
from ingest.r2.errors import describe

log = get_logger("ingest.daemon.server")
ACCEPT_BURST = 16  # connections accepted in a row (see ProbeServer)
LISTEN_QUEUE = 1024


def app(
    health: Health,
    grants: UploadGrants | None = None,
    upload_token: SecretStr | None = None,
    cors_origins: list[str] | None = None,
    routes: list[BaseRoute] | None = None,
) -> Starlette:
    """The worker's one server; `routes`: those of push sources (POST /v1/records)."""

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        body = {"ready": health.ready, "reason": health.reason, "last_upload": health.last_upload}
        return JSONResponse(body, status_code=200 if health.ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def uploads(request: Request) -> Response:
        """`{"filename": "events.jsonl"}` → `{url, key, expires_at, headers}` (a presigned PUT)."""
        token = upload_token.get_secret_value() if upload_token is not None else ""
        if grants is None or not token:
            return _error(404, "upload grants are off: set server.upload_token (INGEST_UPLOAD_TOKEN)")
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), token.encode()):
            return _error(401, "Authorization: Bearer <server.upload_token> required", bearer=True)
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'body: must be JSON like {"filename": "events.jsonl"}')
        filename = body.get("filename") if isinstance(body, dict) else None
        content_type = body.get("content_type", "") if isinstance(body, dict) else ""
        if not isinstance(filename, str) or not isinstance(content_type, str):
            return _error(400, 'filename: required, a string, e.g. {"filename": "events.jsonl"}')
        try:
            granted = await grants.grant(filename, content_type)
        except GrantError as exc:
            return _error(400, str(exc))
        except Exception as exc:  # answered here, inside the CORS middleware: a browser can read it
            log.error("upload grant failed", error=describe(exc))
            return _error(503, f"could not sign an upload URL now ({type(exc).__name__}); try again", retry=5)
        log.info("upload granted", key=granted.key, expires_at=granted.as_json()["expires_at"])
        return JSONResponse(granted.as_json(), status_code=201)

    middleware = []
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cors_origins,
                allow_methods=["POST"],
                allow_headers=["authorization", "content-type", "content-encoding", "idempotency-key"],
                max_age=600,
            )
        )
    middleware.append(Middleware(ErrorsInside))
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/v1/uploads", uploads, methods=["POST"]),
            *(routes or []),
        ],
        middleware=middleware,
    )


class ErrorsInside:
    """An unexpected error in a route, answered here as a JSON 500 and logged: Starlette's own answer
    comes from outside the CORS middleware, without its headers, and a browser shows only "Failed to
    fetch". An error after the response started is left to the server (the client sees a cut)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:
                raise
            log.error("request failed", path=scope.get("path", ""), error=describe(exc), exc_info=exc)
            answer = _error(500, f"internal error ({type(exc).__name__}); the worker's log says more")
            await answer(scope, receive, send)


def _error(status: int, message: str, bearer: bool = False, retry: int = 0) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="ingest"'} if bearer else {}
    if retry:
        headers["Retry-After"] = str(retry)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def bind(listen: str) -> socket.socket:
    """Bind `host:port` now, so a taken port is a clear startup error rather than a log line later."""
    host, _, port = listen.rpartition(":")
    try:
        sock = socket.create_server((host or "127.0.0.1", int(port)), reuse_port=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"server.listen: cannot listen on {listen!r}: {exc}") from None
    return sock


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or []:  # asyncio set the kernel's queue to ACCEPT_BURST: back to a long one
            sock.listen(LISTEN_QUEUE)


class ProbeServer:
    """uvicorn on an already-bound socket; signals stay with the worker, not uvicorn."""

    def __init__(
        self,
        application: Starlette,
        sock: socket.socket,
        tls_cert: str = "",
        tls_key: str = "",
        header_timeout: float = 30.0,
        max_connections: int = 0,
    ) -> None:
        self.sock = sock
        if bool(tls_cert) != bool(tls_key):
            raise ConfigError("server.tls_cert, server.tls_key: set both (PEM files) or neither")
        for key, path in (("tls_cert", tls_cert), ("tls_key", tls_key)):
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"server.{key}: cannot read {path}; point it at a readable PEM file")
        config = uvicorn.Config(
            application,
            log_level="warning",
            access_log=False,
            lifespan="off",
            log_config=None,
            ssl_certfile=tls_cert or None,
            ssl_keyfile=tls_key or None,
            http=header_deadline(header_timeout, max_connections),
            # asyncio accepts up to `backlog` connections in a row before any of them is seen by
            # the protocol (which closes what is over max_connections): a small number keeps that
            # burst within the descriptors kept free. The kernel's queue is set back after start.
            backlog=ACCEPT_BURST,
        )
        try:
            config.load()  # reads the certificate now: a bad one is a start-up error, not a log line
        except (OSError, ValueError) as exc:
            raise ConfigError(f"server.tls_cert: cannot use {tls_cert} with {tls_key}: {exc}") from None
        self.server = _Server(config)
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def serve(self) -> None:
        try:
            await self.server.serve([self.sock])
        finally:
            self.sock.close()

    def stop(self) -> None:
        self.server.should_exit = True
