"""`ingest run --once --source stdin`: a pipe read to EOF, rows out equal rows in."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tests.integration.conftest import Job, logs_of, readable_rows


def test_a_million_piped_lines_and_malformed_ones_dead_lettered_with_their_line(job: Job) -> None:
    data = job.dir / "events.jsonl"
    bad = {1000, 500_000, 999_999}  # line numbers (1-based) of malformed lines
    with data.open("w") as out:
        n = 0
        for line in range(1, 1_000_001 + len(bad)):
            if line in bad:
                out.write("{broken\n" if line != 500_000 else "[1, 2, 3]\n")
            else:
                out.write(
                    json.dumps({"id": n, "kind": "view" if n % 3 else "click", "value": n * 0.5}) + "\n"
                )
                n += 1
    r = job.pipe(data)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = []
    data_keys = job.keys()
    for key in data_keys:
        table = job.read(key)
        ids.append(table.column("id"))
        assert table.schema.names == ["id", "kind", "value"]
    every = pa.chunked_array([c.combine_chunks() for c in ids])
    assert len(every) == 1_000_000 and len(pc.unique(every)) == 1_000_000  # each id exactly once
    assert pc.min_max(every).as_py() == {"min": 0, "max": 999_999}
    letters = job.dead_letters()
    assert sorted(d["line"] for d in letters) == sorted(bad)
    assert {d["source"] for d in letters} == {"stdin"}
    assert "uploaded 1,000,000 records" in r.stdout


def test_csv_on_stdin_into_a_named_table(job: Job) -> None:
    data = job.dir / "rows.csv"
    data.write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(1000)) + "7,8,9\n")
    job.configure(
        output={"prefix": job.prefix, "key_template": "{prefix}{table}/{date:%Y}/x_{seq:04d}.parquet"}
    )
    r = job.pipe(data, "--format", "csv", "--table", "people")
    assert r.returncode == 0, r.stderr[-3000:]
    [key] = job.keys()
    assert key.startswith(f"{job.prefix}people/")
    assert job.read(key).column("id").to_pylist() == list(range(1000))
    assert [(d["line"], d["reason"]) for d in job.dead_letters()] == [(1002, "expected 2 columns, got 3")]
    assert any(e.get("event") == "uploaded" for e in logs_of(r.stderr))


def test_a_csv_cell_over_the_block_size_is_a_dead_letter_and_every_other_row_lands(
    job: Job, tmp_path: Path
) -> None:
    data = tmp_path / "big.csv"
    with data.open("wb") as fh:
        fh.write(b"id,name\n0,first\n1,")
        for _ in range(70):  # a 70 MB cell (pyarrow's block is 32 MiB)
            fh.write(b"x" * 1_000_000)
        fh.write(b"\n")
        fh.write(b"".join(f"{i},n{i}\n".encode() for i in range(2, 1002)))
    r = job.pipe(data, "--format", "csv")
    assert r.returncode == 0, r.stderr[-3000:]
    ids = sorted(int(x["id"]) for x in readable_rows(job, tmp_path))
    assert ids == [0, *range(2, 1002)]
    [letter] = job.dead_letters()
    assert letter["line"] == 3 and letter["raw_bytes"] == 70_000_003  # "1," + the cell + newline
    assert "max_record_bytes" in letter["reason"]


def test_stdin_that_cannot_be_read_to_its_end_says_what_is_lost_and_exits_1(job: Job, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.csv"
    random.seed(7)
    garbage.write_bytes(
        b"a,b\n1,2\n" + bytes(random.randrange(256) for _ in range(4000)).replace(b'"', b"") + b"\n3\n4\n"
    )
    r = job.pipe(garbage, "--format", "csv")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("not ingested: standard input")]
    assert "cannot be kept" in line and "lines) is not" in line
    assert "kept where they are" not in r.stderr and "taken again by the next run" not in r.stderr
    assert all(c >= " " or c in "\n\t" for c in r.stderr), "control characters on the terminal"
    assert "\ufffd" not in r.stderr


def test_a_csv_header_with_a_repeated_name_on_stdin_keeps_both_columns(job: Job, tmp_path: Path) -> None:
    data = tmp_path / "dup.csv"
    data.write_bytes(b"id,name,id\n" + b"".join(f"{i},n{i},{i + 1000}\n".encode() for i in range(100)))
    r = job.pipe(data, "--format", "csv")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = sorted(readable_rows(job, tmp_path), key=lambda x: int(x["id"]))
    assert [(int(x["id"]), x["name"], int(x["id_2"])) for x in rows] == [
        (i, f"n{i}", i + 1000) for i in range(100)
    ]
