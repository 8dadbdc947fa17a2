"""config/systemd/: the units pass `systemd-analyze verify` (Debian's systemd) and say what the worker
needs: notify with a watchdog, a stop timeout above the drain, a state directory, hardening."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.config import ENV_KEYS, WorkerConfig
from ingest.config.quantities import parse_duration

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "config" / "systemd"
INSTALLED = "/opt/r2-ingest/bin/ingest"


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze comes with Debian's systemd, installed by scripts/test"
    ingest = Path(sys.executable).parent / "ingest"  # this checkout's, where the units expect theirs
    for unit in UNITS.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(ingest)))
    names = sorted(str(p) for p in tmp_path.iterdir())
    r = subprocess.run([analyze, "verify", *names], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    # It does complain when a key is wrong (a verify that passes everything would prove nothing).
    broken = tmp_path / "ingest.service"
    broken.write_text(broken.read_text().replace("TimeoutStopSec=", "TimeoutStopSek="))
    r = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=120)
    assert "Unknown key 'TimeoutStopSek'" in r.stderr


def test_the_daemon_unit_notifies_feeds_a_watchdog_and_outlives_the_drain() -> None:
    service = _unit("ingest.service")["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert parse_duration(service["WatchdogSec"]) >= 10
    assert parse_duration(service["TimeoutStopSec"]) > WorkerConfig().shutdown_timeout + 5
    assert service["StateDirectory"] == "r2-ingest"
    assert service["ExecStart"] == f"{INSTALLED} run"
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
        assert service[key] in ("yes", "strict"), key
    assert service["CapabilityBoundingSet"] == ""


@pytest.mark.parametrize("name", ["ingest.service", "ingest-once.service"])
def test_every_environment_name_set_is_one_the_worker_reads(name: str) -> None:
    text = (UNITS / name).read_text()
    names = {line.split("=", 2)[1] for line in text.splitlines() if line.startswith("Environment=")}
    assert names and names <= set(ENV_KEYS) | {"INGEST_CONFIG"}, names


def test_the_timer_runs_the_once_service() -> None:
    timer = _unit("ingest.timer")["Timer"]
    assert timer["Unit"] == "ingest-once.service" and timer["Persistent"] == "true"
    once = _unit("ingest-once.service")["Service"]
    assert once["Type"] == "oneshot" and once["ExecStart"] == f"{INSTALLED} run --once"
    assert parse_duration(once["TimeoutStartSec"].replace("min", "m")) > 600  # retry.once_max_elapsed
