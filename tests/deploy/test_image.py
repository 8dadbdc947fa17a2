"""The container image: hadolint on the Dockerfile, its install commands in a clean venv, and (slow, as
root) the image itself built by buildah from the Dockerfile and run as its own user against the local R2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LocalR2
from tests.integration.conftest import Job, readable_rows, write_toml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    r = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow  # a whole install in a clean venv (40 s): `bash scripts/test -m slow tests/deploy`
def test_the_images_install_commands_install_a_working_ingest(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    # The image runs as a numeric non-root user, on a volume for the spool, with `ingest run`.
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["ingest"]' in text and 'CMD ["run"]' in text
    assert "INGEST_SPOOL_DIR=/var/lib/ingest/spool" in text and 'VOLUME ["/var/lib/ingest"]' in text
    build = re.search(r"RUN (pip wheel [^\n]+)", text)
    install = re.search(r"(pip install [^\n\\]+)", text)
    assert build and install
    # What the build stage copies, where it copies it.
    src = tmp_path / "src"
    src.mkdir()
    for name in re.findall(r"^COPY (?!--)(.+) \./", text, re.MULTILINE):
        for item in name.split():
            source = REPO / item
            if source.is_dir():
                shutil.copytree(source, src / item, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, src / item)
    wheels = tmp_path / "wheels"
    # The same commands, with the image's paths here (and pip's cache allowed, for speed).
    build_cmd = build.group(1).replace("/wheels", str(wheels)).replace("--no-cache-dir ", "")
    r = subprocess.run(
        [sys.executable, "-m", *build_cmd.split()], cwd=src, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-3000:]
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    install_cmd = install.group(1).strip().replace("/wheels", str(wheels)).removeprefix("pip ")
    wheel = sorted(wheels.glob("r2_ingest-*.whl"))
    assert len(wheel) == 1
    args = [a if "*" not in a else str(wheel[0]) for a in install_cmd.split()]
    r = subprocess.run([str(pip), *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]  # --no-index: every dependency came from the wheels
    version = subprocess.run([str(env_dir / "bin" / "ingest"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("ingest "), version.stderr


@pytest.fixture
def image() -> Iterator[str]:
    """The image built from the Dockerfile by `scripts/image` (buildah; the base made by debootstrap
    once, then kept); removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("building the image needs root (buildah, debootstrap)")
    tag = f"localhost/r2-ingest:test-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "image"), tag], capture_output=True, text=True, timeout=1500
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == tag
    yield tag
    subprocess.run(["buildah", "rmi", "--force", tag], capture_output=True, timeout=120)


@pytest.fixture
def container(image: str) -> Iterator[str]:
    r = subprocess.run(
        ["buildah", "from", "--pull-never", image], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120)


def _in_container(
    container: str, *cmd: str, volumes: dict[Path, str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`buildah run`: the image's own user, working directory and environment, the host's loopback."""
    args = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
    for host, inside in volumes.items():
        args += ["-v", f"{host}:{inside}"]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    return subprocess.run([*args, container, "--", *cmd], capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # builds the image (2–3 min; the base once): `bash scripts/test -m slow tests/deploy`
def test_the_image_builds_and_runs_once_as_user_10001_against_the_local_r2(
    container: str, local_r2: LocalR2, tmp_path: Path
) -> None:
    job = Job(local_r2, tmp_path, prefix=f"t-{uuid.uuid4().hex[:10]}/")
    data, spool = tmp_path / "data", tmp_path / "spool"
    (data / "inbox").mkdir(parents=True)
    spool.mkdir()
    rows = [{"id": i, "name": f"r{i}", "ok": i % 2 == 0} for i in range(1000)]
    (data / "inbox" / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_toml(
        data / "ingest.toml",
        {
            "sources": [{"kind": "directory", "path": "/data/inbox", "settle_seconds": "200ms"}],
            "output": {"prefix": job.prefix},
            "retry": {"initial": "50ms", "max": "1s", "max_elapsed": "60s"},
        },
    )
    for path in [data, data / "inbox", data / "inbox" / "events.jsonl", data / "ingest.toml", spool]:
        os.chown(path, 10001, 10001)  # the image's user owns its volumes, as a pod's fsGroup would make it
    env = {k: v for k, v in job.env().items() if k.startswith("R2_")}
    # The image's VOLUME first: buildah 1.28 put the image's own copy of it there when it came second.
    volumes = {spool: "/var/lib/ingest", data: "/data"}

    who = _in_container(container, "id", "-u", volumes=volumes, env=env)
    assert who.returncode == 0 and who.stdout.strip() == "10001", who.stderr  # the Dockerfile's USER
    version = _in_container(container, "ingest", "--version", volumes=volumes, env=env)
    assert version.returncode == 0 and version.stdout.startswith("ingest "), version.stderr

    run = _in_container(
        container, "ingest", "--config", "/data/ingest.toml", "run", "--once", volumes=volumes, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"event"' in run.stderr  # INGEST_LOG_FORMAT=json from the image's environment
    assert sorted(readable_rows(job, tmp_path), key=lambda r: r["id"]) == rows
    assert not list((data / "inbox").rglob("*.jsonl"))  # acknowledged: the file is gone
    journals = list((spool / "spool").glob("*/journal.db"))  # INGEST_SPOOL_DIR from the image: on the volume
    assert len(journals) == 1, run.stderr
    [journal] = journals
    assert journal.stat().st_uid == 10001
