"""The container image, tested without a container engine (there is none here): hadolint on the
Dockerfile, and the Dockerfile's own build and install commands run in a clean venv."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

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
