"""Messy real-world files (issue 29): nothing is lost, every object opens in DuckDB and polars, one
bad file never stops the others. Each test writes the file people actually get, runs the real worker
against the real local R2, and reads the objects back with readers the project did not write."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import duck
from tests.integration.conftest import (
    Job,
    free_port,
    ingest_without_r2,
    logs_of,
    readable_rows,
    readyz,
    wait_for,
    write_jsonl,
)


def _raw(letter: dict[str, Any]) -> bytes:
    if "raw_base64" in letter:
        return base64.b64decode(letter["raw_base64"])
    return str(letter.get("raw", "")).encode()


# -- 1. text that is not UTF-8 --------------------------------------------------------------------


def test_a_csv_row_that_is_not_utf8_is_a_dead_letter_with_its_bytes_and_the_rest_lands(
    job: Job, tmp_path: Path
) -> None:
    rows = [f"{i},name{i}\n".encode() for i in range(1000)]
    rows[499] = "499,caf\u00e9\n".encode("cp1252")
    (job.inbox / "excel.csv").write_bytes(b"id,name\n" + b"".join(rows))
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    ids = Counter(int(x["id"]) for x in readable_rows(job, tmp_path))
    assert set(ids) == set(range(1000)) - {499} and max(ids.values()) == 1
    (letter,) = job.dead_letters()
    assert letter["line"] == 501 and letter["source"] == "excel.csv"
    assert "UTF-8" in letter["reason"] and "encoding" in letter["reason"]
    assert "caf\u00e9".encode("cp1252") in _raw(letter)  # the bytes themselves, not a lossy copy


def test_the_encoding_setting_reads_windows_latin1_and_utf16_files_right(job: Job, tmp_path: Path) -> None:
    inbox = job.inbox
    (inbox / "a.csv").write_bytes("id,name\n1,Prénom\n2,Zoë\n".encode("cp1252"))
    (inbox / "b.jsonl").write_bytes('{"id": 3, "name": "Ærø"}\n'.encode("cp1252"))
    job.configure(sources={"encoding": "cp1252"})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    got = {x["id"]: x["name"] for x in readable_rows(job, tmp_path)}
    assert got == {1: "Prénom", 2: "Zoë", 3: "Ærø"}
    assert job.dead_letters() == []


def test_utf16_with_a_bom_and_utf8_with_a_bom_are_read_without_any_setting(job: Job, tmp_path: Path) -> None:
    # Excel's "Unicode text" export is UTF-16 with a BOM; many Windows tools write a UTF-8 BOM.
    (job.inbox / "excel16.csv").write_bytes("id,Prénom\n1,Zoë\n2,Łukasz\n".encode("utf-16"))
    (job.inbox / "bom8.jsonl").write_bytes(b"\xef\xbb\xbf" + '{"id": 3, "Prénom": "Ærø"}\n'.encode())
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    got = {x["id"]: x["Prénom"] for x in readable_rows(job, tmp_path)}
    assert got == {1: "Zoë", 2: "Łukasz", 3: "Ærø"}
    assert job.dead_letters() == []


def test_a_cp1252_header_without_the_setting_is_kept_and_named_while_other_files_land(
    job: Job, tmp_path: Path
) -> None:
    (job.inbox / "prenom.csv").write_bytes("id,Prénom\n1,a\n".encode("cp1252"))
    (job.inbox / "good.jsonl").write_bytes(b'{"id": 7}\n')
    job.configure()
    r = job.run_once()
    assert r.returncode == 1, r.stderr[-3000:]  # something is left: said, not hidden
    assert "Traceback" not in r.stderr
    assert [x["id"] for x in readable_rows(job, tmp_path)] == [7]
    kept = [p.name for p in job.inbox.rglob("*prenom.csv")]
    assert kept, "the file that could not be read must be kept"
    problems = [x for x in logs_of(r.stderr) if x.get("event", "").startswith("cannot read input")]
    assert any("prenom.csv" in str(x.get("path")) and "encoding" in str(x.get("reason")) for x in problems)


def test_invalid_utf8_inside_a_json_string_is_a_dead_letter_and_the_object_opens_everywhere(
    job: Job, tmp_path: Path
) -> None:
    lines = [json.dumps({"id": i, "s": f"v{i}"}).encode() for i in range(40_000)]
    lines[20_000] = b'{"id": 20000, "s": "caf\xe9"}'
    (job.inbox / "mostly.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    ids = Counter(int(x["id"]) for x in readable_rows(job, tmp_path))
    assert set(ids) == set(range(40_000)) - {20_000} and max(ids.values()) == 1
    (letter,) = job.dead_letters()
    assert letter["line"] == 20_001 and "UTF-8" in letter["reason"]
    assert _raw(letter) == lines[20_000]


# -- 2. compression that does not match the name --------------------------------------------------


def test_compression_is_told_by_the_bytes_not_the_name(job: Job, tmp_path: Path) -> None:
    lines = [json.dumps({"id": i}).encode() + b"\n" for i in range(100)]
    (job.inbox / "gzip-inside.jsonl.zst").write_bytes(gzip.compress(b"".join(lines[:70])))
    (job.inbox / "plain-inside.jsonl.gz").write_bytes(b"".join(lines[70:]))
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    ids = Counter(int(x["id"]) for x in readable_rows(job, tmp_path))
    assert set(ids) == set(range(100)) and max(ids.values()) == 1
    assert job.dead_letters() == []
    said = [x for x in logs_of(r.stderr) if "compression" in x.get("event", "")]
    assert len(said) == 2


def test_a_truncated_gzip_is_kept_and_reported_for_json_lines_and_csv(job: Job, tmp_path: Path) -> None:
    lines = b"".join(json.dumps({"id": i, "pad": "x" * 40}).encode() + b"\n" for i in range(20_000))
    whole = gzip.compress(lines)
    (job.inbox / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    text = b"id,pad\n" + b"".join(f"{i},{'y' * 40}\n".encode() for i in range(20_000))
    whole = gzip.compress(text)
    (job.inbox / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    job.configure()
    r = job.run_once()
    assert r.returncode == 1  # not everything could be read: said by the exit code
    assert "Traceback" not in r.stderr
    assert {p.name.split("--")[-1] for p in job.inbox.rglob("*cut.*")} == {"cut.jsonl.gz", "cut.csv.gz"}
    problems = [x for x in logs_of(r.stderr) if x.get("event", "").startswith("cannot read input")]
    assert {Path(str(x["path"])).name.split("--")[-1] for x in problems} >= {"cut.jsonl.gz", "cut.csv.gz"}
    ids = Counter(int(x["id"]) for x in readable_rows(job, tmp_path))
    assert max(ids.values(), default=1) == 1
    # A second run takes nothing twice: what was readable is in R2 once.
    r = job.run_once()
    ids = Counter(int(x["id"]) for x in readable_rows(job, tmp_path))
    assert max(ids.values(), default=1) == 1


# -- 3. a record over batch.max_record_bytes ------------------------------------------------------


def test_a_record_over_the_limit_is_kept_whole_in_the_dead_letters(job: Job, tmp_path: Path) -> None:
    big = json.dumps({"id": 1, "blob": "b" * (3 << 20)}).encode()
    (job.inbox / "big.jsonl").write_bytes(b'{"id": 0}\n' + big + b'\n{"id": 2}\n')
    tail = b'{"id": 3, "blob": "' + b"t" * (3 << 20)  # no closing quote, no newline: still kept
    (job.inbox / "tail.jsonl").write_bytes(b'{"id": 4}\n' + tail)
    # Longer than a read block and never ending: streamed into the dead letter, never held whole.
    endless = b'{"id": 5, "blob": "' + b"e" * (40 << 20) + b'"}'
    (job.inbox / "endless.jsonl.gz").write_bytes(gzip.compress(endless + b'\n{"id": 6}\n', 1))
    job.configure(batch={"max_record_bytes": "1MiB"})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(int(x["id"]) for x in readable_rows(job, tmp_path)) == [0, 2, 4, 6]
    letters = {(d["source"], d["line"]): d for d in job.dead_letters()}
    for place, raw in (
        (("big.jsonl", 2), big),
        (("tail.jsonl", 2), tail),
        (("endless.jsonl.gz", 1), endless),
    ):
        letter = letters[place]
        assert "max_record_bytes" in letter["reason"] and "kept" in letter["reason"]
        assert _raw(letter) == raw  # whole, byte for byte: raising the limit and replaying it works
        assert letter["raw_bytes"] == len(raw)


# -- 4. done_dir and a name that comes again ------------------------------------------------------


def test_done_dir_never_overwrites_a_name_that_comes_again(job: Job, tmp_path: Path) -> None:
    done = tmp_path / "done"
    job.configure(sources={"done_dir": str(done)})
    (job.inbox / "export.jsonl").write_bytes(b'{"id": 1}\n')
    assert job.run_once().returncode == 0
    (job.inbox / "export.jsonl").write_bytes(b'{"id": 2}\n')
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    kept = sorted(p.read_bytes() for p in done.iterdir())
    assert kept == [b'{"id": 1}\n', b'{"id": 2}\n']
    assert (done / "export.jsonl").read_bytes() == b'{"id": 1}\n'
    moved = [x for x in logs_of(r.stderr) if "done_dir" in json.dumps(x) and "export" in json.dumps(x)]
    assert moved, "the new name must be said in the log"


def test_nested_folders_with_odd_names_land_once_and_move_to_done_dir_under_their_own_paths(
    job: Job, tmp_path: Path
) -> None:
    """A claimed file's name says its folder (`<id>~~a%2Fb.jsonl`), or a sidecar does when it cannot:
    a folder that is not UTF-8, a path longer than a name, names holding the escape's own characters."""
    folders = [
        b"2024/08/02/13",
        b"odd/%2F/100%25/x~~y--z",
        b"caf\xe9/inbox",  # not UTF-8: a sidecar keeps its bytes
        b"/".join([b"d" * 60] * 4),  # 243 bytes of folders: too long for a name, a sidecar again
    ]
    root = os.fsencode(job.inbox)
    for n, folder in enumerate(folders):
        path = os.path.join(root, folder, b"events.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b"".join(b'{"id": %d, "f": %d}\n' % (n * 10 + i, n) for i in range(10)))
    done = tmp_path / "done"
    job.configure(sources={"done_dir": str(done)})
    # Killed once the files are claimed: the next run knows where each came from by its claimed name
    # (or sidecar) alone.
    killed = job.run_once(INGEST_CRASH_AT="encoded:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    rows = readable_rows(job, tmp_path)  # pyarrow, polars and DuckDB open every object
    assert sorted(int(x["id"]) for x in rows) == list(range(40))
    for folder in folders:
        with open(os.path.join(os.fsencode(done), folder, b"events.jsonl"), "rb") as moved:
            assert moved.read().count(b"\n") == 10, folder
    claimed = job.inbox / ".ingest" / "claimed"
    left = [*claimed.rglob("*--*"), *claimed.rglob("*~~*"), *claimed.rglob("*.origin")]
    assert not left, "claimed files or sidecars left after their acknowledgement"


# -- 5. every record accounted for ----------------------------------------------------------------


def test_every_record_is_accounted_for_an_empty_object_is_a_dead_letter_whatever_its_neighbours(
    job: Job, tmp_path: Path
) -> None:
    (job.inbox / "empty-objects.jsonl").write_bytes(b"{}\n{}\n")
    (job.inbox / "mixed.jsonl").write_bytes(b'{"id": 5}\n{}\n{"id": null}\n')
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    rows = readable_rows(job, tmp_path)
    letters = job.dead_letters()
    assert len(rows) + len(letters) == 5  # nothing vanished
    assert sorted(rows, key=lambda x: x["id"] is None) == [{"id": 5}, {"id": None}]  # a null is a row
    assert sorted((d["source"], d["line"]) for d in letters) == [
        ("empty-objects.jsonl", 1),
        ("empty-objects.jsonl", 2),
        ("mixed.jsonl", 2),
    ]
    assert all("no fields" in d["reason"] and d["raw"] == "{}" for d in letters)


# -- 9-12. one bad file never stops the others ----------------------------------------------------


def test_csv_headers_with_empty_or_repeated_names_get_names_every_engine_takes(
    job: Job, tmp_path: Path
) -> None:
    (job.inbox / "a.csv").write_text("id,name,,,\n1,x,p,q,r\n")
    (job.inbox / "b.csv").write_text("id,,value,\n2,s,v,t\n")
    (job.inbox / "c.csv").write_text("id,name,name,ID\n3,n1,n2,I\n")
    (job.inbox / "good.jsonl").write_bytes(b'{"id": 4}\n')
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {x["id"]: x for x in readable_rows(job, tmp_path)}
    assert set(rows) == {1, 2, 3, 4}
    assert (rows[1]["name"], rows[1]["column_3"], rows[1]["column_4"], rows[1]["column_5"]) == (
        "x",
        "p",
        "q",
        "r",
    )
    assert (rows[2]["column_2"], rows[2]["value"], rows[2]["column_4"]) == ("s", "v", "t")
    assert (rows[3]["name"], rows[3]["name_2"], rows[3]["ID_2"]) == ("n1", "n2", "I")
    assert job.dead_letters() == []


def test_a_file_name_that_is_not_utf8_is_taken_and_named_losslessly(job: Job, tmp_path: Path) -> None:
    odd = os.fsdecode(b"caf\xe9\xff.jsonl")
    (job.inbox / odd).write_bytes(b'{"id": 1}\n{"id": 3, "n": {"deep": 1}}\n')
    (job.inbox / "good.jsonl").write_bytes(b'{"id": 2}\n')
    done = tmp_path / "done"
    job.configure(sources={"done_dir": str(done)})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(x["id"] for x in readable_rows(job, tmp_path)) == [1, 2, 3]
    assert sorted(os.fsencode(p.name) for p in done.iterdir()) == [b"caf\xe9\xff.jsonl", b"good.jsonl"]
    assert (done / odd).read_bytes().startswith(b'{"id": 1}')


def test_a_250_byte_file_name_is_claimed_read_and_moved_to_done(job: Job, tmp_path: Path) -> None:
    long = "x" * 244 + ".jsonl"  # 250 bytes: ext4 allows 255
    nested = job.inbox / "d" / ("é" * 120 + ".jsonl")  # 246 bytes, in a subdirectory
    nested.parent.mkdir()
    (job.inbox / long).write_bytes(b'{"id": 1}\n')
    nested.write_bytes(b'{"id": 2}\n')
    done = tmp_path / "done"
    job.configure(sources={"done_dir": str(done)})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(x["id"] for x in readable_rows(job, tmp_path)) == [1, 2]
    assert (done / long).read_bytes() == b'{"id": 1}\n'
    assert (done / "d" / nested.name).read_bytes() == b'{"id": 2}\n'


def test_a_file_1100_folders_deep_is_taken_and_moved_to_done_under_its_path(job: Job, tmp_path: Path) -> None:
    """os.walk and mkdir(parents=True) recurse once per level: a tree deeper than the recursion limit
    stopped the run with RecursionError, at the walk and at the move to done_dir (found by this
    test). Both now go level by level."""
    deep = job.inbox
    for _ in range(1_100):  # about 2,200 bytes of path, within PATH_MAX
        deep = deep / "a"
        deep.mkdir()
    (deep / "deep.jsonl").write_bytes(b'{"id": 1}\n')
    (job.inbox / "top.jsonl").write_bytes(b'{"id": 2}\n')
    done = tmp_path / "done"
    job.configure(sources={"done_dir": str(done)})
    try:
        r = job.run_once()
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted(x["id"] for x in readable_rows(job, tmp_path)) == [1, 2]
        assert done.joinpath(*["a"] * 1_100, "deep.jsonl").read_bytes() == b'{"id": 1}\n'
        assert not (deep / "deep.jsonl").exists()
    finally:  # (pytest's clean-up of tmp_path recurses too)
        _remove_tree(job.inbox / "a")
        _remove_tree(done / "a")


def _remove_tree(top: Path) -> None:
    """shutil.rmtree, level by level."""
    if not top.is_dir():
        return
    below, folders = [top], []
    while below:
        folders.append(folder := below.pop())
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
                else:
                    os.unlink(entry.path)
    for folder in reversed(folders):
        folder.rmdir()


def test_deep_records_are_dead_letters_and_never_reach_the_schema(job: Job, tmp_path: Path) -> None:
    def deep(n: int) -> bytes:
        return b'{"id": 1, "a": ' + b"[" * n + b"1" + b"]" * n + b"}"

    lines = [b'{"id": 0, "a": [[1]]}', deep(60), deep(5_000), deep(100_000), b'{"id": 4, "a": [[2]]}']
    (job.inbox / "deep.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(x["id"] for x in readable_rows(job, tmp_path)) == [0, 4]
    letters = sorted(job.dead_letters(), key=lambda d: d["line"])
    assert [d["line"] for d in letters] == [2, 3, 4]
    assert all("nested" in d["reason"] and "32" in d["reason"] for d in letters)
    assert _raw(letters[2]) == lines[3]
    # A later file is read against a schema that never took the deep column.
    (job.inbox / "later.jsonl").write_bytes(b'{"id": 5, "a": [[3]]}\n')
    assert job.run_once().returncode == 0
    assert sorted(x["id"] for x in readable_rows(job, tmp_path)) == [0, 4, 5]


# -- 14-18. values never changed without a word ---------------------------------------------------


def test_text_among_numbers_makes_the_column_text_whatever_the_counts(job: Job, tmp_path: Path) -> None:
    (job.inbox / "two-texts.jsonl").write_bytes(b'{"v": "abc"}\n{"v": "def"}\n{"v": 5}\n{"v": 6}\n{"v": 7}\n')
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(x["v"] for x in readable_rows(job, tmp_path)) == ["5", "6", "7", "abc", "def"]
    assert job.dead_letters() == []


def test_json_text_is_never_reinterpreted_by_an_earlier_parquet_files_types(job: Job, tmp_path: Path) -> None:
    earlier = pa.table({"id": [1], "ts": [1_700_000_000_000], "amount": [1.5]})
    pq.write_table(earlier, job.inbox / "a.parquet")
    job.configure()
    assert job.run_once().returncode == 0
    (job.inbox / "b.jsonl").write_bytes(b'{"id": 2, "ts": "2026-01-01T00:00:00Z", "amount": "12.5"}\n')
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {x["id"]: x for x in readable_rows(job, tmp_path)}
    letters = job.dead_letters()
    if 2 in rows:  # landed: the text itself, never a number made of it
        assert str(rows[2]["ts"]) == "2026-01-01T00:00:00Z" and rows[2]["amount"] == "12.5"
    else:  # or a dead letter naming field, type and value
        (letter,) = letters
        assert "field 'ts'" in letter["reason"] and "2026-01-01T00:00:00" in letter["reason"]
        assert "int64" in letter["reason"] and "2026-01-01T00:00:00Z" in letter["raw"]
    assert rows[1]["ts"] == 1_700_000_000_000


def test_a_number_no_double_holds_is_a_dead_letter_not_infinity(job: Job, tmp_path: Path) -> None:
    (job.inbox / "big.jsonl").write_bytes(
        b'{"id": 1, "x": 1e400}\n{"id": 2, "x": 1.5}\n{"id": 3, "x": NaN}\n'
    )
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    assert [(x["id"], x["x"]) for x in readable_rows(job, tmp_path)] == [(2, 1.5)]
    letters = sorted(job.dead_letters(), key=lambda d: d["line"])
    assert [d["line"] for d in letters] == [1, 3]
    assert "1e400" in letters[0]["reason"] and "NaN" in letters[1]["reason"]


def test_big_integers_inside_lists_and_objects_land_with_every_digit(job: Job, tmp_path: Path) -> None:
    """An id past 2**53 inside an object, and one beside a fraction in a list: pyarrow's reader made
    them doubles (9007199254740993 landed as 9007199254740992.0). They land exactly (as the JSON
    text of their field), and the object opens in DuckDB and polars."""
    (job.inbox / "nested-ids.jsonl").write_bytes(
        b'{"id": 1, "refs": [9223372036854775808], "user": {"id": 9007199254740993}}\n'
        b'{"id": 2, "refs": [0.5, 9007199254740993], "user": {"id": 7}}\n'
    )
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    rows = sorted(readable_rows(job, tmp_path), key=lambda x: x["id"])
    assert [x["id"] for x in rows] == [1, 2] and job.dead_letters() == []
    text = json.dumps(rows)
    assert "9223372036854775808" in text and text.count("9007199254740993") == 2
    assert "9007199254740992" not in text and "e+18" not in text


def test_two_objects_on_one_line_are_a_dead_letter_and_the_file_still_lands(job: Job, tmp_path: Path) -> None:
    """pyarrow's reader takes `{..} {..}` on one line as two rows. The rows of such a file were numbered
    with one line number too few, and a later row's dead letter (here 4.5, which the schema's int64
    cannot hold) failed its batch with an IndexError in every run: the file was never taken. The
    line is a dead letter, as JSON lines want, and every other row lands or is a dead letter."""
    (job.inbox / "two-per-line.jsonl").write_bytes(b'{"n": 1} {"n": 2}\n{"n": 3}\n{"n": 4.5}\n')
    schema = job.dir / "schema.json"
    schema.write_text('{"n": "int64"}')
    job.configure(output={"schema_file": str(schema)})
    r = job.run_once()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert readable_rows(job, tmp_path) == [{"n": 3}]
    letters = sorted(job.dead_letters(), key=lambda d: d["line"])
    assert [(d["line"], d["raw"]) for d in letters] == [(1, '{"n": 1} {"n": 2}'), (3, '{"n": 4.5}')]
    assert "Extra data" in letters[0]["reason"] and "int64" in letters[1]["reason"]
    assert not any(job.inbox.glob("*.jsonl"))  # taken and acknowledged


def test_columns_keep_the_order_the_input_first_has_them(job: Job, tmp_path: Path) -> None:
    (job.inbox / "order.jsonl").write_bytes(b'{"id": 1, "ts": "2026-01-01T00:00:00Z", "v": 2.5, "s": "x"}\n')
    job.configure()
    assert job.run_once().returncode == 0
    [key] = job.keys()
    assert job.read(key).column_names == ["id", "ts", "v", "s"]


def test_names_that_differ_only_by_case_keep_the_first_spelling_and_rename_the_next(
    job: Job, tmp_path: Path
) -> None:
    (job.inbox / "case.jsonl").write_bytes(b'{"id": 1, "ID": 10}\n{"id": 2, "Id": 20}\n')
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    readable_rows(job, tmp_path)
    [key] = job.keys()
    path = tmp_path / "case.parquet"
    path.write_bytes(job.r2.token_s3().get_object(Bucket=job.r2.bucket, Key=key)["Body"].read())
    got = duck(f"SELECT id, ID_2, Id_3 FROM read_parquet('{path}') ORDER BY id")
    assert got == [(1, 10, None), (2, None, 20)]  # DuckDB's `id` is our `id`, not another spelling


def test_partition_by_year_1_writes_a_four_digit_year(job: Job, tmp_path: Path) -> None:
    (job.inbox / "old.jsonl").write_bytes(b'{"id": 1, "day": "0001-01-01"}\n')
    job.configure(output={"prefix": job.prefix, "partition_by": "day"})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    [key] = job.keys()
    assert key == f"{job.prefix}0001/01/01/ingested_0001.parquet"
    assert [x["id"] for x in readable_rows(job, tmp_path)] == [1]


# -- 22, 24. files as they come -------------------------------------------------------------------


def test_a_file_dated_in_the_future_is_read_and_acknowledged_in_one_run(job: Job, tmp_path: Path) -> None:
    path = job.inbox / "tomorrow.jsonl"
    path.write_bytes(b'{"id": 1}\n')
    later = path.stat().st_mtime + 86_400
    os.utime(path, (later, later))
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    assert [x["id"] for x in readable_rows(job, tmp_path)] == [1]
    assert not path.exists()


def test_a_csv_with_blank_lines_before_its_header_and_an_old_mac_csv_land_whole(
    job: Job, tmp_path: Path
) -> None:
    """A blank first line was taken for the header: the file read as empty and was acknowledged,
    its rows gone. An old Mac CSV (CR line ends, Excel's "CSV (Macintosh)") was kept for ever as
    unreadable. Both land whole; the ragged row is a dead letter with its own line."""
    (job.inbox / "blank-first.csv").write_bytes(b"\r\n\r\nid,name\r\n1,a\r\n2\r\n3,c\r\n")
    (job.inbox / "mac.csv").write_bytes(b"id,name\r4,d\r5,e\r")
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = sorted(readable_rows(job, tmp_path), key=lambda x: x["id"])
    assert rows == [{"id": i, "name": n} for i, n in [(1, "a"), (3, "c"), (4, "d"), (5, "e")]]
    assert [(d["source"], d["line"], d["raw"]) for d in job.dead_letters()] == [("blank-first.csv", 5, "2")]
    assert not any(job.inbox.glob("*.csv"))


def test_a_json_file_as_jq_prints_it_lands_one_row_per_object(job: Job, tmp_path: Path) -> None:
    """`jq . events.json > out.json`: objects one after another, each over several lines. The file
    was refused whole and kept for ever; each object is now a row."""
    objects = [{"id": i, "user": {"name": f"u{i}"}, "tags": ["a"] * i} for i in range(3)]
    (job.inbox / "out.json").write_text("".join(json.dumps(o, indent=2) + "\n" for o in objects))
    job.configure()
    r = job.run_once()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(readable_rows(job, tmp_path), key=lambda x: x["id"]) == objects
    assert job.dead_letters() == [] and not (job.inbox / "out.json").exists()


def test_csv_dialects_people_need(job: Job, tmp_path: Path) -> None:
    (job.inbox / "eu.csv").write_text("id;price;note\n1;12,5;'a;b'\n2;NULL;\n")
    job.configure(sources={"delimiter": ";", "quote": "'", "null_values": ["NULL"]})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    rows = sorted(readable_rows(job, tmp_path), key=lambda x: x["id"])
    assert rows == [
        {"id": 1, "price": "12,5", "note": "a;b"},  # a decimal comma stays text
        {"id": 2, "price": None, "note": ""},  # NULL is null; an empty cell stays ""
    ]


def test_csv_without_a_header_takes_the_configured_names(job: Job, tmp_path: Path) -> None:
    (job.inbox / "bare.csv").write_text("1,a\n2,b\n3\n")
    job.configure(sources={"header": False, "columns": ["id", "name"]})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted((x["id"], x["name"]) for x in readable_rows(job, tmp_path)) == [(1, "a"), (2, "b")]
    [(letter)] = job.dead_letters()
    assert letter["line"] == 3 and "columns" in letter["reason"]


# -- 13. schema explosion ------------------------------------------------------------------------


def test_a_key_per_line_stays_within_max_columns_and_loses_no_field(job: Job, tmp_path: Path) -> None:
    n = 20_000
    lines = b"".join(json.dumps({"id": i, f"k{i}": i}).encode() + b"\n" for i in range(n))
    (job.inbox / "keys.jsonl").write_bytes(lines)
    header = "id," + ",".join(f"c{j}" for j in range(5_000))
    body = "".join(f"{i}," + ",".join(str(j) for j in range(5_000)) + "\n" for i in range(n, n + 100))
    (job.inbox / "wide.csv").write_text(header + "\n" + body)
    job.configure(output={"prefix": job.prefix, "max_columns": 300})
    r = job.run_once(timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = readable_rows(job, tmp_path)
    assert len(rows) == n + 100 and sorted(x["id"] for x in rows) == list(range(n + 100))
    keys = job.keys()
    assert all(len(job.read(key).column_names) <= 300 for key in keys)
    for x in rows:  # every field is somewhere: its own column, or `_extra`
        fields = {k: v for k, v in x.items() if k != "_extra" and v is not None}
        fields |= json.loads(x["_extra"]) if x.get("_extra") else {}
        if x["id"] < n:
            assert fields == {"id": x["id"], f"k{x['id']}": x["id"]}
        else:
            assert len(fields) == 5_001 and str(fields["c4999"]) == "4999"
    # A later small file is not widened past the limit either.
    (job.inbox / "later.jsonl").write_bytes(b'{"id": -1, "new": 1}\n')
    assert job.run_once().returncode == 0
    later = job.keys()
    assert len(later) > len(keys) and all(len(job.read(key).column_names) <= 300 for key in later)


# -- 23. a config error on the newcomer's path -----------------------------------------------------


def test_a_source_config_error_is_one_line_and_exit_2_before_the_local_r2_starts(tmp_path: Path) -> None:
    for body, key in (
        ('[[sources]]\nkind = "http"\n', "sources.0.token"),
        (
            '[[sources]]\nkind = "directory"\npath = "."\n[server]\nupload_token = "t"\n',
            "server.upload_token",
        ),
    ):
        (tmp_path / "ingest.toml").write_text(body)
        r = ingest_without_r2(tmp_path, "--config", "ingest.toml", "run", timeout=60)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("config error: ")
        assert key in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / ".ingest" / "local").exists()  # nothing was started


# -- 19, 20. failures that stick or say too little ---------------------------------------------------

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")  # Debian's faketime (scripts/test)


def test_a_clock_off_by_20_minutes_is_retried_and_readiness_follows_the_latest_outcome(
    job: Job, tmp_path: Path
) -> None:
    offset = tmp_path / "clock"
    offset.write_text("+20m\n")  # the store refuses every request: RequestTimeTooSkewed
    probe = free_port()
    job.configure(
        sources={"settle_seconds": "50ms"},
        batch={"max_age": "100ms"},
        retry={"initial": "100ms", "max": "500ms", "max_elapsed": "24h"},
        server={"listen": f"127.0.0.1:{probe}", "ready_failure_seconds": "1s"},
    )
    skewed = {
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    proc = job.start(**skewed)
    try:
        wait_for(lambda: readyz(probe) == 200, 60, "the worker to be ready")
        write_jsonl(job.inbox / "a.jsonl", [{"id": i} for i in range(5)])
        wait_for(lambda: readyz(probe) == 503, 60, "readiness to turn false while the clock is off")
        assert job.keys() == []
        offset.write_text("+0\n")  # NTP fixed it
        wait_for(lambda: job.keys(), 60, "the object, once the clock is right")
        wait_for(lambda: readyz(probe) == 200, 30, "readiness to follow the latest outcome")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert sorted(x["id"] for x in readable_rows(job, tmp_path)) == list(range(5))
    said = [x for x in logs_of(stderr) if "clock is off" in x.get("event", "")]
    assert len(said) == 1  # once, however many retries


def test_once_with_a_store_that_never_answers_ends_by_once_max_elapsed(job: Job, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections and never answers a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        job.endpoint_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        write_jsonl(job.inbox / "a.jsonl", [{"id": 1}])
        job.configure(retry={"initial": "2s", "max": "60s", "max_elapsed": "24h", "once_max_elapsed": "4s"})
        started = time.monotonic()
        r = job.run_once(timeout=120)
        elapsed = time.monotonic() - started
    assert r.returncode == 1, r.stderr[-3000:]
    assert "kept in" in r.stderr
    assert elapsed < 4 + 10, elapsed  # start-up and shutdown aside, no sleep or request past the limit


def test_thousands_of_tiny_files_with_twins_overflow_and_odd_names_land_whole_everywhere(
    job: Job, tmp_path: Path
) -> None:
    """1,500 files of 3 records in a dated tree, bundled and merged into one piece per schema, with
    a file spelling `ID`, files bringing keys past max_columns, a name that is not UTF-8 and Latin-1
    text: every record lands once, every field somewhere, and every object opens in pyarrow, polars
    and DuckDB."""
    expected: dict[int, dict[str, Any]] = {}
    for f in range(1_500):
        folder = job.inbox / f"2024/08/{1 + f % 3:02d}/{f % 24:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = [
            {"id": f * 3 + r, "tags": [f"t{f}"] * r, "dev": {"os": "web", "v": r}, "note": "café ✓"}
            for r in range(3)
        ]
        if f % 500 == 7:
            rows = [{**row, "ID": -row["id"]} for row in rows]  # a case twin of `id`
        if f % 300 == 11:
            rows = [{**row, **{f"x{f}_{k}": k for k in range(20)}} for row in rows]  # past max_columns
        name = b"caf\xe9-%d.jsonl" % f if f == 900 else f"part-{f:04d}.jsonl".encode()
        with open(os.path.join(os.fsencode(folder), name), "wb") as out:
            out.write(b"".join(json.dumps(row).encode() + b"\n" for row in rows))
        expected |= {row["id"]: row for row in rows}
    job.configure(output={"prefix": job.prefix, "max_columns": 40})
    r = job.run_once(timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = readable_rows(job, tmp_path)
    assert sorted(x["id"] for x in rows) == sorted(expected)  # each once
    for x in rows:
        fields = {k: v for k, v in x.items() if k != "_extra" and v is not None}
        fields |= json.loads(x["_extra"]) if x.get("_extra") else {}
        if "ID_2" in fields:
            fields["ID"] = fields.pop("ID_2")
        assert fields == expected[x["id"]]
    assert not job.dead_letters()
    assert not [p for p in job.inbox.rglob("*") if p.is_file() and ".ingest" not in p.parts]
