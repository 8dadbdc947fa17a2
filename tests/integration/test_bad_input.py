"""Bad input never stops the pipeline and is never dropped: good rows land, bad ones become a
dead-letter object under `{prefix}_errors/YYYY/MM/DD/` with the right source and line."""

from __future__ import annotations

import json
from collections import Counter

from tests.integration.conftest import Job, today_dir


def _jsonl(rows: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_bad_input_corpus_good_rows_uploaded_bad_ones_in_the_dead_letter_object(job: Job) -> None:
    inbox = job.inbox
    good: set[int] = set()
    expected_dead: set[tuple[str, int]] = set()

    # (A truncated gzip is kept and reported, not dead-lettered: test_messy_files.)
    # Invalid UTF-8 on lines 2 and 5.
    lines = [json.dumps({"id": 100_000 + i}).encode() for i in range(6)]
    lines[1] = b'{"id": "\xff\xfe"}'
    lines[4] = b"\xc3\x28 not utf-8"
    (inbox / "utf8.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    good |= {100_000, 100_002, 100_003, 100_005}
    expected_dead |= {("utf8.jsonl", 2), ("utf8.jsonl", 5)}

    # Mixed types: an object where a number was, on line 7 (ints and floats mix fine).
    mixed = [{"id": 200_000 + i, "n": i if i % 2 else i + 0.5} for i in range(10)]
    mixed[6]["n"] = {"not": "a number"}
    (inbox / "mixed.jsonl").write_bytes(_jsonl(mixed))
    good |= {200_000 + i for i in range(10) if i != 6}
    expected_dead.add(("mixed.jsonl", 7))

    # A 10 MB line (over the default 8 MiB max_record_bytes) between good lines, and a 3 MB one that fits.
    big = [
        {"id": 300_000},
        {"id": 300_001, "blob": "y" * 10_000_000},
        {"id": 300_002, "blob": "z" * 3_000_000},
        {"id": 300_003},
    ]
    (inbox / "big.jsonl").write_bytes(_jsonl(big))
    good |= {300_000, 300_002, 300_003}
    expected_dead.add(("big.jsonl", 2))

    (inbox / "empty.jsonl").write_bytes(b"")

    # CSV with ragged rows on lines 3 and 5; rows after them keep their line numbers.
    (inbox / "ragged.csv").write_text("id,name\n400000,a\n400001\n400002,c\n400003,d,extra\n400004,e\n")
    good |= {400_000, 400_002, 400_004}
    expected_dead |= {("ragged.csv", 3), ("ragged.csv", 5)}

    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]

    ids = Counter(int(x["id"]) for x in job.rows())  # type: ignore[call-overload]
    assert max(ids.values()) == 1
    assert set(ids) == good
    blob = next(x for x in job.rows() if x["id"] == 300_002)["blob"]
    assert isinstance(blob, str) and len(blob) == 3_000_000

    error_keys = job.error_keys()
    assert error_keys and all(k.startswith(f"{job.prefix}_errors/{today_dir()}/errors_") for k in error_keys)
    dead = job.dead_letters()
    seen = {(d["source"], d["line"]) for d in dead}
    assert expected_dead <= seen
    by_place = {(d["source"], d["line"]): d for d in dead}
    assert "invalid UTF-8" in by_place[("utf8.jsonl", 2)]["reason"]
    assert by_place[("utf8.jsonl", 5)]["raw_base64"]  # not UTF-8: kept byte for byte, base64
    mixed_reason = by_place[("mixed.jsonl", 7)]["reason"]
    assert "field 'n'" in mixed_reason and '{"not":"a number"}' in mixed_reason
    assert "max_record_bytes" in by_place[("big.jsonl", 2)]["reason"]
    assert by_place[("ragged.csv", 5)]["raw"] == "400003,d,extra"
    assert len(dead) == len(expected_dead)  # nothing else, nothing twice

    assert f"dead letters: {len(dead)} records could not be read" in r.stdout
    assert f"s3://{job.r2.bucket}/{job.prefix}_errors/" in r.stdout
    assert not [p for p in inbox.iterdir() if p.is_file()]  # every file acknowledged, even the empty one
