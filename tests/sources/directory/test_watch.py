"""What the directory source sees as complete: settled, not being written, not ignored."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from ingest.config import SourceConfig
from ingest.sources.directory.watch import Watch


def watch(root: Path, **settings: object) -> tuple[Watch, dict[str, str]]:
    problems: dict[str, str] = {}
    config = SourceConfig(kind="directory", path=str(root), **settings)
    w = Watch(
        root.resolve(),
        config,
        Path(config.done_dir).resolve() if config.done_dir else None,
        lambda p, why: problems.__setitem__(str(p), why),
        lambda p: problems.pop(str(p), None),
        lambda: [],
    )
    return w, problems


def test_a_file_is_complete_once_it_held_still_for_settle_seconds(tmp_path: Path) -> None:
    w, _ = watch(tmp_path, settle_seconds=5.0)
    old, fresh = tmp_path / "old.jsonl", tmp_path / "fresh.jsonl"
    old.write_text("{}\n")
    os.utime(old, (time.time() - 60, time.time() - 60))  # written before the watch began
    fresh.write_text("{}\n")
    now = time.monotonic()
    assert w.complete(now) == [old.resolve()]
    fresh.write_text("{}\n{}\n")  # still growing
    assert w.complete(now + 4) == [old.resolve()]
    assert w.complete(now + 10) == [fresh.resolve(), old.resolve()]  # unchanged since now + 4 … + 10


def test_a_file_another_process_holds_open_for_writing_is_not_complete(tmp_path: Path) -> None:
    """Even when its mtime is old: an idle logger's file is not finished (found by this test: the
    first look at a file trusted its mtime and took it from under its writer)."""
    w, _ = watch(tmp_path, settle_seconds=1.0, wait_for_writers=True)
    path = tmp_path / "a.jsonl"
    path.write_text("{}\n")
    os.utime(path, (time.time() - 120, time.time() - 120))
    with path.open("a") as out:  # the writer: a process with the file open for appending
        writer = subprocess.Popen(["sleep", "60"], stdout=out)
    try:
        now = time.monotonic()
        assert w.complete(now) == []
        assert w.complete(now + 5) == []
    finally:
        writer.kill()
        writer.wait()
    assert w.complete(now + 5.5) == []  # closed just now: it must hold still for settle_seconds
    assert w.complete(now + 7) == [path.resolve()]


def test_hidden_temporary_and_linked_in_tree_files_are_never_candidates(tmp_path: Path) -> None:
    w, _ = watch(tmp_path, settle_seconds=0.0)
    for name in (".hidden.jsonl", "a.jsonl.tmp", "b.jsonl.part", "kept.jsonl"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "kept.jsonl")
    assert w.complete(time.monotonic()) == [(tmp_path / "kept.jsonl").resolve()]
    assert list(w.skipped) == [(tmp_path / "link.jsonl").resolve().parent / "link.jsonl"]


def test_an_unreadable_file_is_a_problem_not_a_candidate(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root reads anything: make it unreadable another way (a dangling link)
        (tmp_path / "gone.jsonl").symlink_to(tmp_path.parent / "nowhere" / "gone.jsonl")
        expected = "broken symlink"
    else:
        bad = tmp_path / "secret.jsonl"
        bad.write_text("{}\n")
        bad.chmod(0)
        expected = "permission"
    w, problems = watch(tmp_path, settle_seconds=0.0)
    assert w.complete(time.monotonic()) == []
    assert len(problems) == 1 and expected in next(iter(problems.values())).lower()


def test_one_walk_finds_nested_files_tells_links_from_its_listing_and_skips_loops(tmp_path: Path) -> None:
    root, outside = tmp_path / "inbox", tmp_path / "elsewhere"
    for folder in ("2024/08/01/13", "2024/08/02/00", "producer-7", ".ingest/claimed", ".git"):
        (root / folder).mkdir(parents=True)
    outside.mkdir()
    files = ["2024/08/01/13/a.jsonl", "2024/08/02/00/b.jsonl", "producer-7/c.jsonl", "d.jsonl"]
    for name in [*files, ".ingest/claimed/x.jsonl", ".git/y.jsonl", "2024/e.jsonl.part"]:
        (root / name).write_text("{}\n")
    (outside / "far.jsonl").write_text("{}\n")
    (root / "far.jsonl").symlink_to(outside / "far.jsonl")  # a file outside: taken
    (root / "shared").symlink_to(outside)  # a folder outside: walked
    (root / "2024/again").symlink_to(root)  # loops back: skipped, said once
    (root / "broken.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    w, _ = watch(root, settle_seconds=0.0)
    walked = dict(w.candidates())
    real = root.resolve()
    plain, links = [*files, "shared/far.jsonl"], ["far.jsonl", "broken.jsonl"]  # (shared/: a linked folder)
    assert walked == {real / n: False for n in plain} | {real / n: True for n in links}
    assert list(w.skipped) == [real / "2024/again"]
    ready = w.complete(time.monotonic())
    assert ready == sorted([real / n for n in [*files, "far.jsonl", "shared/far.jsonl"]], key=str)
    assert sorted(w.walked) == sorted(walked)  # what --once takes as "there at start"

    unfollowed, _ = watch(root, settle_seconds=0.0, follow_symlinks=False)
    assert dict(unfollowed.candidates()) == {real / n: False for n in files} | {
        real / n: True for n in ("far.jsonl", "broken.jsonl")
    }
    assert set(unfollowed.skipped) == {real / "shared", real / "2024/again"}


def test_a_folder_removed_mid_walk_is_no_problem_and_a_problem_removed_since_is_solved(
    tmp_path: Path,
) -> None:
    """A producer's cleanup removes an empty dated folder while we walk: no error reported (it made a
    --once run say "could not read 1 input" and exit 1). A path reported once and removed since is
    solved at the next walk, not reported until a restart."""
    root = tmp_path / "inbox"
    (root / "2024/08/01").mkdir(parents=True)
    (root / "first.jsonl").write_text("{}\n")
    (root / "2024/08/01/late.jsonl").write_text("{}\n")
    w, problems = watch(root, settle_seconds=0.0)
    first = (root / "first.jsonl").resolve()
    walk = w.candidates()
    assert next(walk) == (first, False)  # the root is listed …
    shutil.rmtree(root / "2024")  # … and its folder removed before the walk goes down into it
    assert list(walk) == []
    assert problems == {}

    (root / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    assert w.complete(time.monotonic()) == [first]
    assert list(problems) == [str(root.resolve() / "gone.jsonl")]
    (root / "gone.jsonl").unlink()  # its owner removed the broken link
    assert w.complete(time.monotonic()) == [first]
    assert problems == {}


def test_a_done_dir_inside_the_inbox_is_never_walked_even_deep_down(tmp_path: Path) -> None:
    """Compared without resolve() on real paths: resolving every folder stat'ed every level above it,
    13 s a walk for a tree 1,100 folders deep (found by the deep-inbox test)."""
    root = tmp_path / "inbox"
    done = root / "archive" / "done"
    (done / "2024").mkdir(parents=True)
    (done / "2024" / "taken.jsonl").write_text("{}\n")
    (root / "archive" / "new.jsonl").write_text("{}\n")
    w, _ = watch(root, done_dir=str(done))
    assert dict(w.candidates()) == {(root / "archive" / "new.jsonl").resolve(): False}
