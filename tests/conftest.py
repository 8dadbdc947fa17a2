"""Shared fixtures: one real local R2 (`ingest local` as a subprocess) for the whole test session."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pytest
from cloudflare import Cloudflare

from ingest.r2.endpoint import client_config


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL, 0, 0, 0)


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def duck(query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Every row of a DuckDB query, on a connection of its own: DuckDB's default connection carries
    an unfinished result from one test into the next (DuckDB 2 refuses the next query then), and a
    connection that is not held may be closed before its rows are fetched (DuckDB 1.4)."""
    with duckdb.connect() as con:
        return con.execute(query, params).fetchall()


@dataclass
class LocalR2:
    """Connection details of the running local R2, plus real clients built from them."""

    env: dict[str, str]
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def endpoint_url(self) -> str:
        return self.env["R2_ENDPOINT_URL"]

    @property
    def api_base_url(self) -> str:
        return self.env["CLOUDFLARE_API_BASE_URL"]

    @property
    def account_id(self) -> str:
        return self.env["R2_ACCOUNT_ID"]

    @property
    def bucket(self) -> str:
        return self.env["R2_BUCKET_NAME"]

    @property
    def api_token(self) -> str:
        return self.env["R2_API_TOKEN"]

    @property
    def root_token(self) -> str:
        return self.env["CLOUDFLARE_API_TOKEN"]

    def s3(self, key: str, secret: str, session_token: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=session_token,
            config=client_config(),
        )

    def token_s3(self) -> Any:
        """S3 client from the default bucket token (id, sha256(value))."""
        return self.s3(self.env["R2_ACCESS_KEY_ID"], self.env["R2_SECRET_ACCESS_KEY"])

    def catalog(self, token: str | None = None) -> Any:
        """PyIceberg's REST catalog on the bucket's R2 Data Catalog, as a user connects to R2's."""
        from pyiceberg.catalog.rest import RestCatalog

        return RestCatalog(
            f"r2-{uuid.uuid4().hex[:6]}",
            uri=self.env["R2_CATALOG_URI"],
            warehouse=self.env["R2_WAREHOUSE"],
            token=token or self.env["R2_CATALOG_TOKEN"],
        )

    def cf(self, token: str | None = None) -> Cloudflare:
        return Cloudflare(api_token=token or self.root_token, base_url=self.api_base_url, max_retries=0)


def start_local_r2(directory: Path, timeout: float = 120.0, s3_port: int = 0, api_port: int = 0) -> LocalR2:
    env_file = directory / "local.env"
    directory.mkdir(parents=True, exist_ok=True)
    env_file.unlink(missing_ok=True)
    log = (directory / "ingest-local.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest",
            "local",
            "--dir",
            str(directory / "r2"),
            "--env-file",
            str(env_file),
            "--s3-port",
            str(s3_port),
            "--api-port",
            str(api_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + timeout
    while not env_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"ingest local did not start:\n{(directory / 'ingest-local.log').read_text()}")
        time.sleep(0.2)
    return LocalR2(read_env_file(env_file), directory, proc)


def stop_local_r2(r2: LocalR2) -> None:
    if r2.proc.poll() is None:
        r2.proc.send_signal(signal.SIGTERM)
        try:
            r2.proc.wait(30)
        except subprocess.TimeoutExpired:
            r2.proc.kill()
            r2.proc.wait(5)


@pytest.fixture(scope="session")
def local_r2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalR2]:
    r2 = start_local_r2(tmp_path_factory.mktemp("local-r2"))
    try:
        yield r2
    finally:
        stop_local_r2(r2)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No R2 settings leak in from the developer's shell."""
    for name in list(os.environ):
        if name.startswith(("R2_", "CLOUDFLARE_")):
            monkeypatch.delenv(name)
    with contextlib.suppress(FileNotFoundError):
        monkeypatch.chdir(Path.cwd())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port with its own data directory (appendonly), stopped
    by its PID; `stop()` and `start()` again keep the data (a restart, not a new server)."""

    dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not self._answers():
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {self.port} never answered")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes its appendonly file and exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", _free_port()).start()
    try:
        yield server
    finally:
        server.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
