"""The local R2 never leaves a SeaweedFS process behind, however `ingest local` ends."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import start_local_r2


def _weed_children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and "(weed)" in stat:
                pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_orphan_weed(tmp_path: Path, sig: signal.Signals) -> None:
    r2 = start_local_r2(tmp_path)
    weeds = _weed_children(r2.proc.pid)
    assert len(weeds) == 1
    os.kill(r2.proc.pid, sig)
    r2.proc.wait(30)
    deadline = time.monotonic() + 20
    while _alive(weeds[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(weeds[0]), f"weed {weeds[0]} survived {sig.name} of ingest local"


def _sockets(directory: Path) -> set[Path]:
    """The `seaweedfs-<service>-<port>.sock` files in the temp directory named for the ports of the
    local R2 kept in `directory` (weed's HTTP ports and their gRPC twins)."""
    saved = json.loads((directory / "r2" / "state.json").read_text())["ports"]
    ports = {port + offset for port in saved.values() for offset in (0, 10000)}
    found = Path(tempfile.gettempdir()).glob("seaweedfs-*.sock")
    return {path for path in found if int(path.stem.rsplit("-", 1)[-1]) in ports}


def test_a_stopped_seaweed_leaves_no_sockets_and_a_start_removes_stale_ones(tmp_path: Path) -> None:
    """weed leaves its unix sockets in the temp directory when it stops; they used to pile up."""
    from tests.conftest import stop_local_r2

    r2 = start_local_r2(tmp_path)
    made = _sockets(tmp_path)
    assert made, "weed made no sockets: nothing would be tested"
    stop_local_r2(r2)  # SIGTERM: `ingest local` stops weed itself
    assert not _sockets(tmp_path)
    for path in made:  # as a SIGKILLed weed leaves them: plain files where sockets were
        path.write_text("")
    r2 = start_local_r2(tmp_path)  # same directory, same ports
    try:
        assert all(p.is_socket() for p in made if p.exists()), "a stale file was kept"
    finally:
        stop_local_r2(r2)


def test_a_dead_seaweed_is_restarted_on_its_ports_and_a_restart_keeps_the_ports(tmp_path: Path) -> None:
    from tests.conftest import read_env_file, stop_local_r2

    r2 = start_local_r2(tmp_path)
    try:
        s3 = r2.token_s3()
        s3.put_object(Bucket=r2.bucket, Key="kept", Body=b"1")
        [weed] = _weed_children(r2.proc.pid)
        os.kill(weed, signal.SIGKILL)  # SeaweedFS dies under a running `ingest local`
        deadline = time.monotonic() + 60
        new: list[int] = []
        while time.monotonic() < deadline and not new:
            new = [p for p in _weed_children(r2.proc.pid) if p != weed and _alive(p)]
            time.sleep(0.2)
        assert new, "SeaweedFS was not restarted"
        deadline = time.monotonic() + 60
        while True:  # the same endpoint answers again, with the data
            try:
                assert s3.get_object(Bucket=r2.bucket, Key="kept")["Body"].read() == b"1"
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert r2.proc.poll() is None
    finally:
        stop_local_r2(r2)
    log = (tmp_path / "ingest-local.log").read_text()
    assert "seaweedfs exited unexpectedly; restarting it on the same ports" in log

    again = start_local_r2(tmp_path)  # same --dir: the same ports, so env files stay right
    try:
        for name in ("R2_ENDPOINT_URL", "CLOUDFLARE_API_BASE_URL"):
            assert again.env[name] == r2.env[name]
        assert again.token_s3().get_object(Bucket=again.bucket, Key="kept")["Body"].read() == b"1"
        assert read_env_file(tmp_path / "local.env") == again.env
    finally:
        stop_local_r2(again)


def test_a_port_kept_for_the_directory_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from tests.conftest import stop_local_r2

    r2 = start_local_r2(tmp_path)
    stop_local_r2(r2)
    port = int(r2.endpoint_url.rsplit(":", 1)[1])
    env_file = tmp_path / "local.env"
    assert env_file.exists()  # the run that stopped left it
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "ingest",
                "local",
                "--dir",
                str(tmp_path / "r2"),
                "--check",
                "--env-file",
                str(env_file),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    assert r.returncode == 1, r.stderr
    assert f"ports {port}" in r.stderr and "--new-ports" in r.stderr
    # the old env file was removed at start: a script waiting for it does not take this failed
    # start for a ready one
    assert not env_file.exists()


def test_fresh_seaweed_ports_never_take_the_port_the_api_will_bind() -> None:
    """Seen in CI: weed took the API port chosen for the emulator, which then could not bind."""
    from ingest.local.seaweed import GRPC_OFFSET, SeaweedPorts

    avoid = set(range(20000, 21500))
    for _ in range(30):
        ports = SeaweedPorts.allocate(avoid=avoid)
        taken = {p for port in ports.saved().values() for p in (port, port + GRPC_OFFSET)}
        assert not taken & avoid, ports
