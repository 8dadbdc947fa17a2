"""Files as users really leave them: still being written, unreadable, symlinked, a done_dir on another
filesystem, relative paths in a config run from elsewhere. Every row lands exactly once, nothing that
could not be read is deleted, and what cannot be taken is said."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Job, logs_of, wait_for, write_jsonl

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _without_dac_override() -> None:
    """Run as a root that file permissions apply to (like any non-root user): drop the capabilities
    that bypass them from the bounding set, so the exec'd worker never has them."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_once_restricted(job: Job) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*job.command("--once")],
        cwd=job.dir,
        env=job.env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=240,
        preexec_fn=_without_dac_override,
    )


def _ids(job: Job) -> list[int]:
    return sorted(int(r["id"]) for r in job.rows())


def _rows(start: int, n: int) -> list[dict[str, Any]]:
    return [{"id": i, "v": f"r{i}"} for i in range(start, start + n)]


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    path, pieces, pause = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    wait_claim = sys.argv[4] == "1"
    with open(path, "a") as fh:            # held open from the first byte to the last
        for i, piece in enumerate(pieces):
            if i == 1 and wait_claim:       # write on into the file after the worker renamed it away
                deadline = time.monotonic() + 30
                while os.path.exists(path) and time.monotonic() < deadline:
                    time.sleep(0.02)
            fh.write(piece)
            fh.flush()
            if i == 0 and wait_claim:
                old = time.time() - 3600     # looks idle: taken at once
                os.utime(path, (old, old))
            elif i + 1 < len(pieces):
                time.sleep(pause)
    """
)


def _writer(path: Path, pieces: list[str], pause: float, wait_claim: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), json.dumps(pieces), str(pause), "1" if wait_claim else "0"],
        text=True,
    )


def _line(i: int) -> str:
    return json.dumps({"id": i, "v": f"r{i}"}) + "\n"


def test_a_writer_holding_the_file_open_and_pausing_longer_than_settle_loses_nothing(job: Job) -> None:
    job.configure(sources={"settle_seconds": "1s"}, batch={"max_age": "200ms"}, server={"listen": ""})
    proc = job.start()
    try:
        # A line every 2.5 s (longer than settle_seconds), and one line written in two halves.
        lines = _writer(job.inbox / "slow.jsonl", [_line(i) for i in range(4)], 2.5)
        half = _line(10)
        halves = _writer(job.inbox / "halves.jsonl", [_line(9), half[:9], half[9:]], 2.5)
        assert lines.wait(timeout=30) == 0 and halves.wait(timeout=30) == 0
        wait_for(lambda: len(job.rows()) >= 6, 60, "every line of both files")
        wait_for(lambda: not any(job.inbox.glob("*.jsonl")), 30, "both files acknowledged")
        time.sleep(1.5)  # anything wrongly read twice would land by now
    finally:
        err = _stop(proc)
    assert _ids(job) == [0, 1, 2, 3, 9, 10]
    assert job.dead_letters() == [] and not any(e.get("event") == "dead letter" for e in logs_of(err))


def test_once_leaves_an_old_file_an_idle_writer_holds_open_and_takes_it_once_closed(job: Job) -> None:
    """An idle logger: its file is old, and it still has it open for writing. --once must not take it
    from under the writer (it did: the first look trusted the old mtime), nor wait for it."""
    job.configure()
    write_jsonl(job.inbox / "other.jsonl", _rows(0, 5))
    held = write_jsonl(job.inbox / "held.jsonl", _rows(10, 5))
    old = time.time() - 120
    for path in (job.inbox / "other.jsonl", held):
        os.utime(path, (old, old))
    with held.open("a") as out:
        writer = subprocess.Popen(["sleep", "120"], stdout=out)
    try:
        first = job.run_once()
        assert first.returncode == 0, first.stderr
        said = [line for line in first.stderr.splitlines() if "still open for writing" in line]
        assert len(said) == 1 and "left for the next run" in said[0] and "held.jsonl" in said[0]
        assert held.exists() and _ids(job) == list(range(5))
    finally:
        writer.kill()
        writer.wait()
    os.utime(held, (old, old))
    second = job.run_once()
    assert second.returncode == 0, second.stderr
    assert not held.exists() and _ids(job) == [*range(5), *range(10, 15)]


def test_appends_after_the_claim_are_read_from_the_offset_even_without_seeing_the_writer(job: Job) -> None:
    # wait_for_writers off: the worker cannot see the writer (another container, NFS); it still reads
    # what is appended after it took the file, and never parses a half-written last line.
    job.configure(
        sources={"settle_seconds": "1s", "wait_for_writers": False},
        batch={"max_age": "500ms"},
        server={"listen": ""},
    )
    second = _line(1)
    proc = job.start()
    try:
        writer = _writer(
            job.inbox / "live.jsonl", [_line(0), second[:7], second[7:] + _line(2), _line(3)], 0.3, True
        )
        assert writer.wait(timeout=60) == 0
        wait_for(lambda: len(job.rows()) >= 4, 60, "the appended lines")
        wait_for(lambda: not list(job.inbox.glob("**/*live.jsonl")), 30, "the file acknowledged")
        time.sleep(1.5)
    finally:
        _stop(proc)
    assert _ids(job) == [0, 1, 2, 3]
    assert job.dead_letters() == []


def test_an_unreadable_file_is_kept_reported_and_taken_once_readable(job: Job) -> None:
    write_jsonl(job.inbox / "good.jsonl", _rows(0, 5))
    secret = write_jsonl(job.inbox / "secret.jsonl", _rows(100, 3))
    secret.chmod(0)
    locked_dir = job.inbox / "locked"
    locked_dir.mkdir()
    write_jsonl(locked_dir / "inner.jsonl", _rows(200, 2))
    locked_dir.chmod(0)
    job.configure()
    try:
        r = _run_once_restricted(job)
    finally:
        locked_dir.chmod(0o755)
    assert r.returncode == 1, r.stderr
    assert "secret.jsonl: EACCES" in r.stderr and "locked: cannot list directory: EACCES" in r.stderr
    assert secret.exists() and locked_dir.joinpath("inner.jsonl").exists()  # never deleted, never moved
    assert _ids(job) == list(range(5))
    assert job.dead_letters() == []  # not a dead letter: the file is kept instead
    status = json.loads(job.cli("status", "--json").stdout)
    problems = {p["input"]: p["reason"] for w in status for p in w["unreadable"]}
    assert problems[str(secret)].startswith("EACCES")

    secret.chmod(0o644)
    r = _run_once_restricted(job)
    assert r.returncode == 0, r.stderr
    assert _ids(job) == [*range(5), 100, 101, 102, 200, 201]
    status = json.loads(job.cli("status", "--json").stdout)
    assert all(w["unreadable"] == [] for w in status)


def test_symlinks_are_followed_only_the_link_is_acknowledged_loops_and_broken_links_are_reported(
    job: Job, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write_jsonl(outside / "c.jsonl", _rows(10, 3))
    write_jsonl(outside / "dir" / "d.jsonl", _rows(20, 2))
    write_jsonl(job.inbox / "a.jsonl", _rows(0, 2))
    os.symlink("../outside/c.jsonl", job.inbox / "c.jsonl")  # relative: breaks if moved as is
    os.symlink("../outside/dir", job.inbox / "more")
    os.symlink(".", job.inbox / "loop")
    os.symlink("a.jsonl", job.inbox / "alias.jsonl")  # inside the tree: a.jsonl is taken itself
    os.symlink("../nowhere.jsonl", job.inbox / "broken.jsonl")
    job.configure()

    r = job.run_once()
    assert r.returncode == 1, r.stderr  # the broken link is input that could not be read
    assert "broken.jsonl: broken symlink" in r.stderr
    assert Counter(_ids(job)) == Counter([0, 1, 10, 11, 12, 20, 21])
    assert (outside / "c.jsonl").read_text().count("\n") == 3  # the target stays
    assert not os.path.lexists(job.inbox / "c.jsonl")  # the link was what was acknowledged
    assert os.path.lexists(job.inbox / "broken.jsonl")
    warnings = {e["event"] for e in logs_of(r.stderr) if e.get("level") == "warning"}
    assert "symlinked directory skipped: it loops back" in warnings
    assert "symlink skipped: its target is in the watched tree and is taken itself" in warnings

    # Every restart runs the same way: nothing crashes on what is left.
    r = job.run_once()
    assert r.returncode == 1 and "broken.jsonl" in r.stderr
    assert Counter(_ids(job)) == Counter([0, 1, 10, 11, 12, 20, 21])


def test_symlinks_are_skipped_with_a_warning_when_not_followed(job: Job, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "outside" / "c.jsonl", _rows(10, 3))
    write_jsonl(job.inbox / "a.jsonl", _rows(0, 2))
    os.symlink("../outside/c.jsonl", job.inbox / "c.jsonl")
    job.configure(sources={"follow_symlinks": False})
    r = job.run_once()
    assert r.returncode == 0, r.stderr
    assert _ids(job) == [0, 1]
    assert os.path.lexists(job.inbox / "c.jsonl")
    assert any(e["event"].startswith("symlink skipped; set follow_symlinks") for e in logs_of(r.stderr))


def test_a_fifo_a_socket_and_a_link_to_a_device_are_skipped_and_the_run_ends(job: Job) -> None:
    """A named pipe in the inbox: opening it waits for a writer for ever, and a link to /dev/zero is
    never read to its end. Either one hung `--once` (a cron job that never ends) and, in a daemon,
    every file behind it. They are skipped with one warning each; the files beside them land."""
    write_jsonl(job.inbox / "a.jsonl", _rows(0, 2))
    (job.inbox / "sub").mkdir()
    write_jsonl(job.inbox / "sub" / "b.jsonl", _rows(2, 1))
    os.mkfifo(job.inbox / "pipe.jsonl")
    os.symlink("/dev/zero", job.inbox / "sub" / "zero.jsonl")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(job.inbox / "sock.jsonl"))
    try:
        job.configure()
        r = job.run_once(timeout=60)
    finally:
        sock.close()
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert _ids(job) == [0, 1, 2]
    skipped = Counter(e["event"] for e in logs_of(r.stderr) if "only regular files are read" in e["event"])
    assert skipped == {
        "a named pipe (FIFO) skipped: only regular files are read": 1,
        "a device skipped: only regular files are read": 1,
        "a socket skipped: only regular files are read": 1,
    }
    assert all(os.path.lexists(job.inbox / p) for p in ("pipe.jsonl", "sock.jsonl", "sub/zero.jsonl"))


def test_done_dir_on_another_filesystem(job: Job) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(job.dir).st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    done = shm / f"ingest-done-{job.prefix.strip('/')}"
    try:
        for i in range(3):
            write_jsonl(job.inbox / "sub" / f"f{i}.jsonl", _rows(i * 10, 10))
        job.configure(sources={"done_dir": str(done)})
        r = job.run_once()
        assert r.returncode == 0, r.stderr
        assert sorted(p.relative_to(done).as_posix() for p in done.rglob("*.jsonl")) == [
            "sub/f0.jsonl",
            "sub/f1.jsonl",
            "sub/f2.jsonl",
        ]
        assert (done / "sub" / "f1.jsonl").read_text().count("\n") == 10
        assert not any((job.inbox / ".ingest").rglob("*.jsonl"))  # nothing stuck in the claims
        assert len(_ids(job)) == 30
    finally:
        subprocess.run(["rm", "-rf", str(done)], check=False)


def test_relative_paths_follow_the_config_file_and_bad_paths_exit_2(job: Job, tmp_path: Path) -> None:
    write_jsonl(job.inbox / "a.jsonl", _rows(0, 4))
    config = job.configure()
    text = config.read_text().replace(json.dumps(str(job.inbox)), '"inbox"')
    text = text.replace(json.dumps(str(job.dir / "spool")), '"spool"')
    config.write_text(text)
    elsewhere = tmp_path / "cron"
    elsewhere.mkdir()
    r = subprocess.run(
        job.command("--once"), cwd=elsewhere, env=job.env(), capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 0, r.stderr
    assert _ids(job) == [0, 1, 2, 3]
    assert not (elsewhere / "inbox").exists() and (job.dir / "spool").is_dir()

    def exit_2(replace: tuple[str, str], says: str) -> None:
        config.write_text(text.replace(*replace))
        r = job.run_once()
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], r.stderr

    exit_2(('"inbox"', '"no-such-dir"'), "sources.0.path: directory")
    (job.dir / "plain.jsonl").write_text("")
    exit_2(('"inbox"', '"plain.jsonl"'), "sources.0.path: ")
    exit_2(('"spool"', '"/proc/ingest-spool"'), "spool.dir: cannot create or write /proc/ingest-spool")
    config.write_text(text)
