"""`ingest ls` and `ingest head` against the local R2, through a proxy that counts the bytes downloaded:
the answers equal what is in the objects, and come from footers and first row groups, not whole objects."""

from __future__ import annotations

import json
import random
import string
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from tests.faultproxy import FaultProxy
from tests.integration.conftest import Job, write_jsonl


def _fill(job: Job) -> dict[str, int]:
    """Three objects of 30,000 rows, row groups of 5,000; returns key → size."""
    rng = random.Random(3)
    for f in range(3):
        rows = [
            {
                "id": f * 30_000 + i,
                "name": "".join(rng.choices(string.ascii_letters, k=24)),
                "v": rng.random(),
            }
            for i in range(30_000)
        ]
        write_jsonl(job.inbox / f"part-{f}.jsonl", rows)
    job.configure(batch={"max_records": 30_000}, output={"row_group_size": 5_000}, upload={"concurrency": 1})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    s3, keys = job.r2.token_s3(), job.keys()
    for key in job.index_keys():  # without the worker's index, `ls` reads every footer
        s3.delete_object(Bucket=job.r2.bucket, Key=key)
    return {k: s3.head_object(Bucket=job.r2.bucket, Key=k)["ContentLength"] for k in keys}


def test_ls_and_head_answer_from_footers_and_first_row_groups(job: Job) -> None:
    sizes = _fill(job)
    assert len(sizes) == 3
    port = urlparse(job.r2.endpoint_url).port or 0

    with FaultProxy(port) as proxy:
        r = job.cli("ls", "--json", R2_ENDPOINT_URL=proxy.url)
        assert r.returncode == 0, r.stderr
        listed = json.loads(r.stdout)
        downloaded = proxy.received
    assert [o["key"] for o in listed] == sorted(sizes)
    assert {o["key"]: o["rows"] for o in listed} == {k: job.read(k).num_rows for k in sizes}
    assert {o["key"]: o["batch"] for o in listed} == job.batch_ids()
    assert {o["key"]: o["size"] for o in listed} == sizes
    assert downloaded < sum(sizes.values()) / 4, (downloaded, sum(sizes.values()))

    human = job.cli("ls", "--date", listed[0]["key"].removeprefix(job.prefix)[:10])
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines()[-1].startswith("3 objects, 90,000 rows, ")

    key = listed[1]["key"]
    with FaultProxy(port) as proxy:
        r = job.cli("head", key, "--rows", "7", "--json", R2_ENDPOINT_URL=proxy.url)
        assert r.returncode == 0, r.stderr
        downloaded = proxy.received
    shown = json.loads(r.stdout)
    table = job.read(key)
    assert shown["rows"] == 30_000
    assert [(f["name"], f["type"]) for f in shown["schema"]] == [(f.name, str(f.type)) for f in table.schema]
    assert shown["first"] == table.slice(0, 7).to_pylist()
    assert downloaded < sizes[key] / 3, (downloaded, sizes[key])  # footer + one row group of six

    more = job.cli("head", key, "--rows", "12000", "--json")  # spans three row groups
    assert json.loads(more.stdout)["first"] == table.slice(0, 12_000).to_pylist()


def test_head_says_which_key_is_missing_or_not_parquet(job: Job) -> None:
    job.configure()
    missing = job.cli("head", f"{job.prefix}2024/01/01/ingested_0001.parquet")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: {job.prefix}2024/01/01/ingested_0001.parquet: no such object in bucket {job.r2.bucket}"
    )
    job.r2.token_s3().put_object(
        Bucket=job.r2.bucket, Key=f"{job.prefix}notes.txt", Body=b"hello, not parquet"
    )
    wrong = job.cli("head", f"{job.prefix}notes.txt")
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines()[-1] == (
        f"error: {job.prefix}notes.txt: not a Parquet object (no PAR1 footer)"
    )
    # A 0-byte object (a failed upload by another tool): listed as not Parquet, the listing goes on.
    job.r2.token_s3().put_object(Bucket=job.r2.bucket, Key=f"{job.prefix}empty.parquet", Body=b"")
    listed = json.loads(job.cli("ls", "--json").stdout)
    assert listed == [
        {
            "key": f"{job.prefix}empty.parquet",
            "size": 0,
            "modified": listed[0]["modified"],
            "rows": None,
            "batch": None,
            "problem": "not a Parquet object (empty)",
        },
        {
            "key": f"{job.prefix}notes.txt",
            "size": 18,
            "modified": listed[1]["modified"],
            "rows": None,
            "batch": None,
            "problem": "not a Parquet object (no PAR1 footer)",
        },
    ]
    empty = job.cli("head", f"{job.prefix}empty.parquet")
    assert empty.returncode == 1
    assert (
        empty.stderr.strip().splitlines()[-1]
        == f"error: {job.prefix}empty.parquet: not a Parquet object (empty)"
    )


def test_ls_table_lists_one_table(job: Job) -> None:
    template = "{prefix}{table}/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet"
    job.configure(output={"prefix": job.prefix, "key_template": template})
    for table, n in (("clicks", 3), ("orders", 2)):
        data = job.dir / f"{table}.jsonl"
        write_jsonl(data, [{"id": i} for i in range(n)])
        r = job.pipe(data, "--table", table)
        assert r.returncode == 0, r.stderr[-2000:]
    r = job.cli("ls", "--table", "orders", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [o["rows"] for o in listed] == [2]
    assert all(o["key"].startswith(f"{job.prefix}orders/") for o in listed)
    day = listed[0]["key"].split("/", 2)[2][:10]
    dated = job.cli("ls", "--table", "clicks", "--date", day, "--json")
    assert [o["rows"] for o in json.loads(dated.stdout)] == [3]

    job.configure()  # the default template: keys name no table
    refused = job.cli("ls", "--table", "orders")
    assert refused.returncode == 2 and "has no {table}" in refused.stderr


def test_ls_takes_rows_from_the_worker_index_and_reads_footers_only_for_the_rest(job: Job) -> None:
    """The worker indexes what it uploads (`{prefix}_index/`, folders mirroring the objects'); `ls`
    then reads no footer of an indexed object, and still reads one for an object the index does not
    know (put by another tool) or no longer describes (the key holds an object of another size)."""
    for f in range(12):
        write_jsonl(job.inbox / f"part-{f:02d}.jsonl", [{"id": f * 100 + i, "f": f} for i in range(100)])
    job.configure(batch={"max_records": 100})
    r = job.run_once()
    assert r.returncode == 0, r.stderr[-3000:]
    data, index = job.keys(), job.index_keys()
    assert len(data) == 12 and len(index) == 1, (data, index)
    assert index[0].startswith(f"{job.prefix}_index/" + data[0].removeprefix(job.prefix).rpartition("/")[0])

    s3 = job.r2.token_s3()
    day = data[0].removeprefix(job.prefix)[:10]
    foreign = f"{job.prefix}{day}/by-hand.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": [1, 2, 3]}), sink)
    s3.put_object(Bucket=job.r2.bucket, Key=foreign, Body=sink.getvalue().to_pybytes())
    replaced = data[5]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": list(range(7)), "note": ["rewritten"] * 7}), sink)
    s3.put_object(Bucket=job.r2.bucket, Key=replaced, Body=sink.getvalue().to_pybytes())

    port = urlparse(job.r2.endpoint_url).port or 0
    ids = job.batch_ids()
    # All of them; then one day's, whose listing (`{day}/ingested_`) leaves the foreign key out.
    for args, extra in (((), [foreign]), (("--date", day), [])):
        with FaultProxy(port) as proxy:
            r = job.cli("ls", "--json", *args, R2_ENDPOINT_URL=proxy.url)
            assert r.returncode == 0, r.stderr
        listed = {o["key"]: o for o in json.loads(r.stdout)}
        assert sorted(listed) == sorted([*data, *extra])  # the index itself is not listed
        assert {k: o["rows"] for k, o in listed.items()} == {k: job.read(k).num_rows for k in listed}
        assert listed[replaced]["rows"] == 7
        assert {k: listed[k]["batch"] for k in data if k != replaced} == {
            k: ids[k] for k in data if k != replaced
        }
        gets = [
            line.split()[1] for line in proxy.requests if line.startswith("GET ") and "list-type" not in line
        ]
        footers = sorted(
            p.split("?")[0].removeprefix(f"/{job.r2.bucket}/") for p in gets if "_index/" not in p
        )
        assert footers == sorted([replaced, *extra]), footers
        assert sum("_index/" in p for p in gets) == 1
