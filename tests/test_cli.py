from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.cli import config_first
from ingest.config import ENV_KEYS, BatchConfig, OutputConfig, load_settings


def _ingest(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def test_help_lists_every_command_in_the_order_a_newcomer_uses_them() -> None:
    r = _ingest("--help")
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"│ (\w+) {2,}", r.stdout)
    assert listed == [
        "init",
        "local",
        "doctor",
        "run",
        "status",
        "ls",
        "head",
        "tables",
        "presign",
        "token",
        "cors",
        "notifications",
    ], r.stdout
    for group in ("cors", "token", "notifications"):
        sub = _ingest(group, "--help")
        assert sub.returncode == 0 and "Usage:" in sub.stdout, sub.stderr


def test_a_bad_config_is_exit_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "ingest.toml").write_text('[r2]\njurisdiction = "mars"\n')
    r = _ingest("run", "--once", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "config error: r2.jurisdiction: must be one of default, eu, fedramp, us (got 'mars')"
    ]


@pytest.mark.parametrize(
    "kinds",
    [[], ["directory"], ["landing"], ["directory", "landing"], ["queue"]],
    ids=lambda k: "+".join(k) or "default",
)
def test_init_writes_a_config_that_loads_with_the_chosen_sources(tmp_path: Path, kinds: list[str]) -> None:
    r = _ingest("init", *[arg for kind in kinds for arg in ("--source", kind)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    written = tmp_path / "ingest.toml"
    settings = load_settings(written)  # the project's own loader: every line of it is valid
    assert [s.kind for s in settings.sources] == (kinds or ["directory"])
    assert settings.batch == BatchConfig() and settings.output == OutputConfig()  # only defaults, commented
    text = written.read_text()
    for name in (
        "R2_ACCOUNT_ID",
        "R2_BUCKET_NAME",
        "R2_ACCESS_KEY_ID",
        "R2_SECRET_ACCESS_KEY",
        "R2_API_TOKEN",
    ):
        assert name in text and name in ENV_KEYS  # the names to set, each one the settings read
    assert f"# max_records = {BatchConfig().max_records}" in text
    lines = r.stdout.splitlines()
    assert (
        lines[0]
        == f"wrote ingest.toml ({', '.join(kinds or ['directory'])} source{'s' if len(kinds) > 1 else ''})"
    )
    assert any(line.strip().startswith("ingest doctor") for line in lines)
    assert any(line.strip().startswith("ingest run") for line in lines)
    if "directory" in (kinds or ["directory"]):
        assert (tmp_path / "inbox").is_dir()  # `ingest run` needs the watched directory to exist


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "conf" / "worker.toml"
    assert _ingest("init", str(target)).returncode == 0
    target.write_text("# mine\n")
    r = _ingest("init", str(target), "--source", "landing")
    assert r.returncode == 2 and "exists; pass --force" in r.stderr
    assert target.read_text() == "# mine\n"
    r = _ingest("init", str(target), "--source", "landing", "--force")
    assert r.returncode == 0, r.stderr
    assert [s.kind for s in load_settings(target).sources] == ["landing"]
    assert f"ingest --config {target} doctor" in r.stdout
    under_a_file = _ingest("init", str(target / "x.toml"))
    assert under_a_file.returncode == 2
    assert (
        under_a_file.stderr.strip()
        == f"{target / 'x.toml'}: cannot write it (File exists); pick another path"
    )
    bad = _ingest("init", str(tmp_path / "x.toml"), "--source", "kafka")
    assert bad.returncode == 2 and "kafka" in bad.stderr


def test_version_and_config_after_the_command_as_people_type_it(tmp_path: Path) -> None:
    from ingest import __version__

    r = _ingest("--version")
    assert (r.returncode, r.stdout) == (0, f"ingest {__version__}\n")
    conf = tmp_path / "elsewhere" / "worker.toml"
    conf.parent.mkdir()
    conf.write_text('[spool]\ndir = "my-spool"\n')
    for args in (
        ["--config", str(conf), "status"],
        ["status", "--config", str(conf)],
        ["status", f"--config={conf}"],
    ):
        r = _ingest(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"no spool at {conf.parent / 'my-spool'}" in r.stdout  # that file was read
    env = {**os.environ, "INGEST_CONFIG": str(conf)}
    r = subprocess.run(
        [sys.executable, "-m", "ingest", "status"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert f"no spool at {conf.parent / 'my-spool'}" in r.stdout, r.stderr
    assert config_first(["ingest", "head", "k", "-c", "a.toml", "--", "-c"]) == [
        "ingest",
        "-c",
        "a.toml",
        "head",
        "k",
        "--",
        "-c",
    ]


def test_init_offers_exactly_the_source_kinds_the_config_accepts() -> None:
    from ingest.cli.init import SOURCE_KINDS
    from ingest.commands.starter import SOURCE_KINDS as CONFIG_KINDS  # read from SourceConfig.kind

    assert SOURCE_KINDS == CONFIG_KINDS


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["run", "--source", "stdin"], "", "--source stdin reads to EOF and ends: add --once"),
        (
            ["run", "--once", "--source", "stdin", "--table", "Nope"],
            "",
            "--table: table name 'Nope' is not valid",
        ),
        (["run", "--once", "--table", "t"], "", "--format and --table go with --source stdin"),
        (
            ["run", "--once"],
            '[[sources]]\nkind = "http"\ntoken = "t"\n',
            "an http source takes requests for as long as the worker runs",
        ),
        (
            ["run"],
            '[[sources]]\nkind = "directory"\npath = "a"\ntable = "one"\n'
            '[[sources]]\nkind = "directory"\npath = "b"\ntable = "two"\n',
            "output.key_template: the sources write tables one, two, but the template has no {table}",
        ),
        (["run"], '[[sources]]\nkind = "http"\n', "sources.0.token: required for an http source"),
    ],
)
def test_run_usage_and_source_config_errors_exit_2(
    tmp_path: Path, args: list[str], config: str, message: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "ingest.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "CLOUDFLARE_", "INGEST_"))}
    env |= {
        "R2_ENDPOINT_URL": "http://127.0.0.1:9",
        "R2_BUCKET_NAME": "b",
        "R2_ACCESS_KEY_ID": "k",
        "R2_SECRET_ACCESS_KEY": "s",
    }
    r = subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr


@pytest.mark.parametrize(("setting", "backend"), [(None, "jemalloc"), ("system", "system")])
def test_run_gives_arrow_its_jemalloc_pool_before_pyarrow_is_imported(
    setting: str | None, backend: str
) -> None:
    """In the order `ingest run` does it: the CLI imported, the pool chosen, then the worker's imports
    (Arrow reads the choice when pyarrow is imported). A setting of the user's decides."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if setting is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = setting
    code = (
        "import ingest.cli, ingest.cli.run as r; r._memory_pool(); import ingest.worker, pyarrow as pa; "
        "print(pa.default_memory_pool().backend_name)"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [backend]
