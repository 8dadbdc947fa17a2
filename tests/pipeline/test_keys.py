from __future__ import annotations

from datetime import date

import anyio
import pytest

from ingest.config import ConfigError
from ingest.pipeline.keys import KeyAllocator, KeyTemplate

DAY = date(2024, 8, 2)


def test_default_template_renders_and_parses() -> None:
    t = KeyTemplate("{prefix}{date:%Y/%m/%d}/ingested_{seq:04d}.parquet", "events/")
    assert t.render(DAY, 1) == "events/2024/08/02/ingested_0001.parquet"
    assert t.render(DAY, 12345) == "events/2024/08/02/ingested_12345.parquet"
    assert t.list_prefix(DAY) == "events/2024/08/02/ingested_"
    assert t.parse_seq(DAY, "events/2024/08/02/ingested_0042.parquet") == 42
    assert t.parse_seq(DAY, "events/2024/08/02/ingested_0042.parquet.tmp") is None
    assert t.parse_seq(DAY, "events/2024/08/02/other_0042.parquet") is None


def test_years_before_1000_have_four_digits_so_keys_sort_and_list_by_their_text() -> None:
    t = KeyTemplate("{prefix}{date:%Y/%m/%d}/ingested_{seq:04d}.parquet", "e/")
    assert t.render(date(1, 1, 1), 3) == "e/0001/01/01/ingested_0003.parquet"
    assert t.render(date(999, 12, 31), 1) == "e/0999/12/31/ingested_0001.parquet"
    assert t.parse_seq(date(1, 1, 1), "e/0001/01/01/ingested_0003.parquet") == 3
    assert KeyTemplate("{date:%Y%%Y-%d}/{seq}").render(date(7, 1, 2), 1) == "0007%Y-02/1"


def test_unknown_placeholder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"output.key_template: 'day' is not a placeholder"):
        KeyTemplate("{day}/{seq}.parquet")


@pytest.mark.anyio
async def test_allocator_lists_once_per_date_then_counts() -> None:
    listed: list[str] = []
    t = KeyTemplate("{prefix}{date:%Y/%m/%d}/ingested_{seq:04d}.parquet")

    async def list_keys(prefix: str, start_after: str) -> list[str]:
        listed.append(prefix)
        assert start_after == ""
        await anyio.sleep(0.01)
        return [f"{prefix}0001.parquet", f"{prefix}0007.parquet", f"{prefix}junk"]

    alloc = KeyAllocator(t, list_keys)
    got: list[int] = []

    async def take() -> None:
        got.append(await alloc.candidate(DAY))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(take)
    assert sorted(got) == [8, 9, 10, 11, 12]
    assert await alloc.candidate(date(2024, 8, 3)) == 8
    assert listed == ["2024/08/02/ingested_", "2024/08/03/ingested_"]


@pytest.mark.anyio
async def test_a_conflict_looks_past_every_number_taken_meanwhile() -> None:
    t = KeyTemplate("{date:%Y/%m/%d}/ingested_{seq:04d}.parquet")
    bucket = {t.render(DAY, n) for n in (1, 2)}
    calls: list[str] = []

    async def list_keys(prefix: str, start_after: str) -> list[str]:
        calls.append(start_after)
        return sorted(k for k in bucket if k.startswith(prefix) and k > start_after)

    alloc = KeyAllocator(t, list_keys)
    assert await alloc.candidate(DAY) == 3
    bucket |= {t.render(DAY, n) for n in range(3, 40)}  # another worker wrote 3..39 meanwhile
    assert await alloc.candidate(DAY) == 4
    await alloc.taken(DAY, 4)
    await alloc.taken(DAY, 3)  # an older conflict: no second LIST
    assert await alloc.candidate(DAY) == 40
    assert calls == ["", "2024/08/02/ingested_0004.parquet"]


@pytest.mark.anyio
@pytest.mark.parametrize("taken", [0, 1, 2, 5, 37, 64, 1000])
async def test_when_list_is_denied_free_numbers_are_found_with_few_heads(taken: int) -> None:
    from ingest.r2.client import R2AccessDenied

    t = KeyTemplate("{prefix}{date:%Y/%m/%d}/ingested_{seq:04d}.parquet", "s9/")
    bucket = {t.render(DAY, n) for n in range(1, taken + 1)}
    heads: list[str] = []

    async def list_keys(prefix: str, start_after: str) -> list[str]:
        raise R2AccessDenied("temporary credentials are scoped to bucket b, prefixes s9/")

    async def exists(key: str) -> bool:
        heads.append(key)
        return key in bucket

    alloc = KeyAllocator(t, list_keys, exists)
    assert await alloc.candidate(DAY) == taken + 1
    assert len(heads) <= 2 * (taken + 1).bit_length() + 1  # logarithmic, not one per object
    bucket |= {t.render(DAY, n) for n in range(taken + 1, taken + 4)}  # another writer took 3 more
    await alloc.taken(DAY, taken + 1)
    assert await alloc.candidate(DAY) == taken + 4


def test_table_placeholder_gives_each_table_its_own_keys_and_sequence() -> None:
    t = KeyTemplate("{prefix}{table}/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet", "p/")
    assert t.per_table
    assert t.render(DAY, 1, "clicks") == "p/clicks/2024/08/02/ingested_0001.parquet"
    assert t.list_prefix(DAY, "orders") == "p/orders/2024/08/02/ingested_"
    assert t.parse_seq(DAY, "p/clicks/2024/08/02/ingested_0007.parquet", "clicks") == 7
    assert t.parse_seq(DAY, "p/clicks/2024/08/02/ingested_0007.parquet", "orders") is None
    assert not KeyTemplate("{prefix}{date:%Y/%m/%d}/ingested_{seq:04d}.parquet").per_table


@pytest.mark.anyio
async def test_allocator_numbers_tables_independently() -> None:
    t = KeyTemplate("{table}/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet")
    bucket = {t.render(DAY, n, "clicks") for n in (1, 2, 3)}

    async def list_keys(prefix: str, start_after: str) -> list[str]:
        return sorted(k for k in bucket if k.startswith(prefix) and k > start_after)

    alloc = KeyAllocator(t, list_keys)
    assert await alloc.candidate(DAY, "clicks") == 4
    assert await alloc.candidate(DAY, "orders") == 1
    assert await alloc.candidate(DAY, "orders") == 2
    assert alloc.key(DAY, 2, "orders") == "orders/2024/08/02/ingested_0002.parquet"
