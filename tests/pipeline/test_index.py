"""The worker's upload index: where entries go and how `ingest ls` reads them back."""

from __future__ import annotations

from ingest.pipeline.index import Entry, folder_of, read_entries


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
