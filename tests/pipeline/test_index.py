"""The worker's upload index: where entries go, how `ingest ls` reads them back, and how a folder's
index objects are merged (against the local R2)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse

import anyio
import pytest
from pydantic import SecretStr

from ingest.pipeline.index import (
    COMPACT_AT,
    REFUSED,
    Entry,
    UploadIndex,
    folder_of,
    read_entries,
    read_index,
)
from ingest.r2.client import R2Client
from ingest.r2.credentials import CredentialProvider, S3Credentials
from tests.conftest import LocalR2
from tests.faultproxy import FaultProxy, Faults


def test_index_folders_mirror_the_objects_folders() -> None:
    assert folder_of("logs/2024/08/02/ingested_0001.parquet", "logs/") == "logs/_index/2024/08/02/"
    assert (
        folder_of("logs/clicks/2024/08/02/ingested_0001.parquet", "logs/") == "logs/_index/clicks/2024/08/02/"
    )
    assert folder_of("2024/08/02/ingested_0001.parquet", "") == "_index/2024/08/02/"
    assert folder_of("ingested_0001.parquet", "") == "_index/"


def test_entries_round_trip_and_damaged_lines_are_skipped() -> None:
    entry = Entry("logs/2024/08/02/ingested_0001.parquet", 1234, 100, "b-1")
    text = "\n".join(
        [entry.line(), '{"key": "x"}', "not json", "[1, 2]", '{"key":"y","size":"z","rows":1,"batch":"b"}']
    )
    assert read_entries(text) == [entry]


# -- merging a folder's index objects, against the local R2 ---------------------------------------


@asynccontextmanager
async def _client(local_r2: LocalR2, endpoint: str | None = None) -> AsyncIterator[R2Client]:
    env = local_r2.env
    creds = S3Credentials(env["R2_ACCESS_KEY_ID"], SecretStr(env["R2_SECRET_ACCESS_KEY"]))
    async with R2Client(endpoint or env["R2_ENDPOINT_URL"], CredentialProvider(creds)) as client:
        yield client


def _index_objects(local_r2: LocalR2, prefix: str) -> dict[str, str]:
    """Every index object under `prefix`, key → text."""
    s3, bucket = local_r2.token_s3(), local_r2.bucket
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}_index/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode() for k in keys}


def _entries_by_folder(objects: dict[str, str]) -> dict[str, list[str]]:
    """Folder → the keys its index objects describe, one item per line (a key twice: listed twice)."""
    out: dict[str, list[str]] = {}
    for key, text in objects.items():
        out.setdefault(key.rpartition("/")[0] + "/", []).extend(e.key for e in read_entries(text))
    return out


def _folder_count(objects: dict[str, str], folder: str) -> int:
    return sum(k.rpartition("/")[0] + "/" == folder for k in objects)


async def _run(client: R2Client, bucket: str, prefix: str, keys: list[str]) -> None:
    """What one `run --once` leaves: its entries, flushed at its end."""
    index = UploadIndex(client, bucket, prefix)
    for key in keys:
        index.add(key, 100, 10, "b")
    await index.flush()


@pytest.mark.anyio
async def test_a_folder_written_by_one_run_after_another_keeps_few_index_objects_and_every_entry(
    local_r2: LocalR2,
) -> None:
    """A cron job writes one index object per run: without merging, `ls` of a day would GET one
    per run, no fewer than the footers. The day folder keeps fewer than COMPACT_AT, every entry once;
    the folder above it (undated keys) is merged on its own and never takes the day's objects."""
    prefix = f"cron-{uuid.uuid4().hex[:8]}/"
    day = f"{prefix}2024/08/02/"
    runs = COMPACT_AT * 2 + 5
    async with _client(local_r2) as client:
        for i in range(runs):
            await _run(client, local_r2.bucket, prefix, [f"{day}ingested_{i:04d}.parquet"])
            await _run(client, local_r2.bucket, prefix, [f"{prefix}ingested_{i:04d}.parquet"])
    objects = _index_objects(local_r2, prefix)
    by_folder = _entries_by_folder(objects)
    assert sorted(by_folder) == [f"{prefix}_index/", f"{prefix}_index/2024/08/02/"]
    assert sorted(by_folder[f"{prefix}_index/2024/08/02/"]) == [
        f"{day}ingested_{i:04d}.parquet" for i in range(runs)
    ]
    assert sorted(by_folder[f"{prefix}_index/"]) == [f"{prefix}ingested_{i:04d}.parquet" for i in range(runs)]
    for folder in by_folder:
        assert _folder_count(objects, folder) < COMPACT_AT, sorted(objects)


@pytest.mark.anyio
async def test_runs_merging_one_folder_at_once_lose_no_entry(local_r2: LocalR2) -> None:
    """Twenty runs end at the same moment (a fleet of cron jobs), each merging the same folder while
    the others write and delete in it: every entry is still in some index object."""
    prefix = f"fleet-{uuid.uuid4().hex[:8]}/"
    day = f"{prefix}2024/08/02/"
    async with _client(local_r2) as client:
        for i in range(COMPACT_AT - 1):  # the folder is one object short of being merged
            await _run(client, local_r2.bucket, prefix, [f"{day}early_{i:04d}.parquet"])
        async with anyio.create_task_group() as tg:
            for w in range(20):
                keys = [f"{day}w{w:02d}_{j}.parquet" for j in range(3)]
                tg.start_soon(_run, client, local_r2.bucket, prefix, keys)
        await _run(client, local_r2.bucket, prefix, [f"{day}last.parquet"])
    objects = _index_objects(local_r2, prefix)
    found = _entries_by_folder(objects)[f"{prefix}_index/2024/08/02/"]
    expected = {f"{day}early_{i:04d}.parquet" for i in range(COMPACT_AT - 1)}
    expected |= {f"{day}w{w:02d}_{j}.parquet" for w in range(20) for j in range(3)}
    assert set(found) == expected | {f"{day}last.parquet"}
    assert _folder_count(objects, f"{prefix}_index/2024/08/02/") < 20 + COMPACT_AT


@pytest.mark.anyio
async def test_a_merge_keeps_a_newer_versions_lines_as_written_and_drops_damage(local_r2: LocalR2) -> None:
    prefix = f"compat-{uuid.uuid4().hex[:8]}/"
    day = f"{prefix}2024/08/02/"
    folder = f"{prefix}_index/2024/08/02/"
    newer = json.dumps({"key": f"{day}newer.parquet", "size": 5, "rows": 1, "batch": "b", "columns": 3})
    text = "\n".join([newer, "not json", '["a list"]', '{"size": 1}']) + "\n"
    local_r2.token_s3().put_object(
        Bucket=local_r2.bucket, Key=f"{folder}0-by-a-newer-version.jsonl", Body=text
    )
    async with _client(local_r2) as client:
        for i in range(COMPACT_AT - 1):
            await _run(client, local_r2.bucket, prefix, [f"{day}ingested_{i:04d}.parquet"])
    objects = _index_objects(local_r2, prefix)
    assert len(objects) == 1, sorted(objects)  # merged: the hand-written object is gone too
    [merged] = objects.values()
    assert newer in merged.splitlines()  # byte for byte
    assert len(merged.splitlines()) == COMPACT_AT  # 15 runs' entries and the newer line, nothing else


@pytest.mark.anyio
async def test_a_merge_whose_deletes_fail_leaves_every_entry_and_is_finished_by_the_next_run(
    local_r2: LocalR2,
) -> None:
    """R2 answers 503 to every DELETE: the merged object is written, the merged ones stay (entries
    twice, which `ls` reads as once), the run ends without an error, and a later run merges again."""
    prefix = f"nodelete-{uuid.uuid4().hex[:8]}/"
    day = f"{prefix}2024/08/02/"
    folder = f"{prefix}_index/2024/08/02/"
    port = urlparse(local_r2.endpoint_url).port or 0
    with FaultProxy(port, Faults(unavailable=1.0, methods=("DELETE",))) as proxy:
        async with _client(local_r2, proxy.url) as client:
            for i in range(COMPACT_AT):
                await _run(client, local_r2.bucket, prefix, [f"{day}ingested_{i:04d}.parquet"])
    assert proxy.seen["unavailable"] >= 1
    objects = _index_objects(local_r2, prefix)
    assert _folder_count(objects, folder) == COMPACT_AT + 1  # the 16 and the merged one
    keys = _entries_by_folder(objects)[folder]
    assert sorted(set(keys)) == [f"{day}ingested_{i:04d}.parquet" for i in range(COMPACT_AT)]
    async with _client(local_r2) as client:
        await _run(client, local_r2.bucket, prefix, [f"{day}later.parquet"])
    objects = _index_objects(local_r2, prefix)
    assert len(objects) == 1
    [merged] = objects.values()
    keys = [e.key for e in read_entries(merged)]
    assert sorted(keys) == sorted(
        [f"{day}ingested_{i:04d}.parquet" for i in range(COMPACT_AT)] + [f"{day}later.parquet"]
    )


@pytest.mark.anyio
async def test_a_store_that_refuses_the_deletes_gets_no_merged_copy_per_run(local_r2: LocalR2) -> None:
    """Every DELETE is refused (403 AccessDenied, as under an R2 bucket lock). Without a note of the
    refusal, each later run would merge the same objects again into one more copy. The first merge
    writes the note in the folder; the next runs, each a process of its own, see it and add only
    their own index object; no entry is lost, and `ls` does not read the note as an index object."""
    prefix = f"locked-{uuid.uuid4().hex[:8]}/"
    day = f"{prefix}2024/08/02/"
    folder = f"{prefix}_index/2024/08/02/"
    port = urlparse(local_r2.endpoint_url).port or 0
    runs = COMPACT_AT + 10
    with FaultProxy(port, Faults(forbidden=1.0, methods=("DELETE",))) as proxy:
        async with _client(local_r2, proxy.url) as client:
            for i in range(runs):
                await _run(client, local_r2.bucket, prefix, [f"{day}ingested_{i:04d}.parquet"])
            assert proxy.seen["forbidden"] == COMPACT_AT  # one merge's deletes, refused, and no more
            entries = await read_index(client, local_r2.bucket, f"{prefix}_index/")
    objects = _index_objects(local_r2, prefix)
    notes = [k for k in objects if k.rpartition("/")[2].startswith(REFUSED)]
    assert len(notes) == 1 and notes[0].startswith(folder)
    assert _folder_count(objects, folder) == runs + 2  # every run's object, one merged, the note
    expected = [f"{day}ingested_{i:04d}.parquet" for i in range(runs)]
    assert sorted(set(_entries_by_folder(objects)[folder])) == expected
    assert sorted(entries) == expected
    gets = [r for r in proxy.requests if r.startswith("GET ") and "list-type" not in r]
    assert not any(REFUSED in r for r in gets)
