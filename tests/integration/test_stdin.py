"""`ingest run --once --source stdin`: a pipe read to EOF, rows out equal rows in."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from tests.integration.conftest import Job, logs_of


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
