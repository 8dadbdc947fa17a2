"""Cloudflare Queues in the local R2, through the official SDK unchanged: queues, bulk push, pull with
leases and a visibility timeout, ack and retry."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from cloudflare import Cloudflare, NotFoundError

from tests.conftest import LocalR2


def _queue(local_r2: LocalR2) -> tuple[Cloudflare, str]:
    cf = local_r2.cf()
    queue = cf.queues.create(account_id=local_r2.account_id, queue_name=f"q-{uuid.uuid4().hex[:8]}")
    assert queue is not None and queue.queue_id
    return cf, queue.queue_id


def test_queues_are_created_listed_fetched_and_deleted(local_r2: LocalR2) -> None:
    cf, queue_id = _queue(local_r2)
    acct = local_r2.account_id
    names = [q.queue_id for q in cf.queues.list(account_id=acct)]
    assert queue_id in names
    got = cf.queues.get(queue_id, account_id=acct)
    assert got is not None and got.queue_id == queue_id
    cf.queues.delete(queue_id, account_id=acct)
    with pytest.raises(NotFoundError):
        cf.queues.get(queue_id, account_id=acct)


def test_pulled_messages_are_leased_acked_once_and_redelivered_when_the_lease_runs_out(
    local_r2: LocalR2,
) -> None:
    cf, queue_id = _queue(local_r2)
    acct = local_r2.account_id
    messages = cf.queues.messages
    for start in range(0, 250, 100):
        batch = [{"body": {"id": i}, "content_type": "json"} for i in range(start, min(start + 100, 250))]
        messages.bulk_push(queue_id, account_id=acct, messages=batch)

    first = messages.pull(queue_id, account_id=acct, batch_size=100, visibility_timeout_ms=1000)
    assert len(first.messages) == 100 and first.message_backlog_count == 250
    assert [json.loads(m.body)["id"] for m in first.messages] == list(range(100))
    assert all(m.attempts == 1 and m.lease_id for m in first.messages)
    # Leased: the next pull gets the next ones, never the same.
    second = messages.pull(queue_id, account_id=acct, batch_size=100, visibility_timeout_ms=60_000)
    assert [json.loads(m.body)["id"] for m in second.messages] == list(range(100, 200))

    acked = messages.ack(
        queue_id, account_id=acct, acks=[{"lease_id": m.lease_id} for m in first.messages[:90]]
    )
    assert acked is not None and acked.ack_count == 90
    time.sleep(1.2)  # the first lease (1 s) ran out: its 10 unacked messages come back, attempt 2
    again = messages.pull(queue_id, account_id=acct, batch_size=100, visibility_timeout_ms=60_000)
    ids = [json.loads(m.body)["id"] for m in again.messages]
    # (Queues promise no order: the redelivered ones come among the rest)
    redelivered = {json.loads(m.body)["id"]: m.attempts for m in again.messages if m.attempts == 2}
    assert sorted(redelivered) == list(range(90, 100)) and set(ids) - set(redelivered) == set(range(200, 250))
    assert 0 not in ids, "an acknowledged message came back"
    # An expired lease no longer acks.
    late = messages.ack(queue_id, account_id=acct, acks=[{"lease_id": first.messages[95].lease_id}])
    assert late is not None and late.ack_count == 0 and late.warnings


def test_a_retry_with_a_delay_redelivers_after_it(local_r2: LocalR2) -> None:
    cf, queue_id = _queue(local_r2)
    acct = local_r2.account_id
    messages = cf.queues.messages
    messages.push(queue_id, account_id=acct, body="hello", content_type="text")
    (m,) = messages.pull(queue_id, account_id=acct, batch_size=10, visibility_timeout_ms=60_000).messages
    assert m.body == "hello"
    done = messages.ack(queue_id, account_id=acct, retries=[{"lease_id": m.lease_id, "delay_seconds": 1}])
    assert done is not None and done.retry_count == 1
    assert messages.pull(queue_id, account_id=acct, batch_size=10).messages == []
    time.sleep(1.1)
    (back,) = messages.pull(queue_id, account_id=acct, batch_size=10).messages
    assert back.body == "hello" and back.attempts == 2


def test_a_message_retried_past_max_retries_goes_to_the_dead_letter_queue(local_r2: LocalR2) -> None:
    cf, queue_id = _queue(local_r2)
    acct = local_r2.account_id
    dlq = cf.queues.create(account_id=acct, queue_name=f"dlq-{uuid.uuid4().hex[:8]}")
    assert dlq is not None and dlq.queue_id and dlq.queue_name
    cf.queues.consumers.create(
        queue_id,
        account_id=acct,
        type="http_pull",
        dead_letter_queue=dlq.queue_name,
        settings={"max_retries": 2},
    )
    messages = cf.queues.messages
    messages.push(queue_id, account_id=acct, body={"poison": True}, content_type="json")
    for attempt in (1, 2, 3):  # the first delivery and two retries
        (m,) = messages.pull(queue_id, account_id=acct, batch_size=10).messages
        assert m.attempts == attempt
        messages.ack(queue_id, account_id=acct, retries=[{"lease_id": m.lease_id, "delay_seconds": 0}])
    assert messages.pull(queue_id, account_id=acct, batch_size=10).messages == []
    (dead,) = messages.pull(dlq.queue_id, account_id=acct, batch_size=10).messages
    assert json.loads(dead.body) == {"poison": True} and dead.attempts == 1


def test_queues_need_the_queues_permissions_not_r2_storage(local_r2: LocalR2) -> None:
    from cloudflare import PermissionDeniedError

    acct = local_r2.account_id
    cf = local_r2.cf()
    groups = {g.name: g.id for g in cf.user.tokens.permission_groups.list()}

    def token(group: str) -> str:
        policy = {
            "effect": "allow",
            "resources": {f"com.cloudflare.api.account.{acct}": "*"},
            "permission_groups": [{"id": groups[group]}],
        }
        minted = cf.user.tokens.create(name=f"t-{uuid.uuid4().hex[:6]}", policies=[policy])
        return str(minted.value)

    storage = local_r2.cf(token("Workers R2 Storage Write"))
    with pytest.raises(PermissionDeniedError, match="Queues Write"):
        storage.queues.create(account_id=acct, queue_name=f"q-{uuid.uuid4().hex[:8]}")
    reader = local_r2.cf(token("Queues Read"))
    writer = local_r2.cf(token("Queues Write"))
    queue = writer.queues.create(account_id=acct, queue_name=f"q-{uuid.uuid4().hex[:8]}")
    assert queue is not None and queue.queue_id
    assert queue.queue_id in [q.queue_id for q in reader.queues.list(account_id=acct)]
    with pytest.raises(PermissionDeniedError, match="Queues Write"):
        reader.queues.messages.push(queue.queue_id, account_id=acct, body="x", content_type="text")
