from __future__ import annotations

import pytest

from ingest.commands.starter import duration, size
from ingest.config.quantities import parse_duration, parse_size
from ingest.messages import count


def test_counts_agree_with_their_number() -> None:
    assert [count(n, "object") for n in (0, 1, 2, 1000)] == [
        "0 objects",
        "1 object",
        "2 objects",
        "1,000 objects",
    ]


@pytest.mark.parametrize("seconds", [0.05, 0.5, 1.0, 25.0, 60.0, 90.0, 3600.0, 86400.0])
def test_durations_written_by_init_read_back_as_the_same_value(seconds: float) -> None:
    assert parse_duration(duration(seconds)) == seconds


@pytest.mark.parametrize("n", [1, 1000, 2**20, 8 * 2**20, 128 * 2**20, 10 * 2**30])
def test_sizes_written_by_init_read_back_as_the_same_value(n: int) -> None:
    assert parse_size(size(n)) == n
