from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from ingest.config import ConfigError, SourceConfig
from ingest.durable.deadletters import DeadLetters
from ingest.sources.base import Chunk, FreshUnits, Item, UnitRead
from ingest.sources.directory.source import DirectorySource


def _source(root: Path, worker: str = "w", **cfg: object) -> DirectorySource:
    config = SourceConfig(kind="directory", path=str(root), settle_seconds=0.2, **cfg)  # type: ignore[arg-type]
    return DirectorySource(config, worker, DeadLetters(root.parent / "dead"))


async def _collect(*sources: DirectorySource) -> list[Chunk | UnitRead]:
    send, recv = anyio.create_memory_object_stream[Item](100)
    items: list[Chunk | UnitRead] = []
    async with anyio.create_task_group() as tg:
        async with send:
            for s in sources:
                tg.start_soon(s.run, send.clone(), FreshUnits(), True)
        async with recv:
            async for item in recv:
                items += item if isinstance(item, list) else [item]  # small files come in bundles
    return items


def _write(path: Path, ids: range) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))


@pytest.mark.anyio
async def test_two_sources_on_one_directory_claim_each_file_once(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for i in range(40):
        _write(root / f"sub{i % 3}" / f"f{i}.jsonl", range(i * 10, i * 10 + 10))
    a, b = _source(root), _source(root)
    a.lock_claim_dir()
    b.lock_claim_dir()  # same host name: the second live worker gets its own claim directory
    assert a.claim_dir != b.claim_dir
    items = await _collect(a, b)
    ids = [i for it in items if isinstance(it, Chunk) for i in it.table.column("id").to_pylist()]
    assert sorted(ids) == list(range(400))
    done = [it.unit.name for it in items if isinstance(it, UnitRead)]
    assert sorted(done) == sorted(f"sub{i % 3}/f{i}.jsonl" for i in range(40))
    assert len(a.pending()) + len(b.pending()) == 40  # claimed, not yet acknowledged


@pytest.mark.anyio
async def test_ack_moves_to_done_dir_and_leftover_claims_are_read_again(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _write(root / "x" / "a.jsonl", range(3))
    _write(root / "b.jsonl", range(3, 5))
    (root / "notes.txt").write_text("not data")
    src = _source(root, done_dir=str(tmp_path / "done"))
    src.lock_claim_dir()
    first = await _collect(src)
    units = {it.unit.name: it.unit for it in first if isinstance(it, UnitRead)}
    assert set(units) == {"x/a.jsonl", "b.jsonl"}
    assert (root / "notes.txt").exists()  # unknown format: left alone, with a warning

    handle = units["x/a.jsonl"].handle
    assert handle is not None
    await handle.ack()
    assert (tmp_path / "done" / "x" / "a.jsonl").read_text().count("\n") == 3

    # b.jsonl was claimed but never acknowledged: the next run of this worker reads it again.
    again = await _collect(src)
    assert [it.unit.name for it in again if isinstance(it, UnitRead)] == ["b.jsonl"]


def test_an_explicit_worker_id_in_use_is_a_config_error(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    first = _source(root, "worker-1")
    first.explicit_id = True
    first.lock_claim_dir()
    second = _source(root, "worker-1")
    second.explicit_id = True
    with pytest.raises(ConfigError, match=r"worker\.id: 'worker-1' is in use by another running worker"):
        second.lock_claim_dir()


@pytest.mark.anyio
async def test_many_small_files_come_in_bundles_a_big_one_alone_every_row_once(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for i in range(300):  # more than one bundle (BUNDLE_FILES)
        _write(root / f"f{i:03d}.jsonl", range(i * 3, i * 3 + 3))
    _write(root / "big.jsonl", range(10_000, 40_000))  # over SMALL_FILE: read on its own, streamed
    src = _source(root)
    src.lock_claim_dir()
    send, recv = anyio.create_memory_object_stream[Item](100)
    raw: list[Item] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(src.run, send, FreshUnits(), True)
        async with recv:
            raw = [item async for item in recv]
    bundles = [item for item in raw if isinstance(item, list)]
    flat = [it for item in raw for it in (item if isinstance(item, list) else [item])]
    ids = [i for it in flat if isinstance(it, Chunk) for i in it.table.column("id").to_pylist()]
    assert sorted(ids) == [*range(900), *range(10_000, 40_000)]
    assert len(bundles) >= 2 and sum(len(b) for b in bundles) == 600  # a chunk and an end per file
    assert not any(isinstance(it, Chunk) and it.unit.name == "big.jsonl" for b in bundles for it in b)
    units = [it.unit for it in flat if isinstance(it, UnitRead)]
    assert len(units) == 301

    # Acknowledged many at a time; a file that changed since it was read is not (its rest is read).
    changed = next(u for u in units if u.name == "f007.jsonl")
    assert changed.path is not None
    async with await anyio.open_file(changed.path, "a") as fh:
        await fh.write(json.dumps({"id": 5000}) + "\n")
    assert changed.handle is not None and changed.handle.ack_many is not None
    results = await changed.handle.ack_many(units)
    assert [u.name for u, r in zip(units, results, strict=True) if r is not True] == ["f007.jsonl"]
    assert results[units.index(changed)] is False
    assert [Path(p).name.split("--", 1)[1] for p in src.pending()] == ["f007.jsonl"]
