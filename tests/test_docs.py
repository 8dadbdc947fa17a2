"""Every `ingest …` and `bash scripts/…` command shown in the README and docs/ still exists, with every
option it uses: the commands are read out of the `sh` blocks and checked against the real CLI's help."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def _commands(page: Path) -> list[list[str]]:
    """The words of each command line in the page's sh blocks (comments and continuations handled)."""
    out: list[list[str]] = []
    for block in BLOCK.findall(page.read_text()):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            for i, word in enumerate(words):
                if word in ("ingest", "/opt/r2-ingest/bin/ingest") or word == "scripts/bench":
                    out.append(words[i:])
                    break
    return out


def _help(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"ingest {' '.join(path)} --help: {result.output[-500:]}"
    return result.output


def _cli_path(words: list[str]) -> list[str]:
    path: list[str] = []
    for word in words[1:]:
        if word.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        text = _help(path)
        commands = re.findall(r"^│ (\w[\w-]*) ", text, re.M)
        if word not in commands:
            break
        path.append(word)
    return path


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_command_shown_exists_with_its_options(page: Path) -> None:
    commands = _commands(page)
    for words in commands:
        options = [o for w in words for o in re.findall(r"(?<![\w-])--[a-z][a-z-]*", w)]
        if words[0] == "scripts/bench":
            usage = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "benchmark" / "bench.py"), "--help"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        else:
            path = _cli_path(words)
            root_option = len(words) > 1 and words[1].startswith("-")  # `ingest --version`
            assert path or root_option, f"{page.name}: no such command: {' '.join(words)}"
            usage = _help(path)
        for option in options:
            assert option in usage, f"{page.name}: `{' '.join(words)}`: {option} is not an option"


def test_the_pages_show_commands() -> None:
    assert len(_commands(ROOT / "README.md")) >= 8
    assert sum(len(_commands(p)) for p in PAGES) >= 20


def test_an_option_that_does_not_exist_is_caught() -> None:
    assert "--once" in _help(["run"]) and "--twice" not in _help(["run"])
