"""The queue source's bookkeeping: what it journals of a pull, which messages a restart may acknowledge,
when leases count as run out, and the visibility-timeout check."""

from __future__ import annotations

import time

import pytest

from ingest.config import ConfigError, SourceConfig
from ingest.sources.queue.source import MessagesHandle, Pull, _kept_messages, check_visibility


def test_a_pull_survives_the_journal_with_its_rows_leases_and_attempts() -> None:
    rows = [(0, 0), (1, 0), (1, 1), (1, 3), (2, 0)]  # message 1 lost its line 2 (a dead letter)
    pull = Pull(["a", "b", "c"], ["la", "lb", "lc"], [1.0, 2.0, 3.0], [1, 2, 1], rows)
    again = Pull.from_fingerprint(pull.fingerprint())
    assert (again.ids, again.leases, again.expires, again.attempts, again.rows) == (
        pull.ids,
        pull.leases,
        pull.expires,
        pull.attempts,
        rows,
    )


def test_after_a_crash_only_messages_whose_rows_are_all_kept_are_acknowledged() -> None:
    pull = Pull(
        ["a", "b", "c", "p"], ["1", "2", "3", "4"], [0.0] * 4, [1] * 4, [(0, 0), (1, 0), (1, 1), (2, 0)]
    )
    # rows 0..2 were in journaled batches; row 3 (message c) was in the batch lost with the process
    assert _kept_messages(pull, [(0, 3)]) == {0, 1, 3}  # p had no rows (a dead letter, kept first)
    assert _kept_messages(pull, [(0, 1), (2, 4)]) == {0, 2, 3}  # b is half kept: handed back


def test_leases_count_as_run_out_a_margin_before_they_do() -> None:
    now = time.time()
    handle = MessagesHandle(lambda: None, pull=Pull(["a"], ["l"], [now + 5], [1], []), margin=2.0)  # type: ignore[arg-type]
    assert not handle.expired()
    handle.pull = Pull(["a"], ["l"], [now + 1], [1], [])
    assert handle.expired()  # within the margin: a PUT started now might end after another worker looked


def test_a_visibility_timeout_shorter_than_a_batch_and_its_upload_is_a_config_error() -> None:
    cfg = SourceConfig.model_validate({"kind": "queue", "queue": "q", "visibility_timeout": "60s"})
    with pytest.raises(
        ConfigError, match=r"sources\.0\.visibility_timeout: 60s does not outlast batch\.max_age"
    ):
        check_visibility(cfg, 0, 60.0, 0.0)
    check_visibility(cfg, 0, 30.0, 0.0)
    with pytest.raises(ConfigError, match=r"iceberg\.commit_interval"):
        check_visibility(cfg, 0, 30.0, 20.0)
