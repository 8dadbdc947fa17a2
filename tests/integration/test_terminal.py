"""What a user sees on a terminal: `ingest run --once` on a pseudo-terminal, read through a terminal
emulator (pyte), so the assertions are about the screen, not about escape sequences."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import time

import pyte

from tests.integration.conftest import Job, write_jsonl

COLUMNS, ROWS = 120, 40
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")  # a console log line starts with its time
BAR = re.compile(r"([\d,]+) records · [\d.]+ MB")


def _run_on_terminal(job: Job, *args: str, **env: str) -> tuple[int, list[str], list[list[str]]]:
    """Run `ingest run` on a 120×40 pseudo-terminal; return its exit code, every line the terminal
    showed (scrolled off or not) and the screen after each read (to see the bar move)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=10_000)
    screen.set_mode(pyte.modes.LNM)  # a pty turns "\n" into "\r\n" (onlcr): so does the screen
    stream = pyte.ByteStream(screen)
    proc = subprocess.Popen(
        job.command(*args), cwd=job.dir, env=job.env(**env), stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    snapshots: list[list[str]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        stream.feed(data)
        snapshots.append(list(screen.display))
    os.close(master)
    code = proc.wait(30)
    scrolled = ["".join(ch.data for _, ch in sorted(line.items())) for line in screen.history.top]
    lines = [line.rstrip() for line in [*scrolled, *screen.display]]
    return code, lines, snapshots


def test_once_on_a_terminal_logs_above_a_moving_bar_and_ends_with_a_summary_of_its_own(job: Job) -> None:
    for i in range(12):
        write_jsonl(job.inbox / f"f{i:02d}.jsonl", [{"id": i * 500 + j, "v": "x" * 20} for j in range(500)])
    job.configure(log={"format": "auto"}, batch={"max_records": 500}, upload={"concurrency": 1})
    # A slow journal (0.1 s per commit) spaces the twelve uploads out, so the bar is seen between them.
    code, lines, snapshots = _run_on_terminal(job, "--once", INGEST_JOURNAL_DELAY="0.1")
    text = "\n".join(lines)
    assert code == 0, text

    # One console log line per object (a long one wraps onto the next rows), none lost to the bar.
    logged = [line for line in lines if STAMP.match(line) and "] uploaded" in line]
    assert len(logged) == 12, text
    for line in lines:  # a log line never shares its line with the bar or with another line
        if "[info" in line or "[warn" in line or "[error" in line:
            assert STAMP.match(line), f"log line not at the start of its line: {line!r}"
            assert not BAR.search(line), f"log line and bar on one line: {line!r}"

    counts = {
        int(m.group(1).replace(",", "")) for snap in snapshots for row in snap if (m := BAR.search(row))
    }
    assert len(counts - {0, 6000}) >= 2, f"the bar's record count did not move: {sorted(counts)}"

    (summary,) = [line for line in lines if "records in" in line]
    assert re.fullmatch(r"uploaded 6,000 records in 12 objects \([\d.]+ MB\) from 12 files", summary), text
    after = lines[lines.index(summary) + 1 :]
    assert not BAR.search("\n".join(after))  # the bar is gone once the summary is printed
    # Then where the data went and how to look at it, in two lines.
    first = f"{job.prefix}{time.strftime('%Y/%m/%d', time.gmtime())}/ingested_0001.parquet"
    where = first.rpartition("/")[0]
    assert after[:2] == [
        f"objects in s3://{job.r2.bucket}/{where}/ — list them: ingest ls --prefix {where}/",
        f"rows of the first one: ingest head {first}",
    ], text
