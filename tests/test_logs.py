"""The redaction processor masks registered secrets, secret-named fields and signed headers."""

from __future__ import annotations

import io
import json

from pydantic import SecretStr

from ingest import logs


def capture() -> io.StringIO:
    buf = io.StringIO()
    logs.configure("json", "debug", stream=buf)
    return buf


def test_registered_secret_is_masked_everywhere() -> None:
    buf = capture()
    logs.register_secret("sup3r-s3cret-value")
    log = logs.get_logger("t")
    log.info("uploading with sup3r-s3cret-value inside", detail={"nested": "x sup3r-s3cret-value y"})
    try:
        raise RuntimeError("failed: sup3r-s3cret-value")
    except RuntimeError:
        log.exception("boom")
    out = buf.getvalue()
    assert "sup3r-s3cret-value" not in out
    assert out.count(logs.REDACTED) >= 3


def test_secret_fields_headers_and_secretstr_are_masked() -> None:
    buf = capture()
    logs.get_logger("t").info(
        "request",
        secret_access_key="abc123def456",
        access_key_id="AKIDVISIBLE",
        creds=SecretStr("hidden-value"),
        headers="Authorization: Bearer tok_abcdefgh, X-Amz-Security-Token: sess_zzzzzz",
        url="https://x/y?X-Amz-Signature=deadbeefdeadbeef&X-Amz-Credential=AKID%2F2024",
    )
    event = json.loads(buf.getvalue().splitlines()[-1])
    assert event["secret_access_key"] == logs.REDACTED
    assert event["access_key_id"] == "AKIDVISIBLE"
    assert event["creds"] == logs.REDACTED
    for leaked in ("tok_abcdefgh", "sess_zzzzzz", "deadbeefdeadbeef", "AKID%2F2024"):
        assert leaked not in buf.getvalue()


def test_a_library_debug_line_shows_a_body_by_its_size() -> None:
    """botocore logs each request's parameters at debug, body included: a whole Parquet object
    (and the records in it) in one line. The line keeps everything but a long body."""
    import logging

    buf = capture()
    endpoint = logging.getLogger("botocore.endpoint")
    body = b"\x00records" * 500_000
    params = {
        "url_path": "/bucket/key",
        "body": body,
        "headers": {"If-None-Match": "*"},
        "context": {"s3_redirect": {"params": {"Body": body}}},  # where botocore keeps it a second time
    }
    endpoint.debug("Making request for %s with params: %s", "PutObject", params)
    endpoint.debug("Response body:\n%r", b"<Error>short</Error>")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    request, response = lines[-2]["event"], lines[-1]["event"]
    assert request.count("<4000000 bytes>") == 2 and "records" not in request
    assert "/bucket/key" in request and "If-None-Match" in request
    assert "<Error>short</Error>" in response  # a short body is shown as it is
    assert params["body"] == b"\x00records" * 500_000  # the request's own parameters are untouched


def test_a_library_line_with_a_named_tuple_or_odd_arguments_still_logs() -> None:
    import logging
    from collections import namedtuple

    buf = capture()
    point = namedtuple("point", "x y")
    logging.getLogger("botocore.x").debug("at %s in %s", point(1, 2), (point(3, 4), b"z" * 2000))
    event = json.loads(buf.getvalue().splitlines()[-1])["event"]
    assert event == "at point(x=1, y=2) in (point(x=3, y=4), '<2000 bytes>')"
