"""R2 event notifications in the local R2, through the official SDK unchanged: rules per bucket and queue,
and messages for writes that really reached SeaweedFS (its change feed), including presigned PUTs."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from cloudflare import BadRequestError, Cloudflare

from tests.conftest import LocalR2


def _setup(local_r2: LocalR2, prefix: str, **rule: Any) -> tuple[Cloudflare, str]:
    cf = local_r2.cf()
    queue = cf.queues.create(account_id=local_r2.account_id, queue_name=f"n-{uuid.uuid4().hex[:8]}")
    assert queue is not None and queue.queue_id
    actions = rule.pop("actions", ["PutObject", "CompleteMultipartUpload", "CopyObject"])
    cf.r2.buckets.event_notifications.update(
        queue.queue_id,
        account_id=local_r2.account_id,
        bucket_name=local_r2.bucket,
        rules=[{"prefix": prefix, "actions": actions, **rule}],
    )
    return cf, queue.queue_id


def _events(
    cf: Cloudflare, local_r2: LocalR2, queue_id: str, want: int, timeout: float = 10
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        page = cf.queues.messages.pull(queue_id, account_id=local_r2.account_id, batch_size=100)
        assert page is not None
        got += [json.loads(str(m.body)) for m in page.messages or []]
        if len(got) < want:
            time.sleep(0.1)
    return got


def test_writes_under_the_prefix_are_notified_with_their_action_size_and_etag(local_r2: LocalR2) -> None:
    prefix = f"n{uuid.uuid4().hex[:6]}/_landing/"
    cf, queue_id = _setup(local_r2, prefix)
    s3 = local_r2.token_s3()
    put = s3.put_object(Bucket=local_r2.bucket, Key=f"{prefix}a.jsonl", Body=b'{"a":1}\n')
    s3.put_object(
        Bucket=local_r2.bucket, Key=f"n-other/{uuid.uuid4().hex}.jsonl", Body=b"{}\n"
    )  # not matched
    upload = s3.create_multipart_upload(Bucket=local_r2.bucket, Key=f"{prefix}big.jsonl")
    part = s3.upload_part(
        Bucket=local_r2.bucket,
        Key=f"{prefix}big.jsonl",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"x" * 100,
    )
    s3.complete_multipart_upload(
        Bucket=local_r2.bucket,
        Key=f"{prefix}big.jsonl",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    s3.delete_object(Bucket=local_r2.bucket, Key=f"{prefix}a.jsonl")  # DeleteObject: not in the rule
    events = _events(cf, local_r2, queue_id, 2)
    time.sleep(0.5)
    events += _events(cf, local_r2, queue_id, 0, timeout=0.5)
    assert [e["action"] for e in events] == ["PutObject", "CompleteMultipartUpload"]
    first = events[0]
    assert first["account"] == local_r2.account_id and first["bucket"] == local_r2.bucket
    assert first["object"] == {"key": f"{prefix}a.jsonl", "size": 8, "eTag": put["ETag"].strip('"')}
    assert first["eventTime"].endswith("Z")
    head = s3.head_object(Bucket=local_r2.bucket, Key=f"{prefix}big.jsonl")
    assert events[1]["object"]["eTag"] == head["ETag"].strip('"') and events[1]["object"]["size"] == 100


def test_a_presigned_put_straight_to_the_store_is_notified(local_r2: LocalR2) -> None:
    prefix = f"n{uuid.uuid4().hex[:6]}/_landing/"
    cf, queue_id = _setup(local_r2, prefix, suffix=".jsonl")
    s3 = local_r2.token_s3()
    url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": local_r2.bucket, "Key": f"{prefix}browser.jsonl"}, ExpiresIn=300
    )
    httpx.put(url, content=b'{"b":1}\n').raise_for_status()
    s3.put_object(Bucket=local_r2.bucket, Key=f"{prefix}skipped.csv", Body=b"a\n1\n")  # suffix does not match
    events = _events(cf, local_r2, queue_id, 1)
    time.sleep(0.5)
    events += _events(cf, local_r2, queue_id, 0, timeout=0.5)
    assert [e["object"]["key"] for e in events] == [f"{prefix}browser.jsonl"]


def test_rules_are_listed_fetched_deleted_and_checked(local_r2: LocalR2) -> None:
    prefix = f"n{uuid.uuid4().hex[:6]}/"
    cf, queue_id = _setup(local_r2, prefix, description="landing")
    acct, bucket = local_r2.account_id, local_r2.bucket
    got = cf.r2.buckets.event_notifications.get(queue_id, account_id=acct, bucket_name=bucket)
    assert got.rules is not None and got.rules[0].prefix == prefix and got.rules[0].description == "landing"
    listed = cf.r2.buckets.event_notifications.list(bucket, account_id=acct)
    assert queue_id in [q.queue_id for q in listed.queues or []]
    with pytest.raises(BadRequestError):
        cf.r2.buckets.event_notifications.update(
            queue_id,
            account_id=acct,
            bucket_name=bucket,
            rules=[{"actions": ["Nope"]}],  # type: ignore[list-item]
        )
    cf.r2.buckets.event_notifications.delete(queue_id, account_id=acct, bucket_name=bucket)
    got = cf.r2.buckets.event_notifications.get(queue_id, account_id=acct, bucket_name=bucket)
    assert not got.rules
