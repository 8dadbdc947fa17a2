"""Settings that look fine and cannot work (issue 30 cases 13, 14): one line, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import ingest_without_r2, write_toml


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"kind": "http", "token": "   "}, "sources.0.token: blank"),
        (
            {"kind": "http", "token": "ok-token", "tokens": ["fine", " "]},
            "sources.0.tokens: a token is blank",
        ),
        ({"kind": "redis", "stream": "s", "url": "redis://host:notaport/0"}, "port is not a number"),
        ({"kind": "redis", "stream": "s", "url": "http://localhost:6379"}, "use redis://"),
        ({"kind": "redis", "stream": "s", "url": "redis:///0"}, "no host"),
        ({"kind": "redis", "stream": "s", "url": "redis://:pw-secret@h:6379/zero"}, "is not a number"),
    ],
)
@pytest.mark.parametrize("command", [["run", "--once"], ["doctor"]])
def test_a_setting_that_cannot_work_is_one_line_and_exit_2(
    tmp_path: Path, source: dict[str, object], message: str, command: list[str]
) -> None:
    write_toml(tmp_path / "ingest.toml", {"sources": [source], "spool": {"dir": str(tmp_path / "spool")}})
    r = ingest_without_r2(tmp_path, "--config", str(tmp_path / "ingest.toml"), *command, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "pw-secret" not in r.stdout + r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr


def test_a_bad_redis_url_in_the_environment_is_one_line_and_exit_2(tmp_path: Path) -> None:
    write_toml(
        tmp_path / "ingest.toml",
        {"sources": [{"kind": "redis", "stream": "s"}], "spool": {"dir": str(tmp_path / "spool")}},
    )
    for command in (["run", "--once"], ["doctor"]):
        r = ingest_without_r2(
            tmp_path,
            "--config",
            str(tmp_path / "ingest.toml"),
            *command,
            timeout=60,
            INGEST_REDIS_URL="redis://h:99999/0",
        )
        assert r.returncode == 2, r.stdout + r.stderr
        assert "INGEST_REDIS_URL: the port is not a number" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("iceberg", "message"),
    [
        ({"enabled": True}, "iceberg: enabled, but catalog_uri is empty: set it or R2_CATALOG_URI"),
        ({"namespace": "my-ns"}, "iceberg.namespace: 'my-ns' is not an Iceberg identifier"),
    ],
)
def test_iceberg_settings_are_checked_in_one_line_with_exit_2(
    tmp_path: Path, iceberg: dict[str, object], message: str
) -> None:
    write_toml(tmp_path / "ingest.toml", {"iceberg": iceberg, "spool": {"dir": str(tmp_path / "spool")}})
    r = ingest_without_r2(tmp_path, "--config", str(tmp_path / "ingest.toml"), "run", "--once", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr
