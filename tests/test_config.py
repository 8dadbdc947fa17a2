"""Settings: file + environment, units, one-line errors naming the key, secrets kept out of repr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from ingest.config import ConfigError, SourceConfig, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ingest.toml"
    path.write_text(text)
    return path


@pytest.mark.usefixtures("clean_env")
def test_file_values_and_units(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            """
[r2]
bucket = "b"
jurisdiction = "eu"
[batch]
max_bytes = "64MiB"
max_age = "500ms"
[retry]
max_elapsed = "24h"
[[sources]]
kind = "directory"
path = "inbox"
""",
        )
    )
    assert s.r2.bucket == "b" and s.r2.jurisdiction == "eu"
    assert s.batch.max_bytes == 64 * 2**20 and s.batch.max_age == 0.5
    assert s.retry.max_elapsed == 86400
    assert s.sources[0].kind == "directory" and s.sources[0].path == str(tmp_path / "inbox")


@pytest.mark.usefixtures("clean_env")
def test_relative_paths_resolve_against_the_config_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    path = write(
        conf,
        '[spool]\ndir = "spool"\n[output]\nschema_file = "schema.json"\n'
        '[[sources]]\nkind = "directory"\npath = "../data/inbox"\ndone_dir = "/abs/done"\n',
    )
    elsewhere = tmp_path / "cron-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings(path)
    assert s.sources[0].path == str(conf / "../data/inbox")
    assert s.sources[0].done_dir == "/abs/done"
    assert s.spool.dir == str(conf / "spool")
    assert s.output.schema_file == str(conf / "schema.json")


@pytest.mark.usefixtures("clean_env")
def test_environment_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[r2]\nbucket = "from-file"\naccount_id = "acct"\n')
    monkeypatch.setenv("R2_BUCKET_NAME", "from-env")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "s" * 64)
    s = load_settings(path)
    assert s.r2.bucket == "from-env" and s.r2.account_id == "acct"
    assert s.r2.auth.secret_access_key.get_secret_value() == "s" * 64


@pytest.mark.usefixtures("clean_env")
def test_secrets_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "very-secret-value-123")
    monkeypatch.setenv("R2_API_TOKEN", "token-value-456789")
    s = load_settings()
    assert "very-secret-value-123" not in repr(s) and "token-value-456789" not in repr(s)
    assert "very-secret-value-123" not in str(s.model_dump())


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[r2]\njurisdiction = "mars"\n', "r2.jurisdiction: must be one of default, eu, fedramp, us"),
        ('[r2]\nbukcet = "x"\n', "r2.bukcet: unknown key (did you mean r2.bucket?)"),
        ('[batch]\nmax_age = "soon"\n', "batch.max_age: 'soon' is not a duration"),
        ('[spool]\nmax_bytes = "lots"\n', "spool.max_bytes: 'lots' is not a size"),
        ("[upload]\nconcurrency = 0\n", "upload.concurrency:"),
        ('[output]\nkey_template = "fixed.parquet"\n', "output.key_template: must contain {seq"),
        ("[r2\n", "not valid TOML"),
        (
            '[[sources]]\nkind = "http"\ntable = "Clicks"\n',
            "sources.0.table: table name 'Clicks' is not valid",
        ),
        ('[[sources]]\nkind = "http"\ntables = ["ok", "no way"]\n', "sources.0.tables: table name 'no way'"),
        ('[[sources]]\nkind = "directory"\npath = "x"\ntoken = "t"\n', "token is only read by kind = 'http'"),
        ('[[sources]]\nkind = "http"\npath = "x"\n', "path is only read by kind = 'directory'"),
        ('[[sources]]\nkind = "http"\nack = "never"\n', "sources.0.ack: must be one of spool, upload"),
        ('[[sources]]\nkind = "stdin"\nbody_timeout = "5s"\n', "body_timeout is only read by kind = 'http'"),
        ('[[sources]]\nkind = "http"\nbody_timeout = "0s"\n', "sources.0.body_timeout:"),
        # botocore took these at client creation, with a traceback, once the run had started
        (
            '[r2]\nendpoint_url = "r2.example.com"\n',
            "r2.endpoint_url: 'r2.example.com' is not an http(s) URL",
        ),
        ('[r2]\nendpoint_url = "https://"\n', "r2.endpoint_url: 'https://' is not an http(s) URL"),
        ('[r2]\napi_base_url = "ftp://x"\n', "r2.api_base_url: 'ftp://x' is not an http(s) URL"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, toml))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.usefixtures("clean_env")
def test_cli_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[r2]\njurisdiction = "mars"\n')
    r = subprocess.run(
        [sys.executable, "-m", "ingest", "--config", str(path), "local", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "r2.jurisdiction: must be one of default, eu, fedramp, us" in lines[0]


def test_bad_env_value_exits_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "R2_JURISDICTION": "antarctica", "HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "ingest", "local", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 2 and "r2.jurisdiction" in r.stderr


def test_run_with_an_endpoint_that_is_no_url_exits_2_before_reading(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.jsonl").write_text('{"id": 1}\n')
    config = write(
        tmp_path,
        f'[[sources]]\nkind = "directory"\npath = "{inbox}"\n[spool]\ndir = "{tmp_path / "spool"}"\n',
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "R2_ENDPOINT_URL": "r2.example.com",
        "R2_BUCKET_NAME": "b",
        "R2_ACCESS_KEY_ID": "id",
        "R2_SECRET_ACCESS_KEY": "secret-value",
    }
    r = subprocess.run(
        [sys.executable, "-m", "ingest", "--config", str(config), "run", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "config error: r2.endpoint_url: 'r2.example.com' is not an http(s) URL; "
        "e.g. https://<account id>.r2.cloudflarestorage.com"
    ]
    assert (inbox / "a.jsonl").exists()  # nothing was taken


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ingest", "--config", str(tmp_path / "nope.toml"), "local", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "nope.toml" in r.stderr


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = Path(__file__).parent.parent / "config" / "ingest.example.toml"
    s = load_settings(example)
    text = example.read_text()

    def leaves(model: BaseModel, path: str) -> list[str]:
        out = []
        for key in type(model).model_fields:
            value = getattr(model, key)
            out += leaves(value, f"{path}{key}.") if isinstance(value, BaseModel) else [f"{path}{key}"]
        return out

    keys = [k for k in leaves(s, "") if k != "sources"] + [f"sources.{k}" for k in SourceConfig.model_fields]
    for dotted in keys:
        assert f"{dotted.rsplit('.', 1)[1]} =" in text, f"{dotted} is not documented in {example.name}"
    assert s.sources and s.sources[0].kind == "directory"


@pytest.mark.usefixtures("clean_env")
def test_unknown_key_inside_a_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, '[[sources]]\nkind = "directory"\npaht = "x"\n'))
    assert str(exc.value) == "sources.0.paht: unknown key (did you mean sources.0.path?)"
