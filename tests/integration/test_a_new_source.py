"""docs/architecture.md's "add a source" checklist, followed for a trivial source: a fixed list of
records. The source is written here step by step as the checklist says and run through the real
pipeline (real spool and journal, the real local R2), so the checklist stays true."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream

from ingest.config import load_settings
from ingest.daemon.health import Health
from ingest.durable.deadletters import DeadLetters
from ingest.parsing.jsonlines import parse_lines
from ingest.pipeline import Pipeline
from ingest.r2.client import R2Client
from ingest.r2.credentials import provider_from_settings
from ingest.r2.endpoint import endpoint_url
from ingest.sources.base import Item, SourceUnit, UnitHandle, UnitRead, Units
from ingest.worker import open_spool
from tests.integration.conftest import Job, readable_rows, write_toml


class FixedSource:
    """Checklist step 2: the Source protocol (name, run, stop, pending, problems)."""

    def __init__(self, records: list[bytes], dead: DeadLetters, table: str = "default") -> None:
        self.name = "fixed"
        self.records = records
        self.dead = dead
        self.table = table
        self.acked: list[str] = []
        self.unacked: list[str] = []

    async def run(self, send: MemoryObjectSendStream[Item], units: Units, once: bool) -> None:
        async with send:
            # Step 3: one unit per acknowledgeable piece of input, with a stable id (the journal's key
            # across restarts) and an ack that runs only once every row is in R2.
            unit_id = "fixed:" + str(len(self.records))
            self.unacked.append(unit_id)

            async def ack() -> bool:
                self.acked.append(unit_id)
                self.unacked.remove(unit_id)
                return True

            unit = await units.open_unit(
                SourceUnit(
                    name="fixed list", handle=UnitHandle(ack), id=unit_id, origin=self.name, table=self.table
                )
            )
            # Step 4: bytes become Arrow rows with ingest.parsing (in a thread: never on the loop);
            # malformed records are dead letters, written before the unit can be acknowledged.
            data = b"".join(r + b"\n" for r in self.records)
            tables, bad = await anyio.to_thread.run_sync(parse_lines, data, "fixed list", 1 << 20)
            if bad:
                await anyio.to_thread.run_sync(lambda: self.dead.write(bad, self.name))
            # Step 5: rows go down as the unit's chunks (rows already spooled before a crash are
            # skipped by `chunks`), then UnitRead says the unit is read to its end.
            for table, first, numbered in tables:
                await units.wait_for_room()  # backpressure: the spool is not over its high-water mark
                for chunk in unit.chunks(table, first, numbered):
                    await send.send(chunk)
            await send.send(UnitRead(unit))

    def stop(self) -> None:
        """Nothing to stop early: the list is read at once."""

    def pending(self) -> list[str]:
        return list(self.unacked)

    def problems(self) -> dict[str, str]:
        return {}


@pytest.mark.anyio
async def test_a_source_written_by_the_checklist_lands_every_record_once(job: Job, tmp_path: Path) -> None:
    records = [json.dumps({"id": i, "name": f"n{i}"}).encode() for i in range(1000)]
    records.insert(500, b"{not json")
    config = write_toml(
        tmp_path / "ingest.toml",
        {"output": {"prefix": job.prefix}, "spool": {"dir": str(tmp_path / "spool")}},
    )
    with pytest.MonkeyPatch.context() as env:
        for name, value in job.env().items():
            if name.startswith("R2_"):
                env.setenv(name, value)
        settings = load_settings(config)
        spool = open_spool(settings)
        source = FixedSource(records, spool.dead)
        r2 = settings.r2
        async with (
            await provider_from_settings(r2, settings.output.prefix) as provider,
            R2Client(endpoint_url(r2.account_id, r2.jurisdiction, r2.endpoint_url), provider) as client,
        ):
            pipeline = Pipeline(settings, client, [source], spool, Health())
            await pipeline.run(once=True)  # step 6 is wiring it in worker.build_sources
            pipeline.close()
        spool.close()
    assert source.acked == ["fixed:1001"] and source.pending() == []
    assert sorted(int(r["id"]) for r in readable_rows(job, tmp_path)) == list(range(1000))
    [letter] = job.dead_letters()
    assert letter["line"] == 501 and letter["raw"] == "{not json"
