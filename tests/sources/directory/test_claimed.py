"""A claimed file's sidecar says where it came from; finishing many files keeps their order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.sources.directory.claimed import (
    FS_THREADS_FROM,
    claimed_name,
    in_threads,
    link_target,
    origin_file,
    origin_of,
)


def test_a_file_claimed_from_the_root_needs_no_sidecar(tmp_path: Path) -> None:
    claimed = tmp_path / "0123abcd4567--events--2024.jsonl"  # only the first `--` is the claim's
    claimed.write_text("{}\n")
    assert not origin_file(claimed).exists()
    assert origin_of(claimed) == Path("events--2024.jsonl")
    assert link_target(claimed) == claimed.resolve()


@pytest.mark.parametrize(
    "origin",
    ["2024/08/02/13/events.jsonl", "producer-7/a--b.jsonl", "odd/%2F/100%/x~~y.jsonl", "é/ü.jsonl"],
)
def test_a_file_claimed_from_a_subfolder_says_its_path_in_its_name(tmp_path: Path, origin: str) -> None:
    """No sidecar to write at the claim and to remove at the acknowledgement: the name says it all."""
    said = claimed_name(origin, 200)
    assert said is not None and "/" not in said and said.startswith("~~")
    claimed = tmp_path / f"0123abcd4567{said}"
    claimed.write_text("{}\n")
    assert origin_of(claimed) == Path(origin)
    assert not origin_file(claimed).exists()


@pytest.mark.parametrize(
    "origin",
    ["a/" * 120 + "x.jsonl", "bad\udcff/x.jsonl"],
    ids=["too-long", "not-utf-8"],
)
def test_a_path_the_name_cannot_say_takes_a_sidecar(origin: str) -> None:
    assert claimed_name(origin, 200) is None


def test_the_sidecar_names_the_origin_and_a_links_target(tmp_path: Path) -> None:
    claimed = tmp_path / "0123abcd4567--a.jsonl"
    claimed.symlink_to(tmp_path / "elsewhere.jsonl")
    origin_file(claimed).write_text(json.dumps({"origin": "sub/dir/a.jsonl", "target": "/data/a.jsonl"}))
    assert origin_of(claimed) == Path("sub/dir/a.jsonl")
    assert link_target(claimed) == Path("/data/a.jsonl")


def test_a_sidecar_of_an_earlier_version_is_the_path_alone(tmp_path: Path) -> None:
    claimed = tmp_path / "0123abcd4567--a.jsonl"
    origin_file(claimed).write_text("sub/a.jsonl")
    assert origin_of(claimed) == Path("sub/a.jsonl")


@pytest.mark.anyio
@pytest.mark.parametrize("count", [1, FS_THREADS_FROM, 3 * FS_THREADS_FROM + 5])
async def test_in_threads_answers_in_the_order_asked(count: int) -> None:
    paths = [Path(f"f{i:04d}") for i in range(count)]
    assert await in_threads(lambda p: p.name, paths) == [p.name for p in paths]
