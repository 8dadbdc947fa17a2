"""The worker's HTTP server: liveness, readiness and Prometheus metrics (push sources join later)."""

from __future__ import annotations

import contextlib
import socket

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ingest.config import ConfigError
from ingest.pipeline import Health


def app(health: Health) -> Starlette:
    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        body = {"ready": health.ready, "reason": health.reason, "last_upload": health.last_upload}
        return JSONResponse(body, status_code=200 if health.ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


def bind(listen: str) -> socket.socket:
    """Bind `host:port` now, so a taken port is a clear startup error rather than a log line later."""
    host, _, port = listen.rpartition(":")
    try:
        sock = socket.create_server((host or "127.0.0.1", int(port)), reuse_port=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"server.listen: cannot listen on {listen!r}: {exc}") from None
    return sock


class ProbeServer:
    """uvicorn on an already-bound socket; signals stay with the worker, not uvicorn."""

    def __init__(self, health: Health, sock: socket.socket) -> None:
        self.sock = sock
        self.server = uvicorn.Server(
            uvicorn.Config(app(health), log_level="warning", access_log=False, lifespan="off")
        )
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
