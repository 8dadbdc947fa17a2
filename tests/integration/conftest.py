"""Run the real `ingest run` as a subprocess against the real local R2, and read back what it wrote."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import LocalR2, duck, start_local_r2, stop_local_r2


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_toml(path: Path, config: dict[str, Any]) -> Path:
    lines: list[str] = []
    for section, body in config.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as out:
            out.write(data)
        data = sink.getvalue().to_pybytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    cols = list(rows[0])
    path.write_text(",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ingest_without_r2(
    cwd: Path, *args: str, timeout: float = 180, **extra: str
) -> subprocess.CompletedProcess[str]:
    """`ingest …` in `cwd` with no R2 settings at all: it falls back to the embedded local R2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))} | extra
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll until `predicate()` is truthy; a bounded loop that fails naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def readyz(port: int) -> int | None:
    """The worker's /readyz status code, None while nothing listens."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return None


def today_dir() -> str:
    return datetime.now(UTC).strftime("%Y/%m/%d")


@dataclass
class Job:
    """One ingest job: a working directory, an inbox, a key prefix of its own in the shared bucket."""

    r2: LocalR2
    dir: Path
    prefix: str
    endpoint_url: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def inbox(self) -> Path:
        return self.dir / "inbox"

    def configure(self, **sections: dict[str, Any]) -> Path:
        base: dict[str, Any] = {
            "sources": [{"kind": "directory", "path": str(self.inbox), "settle_seconds": "200ms"}],
            "output": {"prefix": self.prefix},
            "spool": {"dir": str(self.dir / "spool")},
            "retry": {"initial": "50ms", "max": "1s", "max_elapsed": "120s"},
            "log": {"format": "json"},
            # A port of its own: the default (8080) is one for every worker on the machine, and a
            # second daemon test running beside this one (pytest -n 2) could not start.
            "server": {"listen": f"127.0.0.1:{free_port()}"},
        }
        for name, body in sections.items():
            if isinstance(body, dict) and isinstance(base.get(name), dict):
                base[name] = {**base[name], **body}
            elif isinstance(body, dict) and name == "sources":
                base["sources"] = [{**base["sources"][0], **body}]
            else:
                base[name] = body
        self.config = base
        return write_toml(self.dir / "ingest.toml", base)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_"))}
        env |= {
            "R2_ENDPOINT_URL": self.endpoint_url or self.r2.endpoint_url,
            "R2_ACCOUNT_ID": self.r2.account_id,
            "R2_BUCKET_NAME": self.r2.bucket,
            "R2_ACCESS_KEY_ID": self.r2.env["R2_ACCESS_KEY_ID"],
            "R2_SECRET_ACCESS_KEY": self.r2.env["R2_SECRET_ACCESS_KEY"],
            "PYTHONUNBUFFERED": "1",
        }
        return env | extra

    def command(self, *args: str) -> list[str]:
        if not self.config:
            self.configure()
        return [sys.executable, "-m", "ingest", "--config", str(self.dir / "ingest.toml"), "run", *args]

    def cli(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """Any other `ingest` command (cors, presign, …) with this job's config and R2 environment."""
        if not self.config:
            self.configure()
        return subprocess.run(
            [sys.executable, "-m", "ingest", "--config", str(self.dir / "ingest.toml"), *args],
            cwd=self.dir,
            env=self.env(**env),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    def run_once(self, *args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
        return self.cli("run", "--once", *args, timeout=timeout, **env)

    def pipe(self, data: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`ingest run --once --source stdin ARGS` with `data` on its standard input."""
        if not self.config:
            self.configure()
        with data.open("rb") as stdin:
            return subprocess.run(
                self.command("--once", "--source", "stdin", *args),
                cwd=self.dir,
                env=self.env(),
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
            )

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.dir,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def all_keys(self) -> list[str]:
        s3 = self.r2.token_s3()
        keys: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.r2.bucket, Prefix=self.prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)

    def keys(self) -> list[str]:
        """Data objects only: not dead letters (`{prefix}_errors/`), uploads (`{prefix}_landing/`), the
        queue ledger (`{prefix}_ledger/`) nor the upload index (`{prefix}_index/`)."""
        internal = tuple(f"{self.prefix}{p}/" for p in ("_errors", "_landing", "_ledger", "_index"))
        return [k for k in self.all_keys() if not k.startswith(internal)]

    def index_keys(self) -> list[str]:
        """The worker's index of what it uploaded (read by `ingest ls`)."""
        return [k for k in self.all_keys() if k.startswith(f"{self.prefix}_index/")]

    def landing_keys(self) -> list[str]:
        """Browser uploads not yet ingested, and the claim markers beside them."""
        return [k for k in self.all_keys() if k.startswith(f"{self.prefix}_landing/")]

    def error_keys(self) -> list[str]:
        return [k for k in self.all_keys() if k.startswith(f"{self.prefix}_errors/")]

    def dead_letters(self) -> list[dict[str, Any]]:
        s3 = self.r2.token_s3()
        out: list[dict[str, Any]] = []
        for key in self.error_keys():
            body = s3.get_object(Bucket=self.r2.bucket, Key=key)["Body"].read()
            out += [json.loads(line) for line in body.splitlines()]
        return out

    def batch_ids(self) -> dict[str, str]:
        """key → x-amz-meta-batch-id of every data object."""
        s3 = self.r2.token_s3()
        return {
            k: s3.head_object(Bucket=self.r2.bucket, Key=k)["Metadata"].get("batch-id", "")
            for k in self.keys()
        }

    def read(self, key: str) -> pa.Table:
        body = self.r2.token_s3().get_object(Bucket=self.r2.bucket, Key=key)["Body"].read()
        return pq.read_table(pa.BufferReader(body))

    def rows(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key in self.keys():
            out += self.read(key).to_pylist()
        return out


def readable_rows(job: Job, tmp: Path) -> list[dict[str, Any]]:
    """Every data object's rows, after checking that pyarrow, polars and DuckDB all open it and read
    the same number of rows from it."""
    out: list[dict[str, Any]] = []
    s3 = job.r2.token_s3()
    for n, key in enumerate(job.keys()):
        body = s3.get_object(Bucket=job.r2.bucket, Key=key)["Body"].read()
        path = tmp / f"object-{n}.parquet"
        path.write_bytes(body)
        table = pq.read_table(path)
        rows = table.to_pylist()  # also checks every string is valid UTF-8
        frame = pl.read_parquet(path)
        assert frame.height == len(rows), key
        assert frame.columns == table.column_names, key
        ((count,),) = duck(f"SELECT count(*) FROM read_parquet('{path}')")
        assert count == len(rows), key
        duck(f"SELECT * FROM read_parquet('{path}')")  # every column, every value
        out += rows
    return out


def logs_of(stderr: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@pytest.fixture
def job(local_r2: LocalR2, tmp_path: Path) -> Iterator[Job]:
    j = Job(local_r2, tmp_path, prefix=f"t-{uuid.uuid4().hex[:10]}/")
    j.inbox.mkdir()
    yield j


@dataclass
class OwnR2:
    """A local R2 of the test's own on fixed ports, which the test stops and starts again (the shared
    one must not go down under other tests)."""

    dir: Path
    s3_port: int
    api_port: int
    current: LocalR2 | None = None

    def start(self) -> LocalR2:
        self.current = start_local_r2(self.dir, s3_port=self.s3_port, api_port=self.api_port)
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            stop_local_r2(self.current)
            self.current = None
        wait_for(lambda: _closed(self.s3_port), 30, f"port {self.s3_port} to close")


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def own_r2(tmp_path: Path, job: Job) -> Iterator[OwnR2]:
    """A running R2 of this test's own, already the job's store; stopped at the end."""
    from ingest.local.seaweed import free_port_pairs

    s3_port, api_port = free_port_pairs(2)
    own = OwnR2(tmp_path / "own-r2", s3_port, api_port)
    job.r2 = own.start()
    try:
        yield own
    finally:
        own.stop()
