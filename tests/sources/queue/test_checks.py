"""`ingest doctor`'s queue checks against the local R2's Queues: which token may pull, which queue exists."""

from __future__ import annotations

import uuid

import anyio
import pytest
from cloudflare import Cloudflare

from ingest.config import Settings, SourceConfig
from ingest.sources.queue.checks import check_queue
from tests.conftest import LocalR2


def settings(r2: LocalR2, token: str) -> Settings:
    return Settings.model_validate(
        {
            "r2": {
                "account_id": r2.account_id,
                "bucket": r2.bucket,
                "endpoint_url": r2.endpoint_url,
                "api_base_url": r2.api_base_url,
                "admin_api_token": token,
            }
        }
    )


def token_with(cf: Cloudflare, group_name: str) -> str:
    groups = {g.name: g.id for g in cf.user.tokens.permission_groups.list()}
    made = cf.user.tokens.create(
        name=f"t-{uuid.uuid4().hex[:6]}",
        policies=[
            {
                "effect": "allow",
                "resources": {"com.cloudflare.api.account.*": "*"},
                "permission_groups": [{"id": str(groups[group_name])}],
            }
        ],
    )
    assert made is not None and made.value
    return str(made.value)


def run(r2: LocalR2, token: str, **source: str) -> list[tuple[bool | None, str]]:
    cfg = SourceConfig.model_validate({"kind": "queue", **source})
    return anyio.run(check_queue, settings(r2, token), cfg)


@pytest.fixture
def queue(local_r2: LocalR2) -> str:
    cf = local_r2.cf()
    name = f"q-{uuid.uuid4().hex[:8]}"
    made = cf.queues.create(account_id=local_r2.account_id, queue_name=name)
    assert made is not None and made.queue_id
    cf.queues.consumers.create(made.queue_id, account_id=local_r2.account_id, type="http_pull")
    return name


def test_a_queues_write_token_passes_every_check(local_r2: LocalR2, queue: str) -> None:
    found = run(local_r2, local_r2.root_token, queue=queue)
    assert [ok for ok, _ in found] == [True, True], found


def test_a_queues_read_token_is_named_as_unable_to_acknowledge(local_r2: LocalR2, queue: str) -> None:
    token = token_with(local_r2.cf(), "Queues Read")
    found = run(local_r2, token, queue=queue)
    assert found[0][0] is True  # it may read the queue
    assert found[1][0] is False and "Queues Write" in found[1][1]


def test_an_r2_token_and_a_missing_queue_are_named(local_r2: LocalR2, queue: str) -> None:
    refused = run(local_r2, local_r2.api_token, queue=queue)
    assert refused[0][0] is False and "Queues Write" in refused[0][1]
    missing = run(local_r2, local_r2.root_token, queue="no-such-queue")
    assert (
        missing[0][0] is False
        and "no-such-queue" in missing[0][1]
        and "wrangler queues create" in missing[0][1]
    )


def test_a_queue_without_a_pull_consumer_is_said(local_r2: LocalR2) -> None:
    cf = local_r2.cf()
    name = f"q-{uuid.uuid4().hex[:8]}"
    cf.queues.create(account_id=local_r2.account_id, queue_name=name)
    found = run(local_r2, local_r2.root_token, queue=name)
    assert found[-1][0] is None and "wrangler queues consumer http add" in found[-1][1]


def test_a_token_minted_with_queues_passes_the_queue_checks(local_r2: LocalR2, queue: str) -> None:
    from ingest.r2.api import cloudflare_client
    from ingest.r2.tokens import create_bucket_token

    async def mint(queues: bool) -> str:
        async with cloudflare_client(local_r2.root_token, local_r2.api_base_url) as cf:
            return (await create_bucket_token(cf, local_r2.account_id, local_r2.bucket, queues=queues)).value

    with_queues, without = anyio.run(mint, True), anyio.run(mint, False)
    assert [ok for ok, _ in run(local_r2, with_queues, queue=queue)] == [True, True]
    assert run(local_r2, without, queue=queue)[0][0] is False  # an R2-only token may not use queues


def test_landing_notifications_without_a_rule_are_named_then_pass_once_set_up(
    local_r2: LocalR2, queue: str
) -> None:
    s = settings(local_r2, local_r2.root_token)
    cfg = SourceConfig.model_validate({"kind": "landing", "notifications": queue})
    before = anyio.run(check_queue, s, cfg, queue)
    assert any(ok is False and "ingest notifications setup" in detail for ok, detail in before), before
    cf = local_r2.cf()
    queue_id = next(
        q.queue_id for q in cf.queues.list(account_id=local_r2.account_id) if q.queue_name == queue
    )
    assert queue_id is not None
    cf.r2.buckets.event_notifications.update(
        queue_id,
        account_id=local_r2.account_id,
        bucket_name=local_r2.bucket,
        rules=[{"prefix": "_landing/", "actions": ["PutObject", "CompleteMultipartUpload"]}],
    )
    after = anyio.run(check_queue, s, cfg, queue)
    assert [ok for ok, _ in after] == [True, True, True], after
