"""config/kubernetes/: every manifest against the Kubernetes schemas (strict), the ServiceMonitor against
the Prometheus Operator's schema from the npm registry, the ConfigMap through the project's own settings
loader, and every environment name the manifests and the image set is one the worker reads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest.config import ENV_KEYS, load_settings
from ingest.config.quantities import parse_size

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "config" / "kubernetes"
KUBERNETES = "1.37.0"
NO_CORE_SCHEMA = {"kustomization.yaml", "servicemonitor.yaml"}  # not core kinds: checked below
READ_BY_THE_CLI = {"INGEST_CONFIG"}  # the config file; every other name is a settings key


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _kind(kind: str) -> dict[str, Any]:
    (found,) = [d for f in sorted(K8S.glob("*.yaml")) for d in _docs(f.name) if d["kind"] == kind]
    return found


def _pod_specs() -> dict[str, dict[str, Any]]:
    return {
        "statefulset": _kind("StatefulSet")["spec"]["template"]["spec"],
        "cronjob": _kind("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    }


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml") if p.name not in NO_CORE_SCHEMA))
def test_manifest_is_valid_for_a_current_kubernetes(name: str) -> None:
    tool = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    r = subprocess.run(
        [tool, "--strict", "-k", KUBERNETES, str(K8S / name)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "WARN" not in r.stdout, r.stdout + r.stderr
    passed = re.findall(r"^INFO .* passed for resource (\S+) against version", r.stdout, re.MULTILINE)
    assert len(passed) == len(_docs(name)), r.stdout  # every document was really checked


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = _docs("kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present


def test_the_configmap_loads_with_the_settings_loader_and_fits_the_pods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = _kind("ConfigMap")["data"]["ingest.toml"]
    tomllib.loads(toml)
    path = tmp_path / "ingest.toml"
    path.write_text(toml)
    statefulset = _kind("StatefulSet")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    for env in container["env"]:
        monkeypatch.setenv(env["name"], env.get("value", "ingest-0"))
    settings = load_settings(path)
    assert [s.kind for s in settings.sources] == ["landing"]
    assert settings.worker.id == "ingest-0" and settings.spool.dir == "/var/lib/ingest/spool"
    assert settings.server.listen == "0.0.0.0:8080"
    # The pod outlives the drain, the volume holds the spool, a cron run gives up before it is killed.
    grace = statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.worker.shutdown_timeout + 5
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert (
        parse_size(claim["spec"]["resources"]["requests"]["storage"].replace("Gi", "GiB"))
        > settings.spool.max_bytes
    )
    cron = _kind("CronJob")["spec"]
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] > settings.retry.once_max_elapsed
    assert cron["concurrencyPolicy"] == "Forbid" and cron["jobTemplate"]["spec"]["backoffLimit"] <= 2


def test_every_environment_name_set_is_one_the_worker_reads() -> None:
    names: set[str] = set()
    for spec in _pod_specs().values():
        for container in spec["containers"]:
            names |= {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                assert source["secretRef"]["name"] == _kind("Secret")["metadata"]["name"]
    names |= set(_kind("Secret")["stringData"])
    dockerfile = (REPO / "Dockerfile").read_text()
    names |= set(re.findall(r"\b(INGEST_[A-Z_]+|R2_[A-Z_]+)=", dockerfile))
    unknown = names - set(ENV_KEYS) - READ_BY_THE_CLI
    assert not unknown, f"set but never read (typo?): {sorted(unknown)}"
    assert {"INGEST_WORKER_ID", "INGEST_CONFIG", "INGEST_SPOOL_DIR", "R2_API_TOKEN"} <= names


@pytest.mark.parametrize("which", ["statefulset", "cronjob"])
def test_pods_run_locked_down(which: str) -> None:
    spec = _pod_specs()[which]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/lib/ingest", "/tmp", "/etc/ingest"} <= mounts  # the only writable places, and the config
    if which == "statefulset":
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    else:
        assert spec["restartPolicy"] == "Never" and container["args"] == ["run", "--once"]


def test_the_servicemonitor_is_valid_and_scrapes_the_api_service(tmp_path: Path) -> None:
    monitor = _kind("ServiceMonitor")
    services = [d for d in _docs("service.yaml") if d["kind"] == "Service"]
    selected = [
        s
        for s in services
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["r2-ingest"]  # not the headless one too (twice)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (
        endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
        and endpoint["path"] == "/metrics"
    )
    # The Prometheus Operator's own schema, from the npm registry (compiled validators of its CRDs).
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node and npm are installed by scripts/test"
    r = subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(tmp_path),
         "@kubernetes-models/prometheus-operator@6.0.0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    check = tmp_path / "check.mjs"
    check.write_text(
        'import { readFileSync } from "node:fs";\n'
        'import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/'
        'monitoring.coreos.com/v1/ServiceMonitor";\n'
        'const doc = JSON.parse(readFileSync(0, "utf8"));\n'
        "try { new ServiceMonitor(doc).validate(); } catch (e) { console.log(e.message); process.exit(1); }\n"
    )
    ok = subprocess.run(
        ["node", str(check)], input=json.dumps(monitor), capture_output=True, text=True, cwd=tmp_path
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["endpoints"][0]["port"] = 8080  # a number where the schema wants a port name
    bad = subprocess.run(
        ["node", str(check)], input=json.dumps(broken), capture_output=True, text=True, cwd=tmp_path
    )
    assert bad.returncode == 1 and "port must be string" in bad.stdout  # the schema is really applied
