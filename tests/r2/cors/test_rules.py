"""The CORS model: validation like R2's, both forms, and what a browser would decide."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from ingest.r2.cors.rules import CorsError, CorsRule, dumps, evaluate, holds, parse_policy, to_s3, to_wrangler

OK = None


def s3(**fields: Any) -> list[dict[str, Any]]:
    rule: dict[str, Any] = {"AllowedOrigins": ["https://app.example.com"], "AllowedMethods": ["GET"]}
    return [rule | fields]


def wr(**fields: Any) -> dict[str, Any]:
    allowed = {"origins": ["https://app.example.com"], "methods": ["GET"]}
    allowed |= {k: v for k, v in fields.items() if k in ("origins", "methods", "headers")}
    rule: dict[str, Any] = {"allowed": allowed} | {
        k: v for k, v in fields.items() if k not in ("origins", "methods", "headers")
    }
    return {"rules": [rule]}


# (policy, None when valid, else fragments the single error line must contain)
CASES: list[tuple[Any, tuple[str, ...] | None]] = [
    # valid
    (s3(), OK),
    (s3(AllowedOrigins=["*"]), OK),
    (s3(AllowedOrigins=["http://127.0.0.1:8080"]), OK),
    (s3(AllowedOrigins=["https://*.example.com"]), OK),
    (s3(AllowedMethods=["GET", "PUT", "POST", "DELETE", "HEAD"]), OK),
    (s3(AllowedHeaders=["*"]), OK),
    (s3(AllowedHeaders=["content-type", "x-amz-*"]), OK),
    (s3(MaxAgeSeconds=0), OK),
    (s3(MaxAgeSeconds=86400), OK),
    (s3(ExposeHeaders=["ETag"], ID="uploads"), OK),
    ({"CORSRules": s3()}, OK),
    (wr(headers=["content-type"], exposeHeaders=["ETag"], maxAgeSeconds=3600, id="x"), OK),
    # invalid, S3 form
    (s3(AllowedOrigins=["https://a.com/"]), ("rule 0", "AllowedOrigins[0]", "has a path", "'https://a.com'")),
    (s3(AllowedOrigins=["https://a.com/x"]), ("AllowedOrigins[0]", "has a path", "'https://a.com'")),
    (s3(AllowedOrigins=["a.com"]), ("AllowedOrigins[0]", "scheme://host", "'https://a.com'")),
    (s3(AllowedOrigins=["https://*.*.a.com"]), ("AllowedOrigins[0]", "more than one '*'")),
    (s3(AllowedOrigins=["https://a.com:*"]), ("AllowedOrigins[0]", "'*' in the port")),
    (s3(AllowedOrigins=["https://a.com:99999"]), ("invalid port",)),
    (s3(AllowedOrigins=[]), ("AllowedOrigins", "must not be empty")),
    (s3(AllowedOrigins="https://a.com"), ("AllowedOrigins", "list of strings")),
    (
        s3(AllowedMethods=["PATCH"]),
        ("AllowedMethods[0]", "'PATCH' is not allowed", "GET, PUT, POST, DELETE, HEAD"),
    ),
    (s3(AllowedMethods=["put"]), ("AllowedMethods[0]", 'use "PUT"')),
    (s3(AllowedMethods=[]), ("AllowedMethods", "must not be empty")),
    (s3(MaxAgeSeconds=86401), ("MaxAgeSeconds", "out of range", "0 to 86400")),
    (s3(MaxAgeSeconds=-1), ("MaxAgeSeconds", "out of range")),
    (s3(MaxAgeSeconds="60"), ("MaxAgeSeconds", "whole number")),
    (s3(AllowedHeaders=[]), ("AllowedHeaders", "must not be empty")),
    (s3(AllowedOrigin=["https://a.com"]), ("AllowedOrigin", "unknown field", "did you mean AllowedOrigins")),
    ([{"AllowedMethods": ["GET"]}], ("rule 0", "AllowedOrigins", "required")),
    ([*s3(), *s3(AllowedMethods=["GETS"])], ("rule 1", "AllowedMethods[0]")),
    ([], ("no rules", "ingest cors delete")),
    ({"cors": []}, ("S3 form", "wrangler form")),
    # invalid, wrangler form: errors use the wrangler spelling
    (wr(origins=["https://a.com/"]), ("rules[0]", "allowed.origins[0]", "has a path")),
    (wr(methods=["OPTIONS"]), ("rules[0]", "allowed.methods[0]", "'OPTIONS' is not allowed")),
    (wr(maxAgeSeconds=100000), ("rules[0]", "maxAgeSeconds", "out of range")),
    (wr(headers=[]), ("allowed.headers", "must not be empty")),
    ({"rules": [{"origins": ["https://a.com"]}]}, ("rules[0]", "allowed: required")),
]


@pytest.mark.parametrize(("policy", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_validation_table(policy: Any, expected: tuple[str, ...] | None) -> None:
    if expected is None:
        rules, _ = parse_policy(json.dumps(policy))
        assert rules
        return
    with pytest.raises(CorsError) as info:
        parse_policy(json.dumps(policy))
    first = info.value.problems[0]
    assert "\n" not in first
    for fragment in expected:
        assert fragment in first, first


def test_every_problem_is_reported_once_per_line() -> None:
    with pytest.raises(CorsError) as info:
        parse_policy(s3(AllowedOrigins=["https://a.com/", "b.com"], AllowedMethods=["PATCH"]))
    assert len(info.value.problems) == 3


def test_not_json_is_a_clear_error() -> None:
    with pytest.raises(CorsError, match="not valid JSON"):
        parse_policy("[{")


FULL = [
    CorsRule(["http://127.0.0.1:8000"], ["PUT", "GET"], ["content-type"], ["ETag"], 3600, "uploads"),
    CorsRule(["https://*.example.com"], ["GET", "HEAD"]),
]


def test_round_trip_s3_wrangler() -> None:
    as_s3 = to_s3(FULL)
    as_wr = to_wrangler(FULL)
    assert parse_policy(as_s3) == (FULL, "s3")
    assert parse_policy(as_wr) == (FULL, "wrangler")
    assert parse_policy(as_s3["CORSRules"])[0] == FULL
    # one form to the other and back, through text
    assert parse_policy(dumps(parse_policy(dumps(FULL, "wrangler"))[0], "s3"))[0] == FULL
    assert as_wr["rules"][0] == {
        "allowed": {
            "origins": ["http://127.0.0.1:8000"],
            "methods": ["PUT", "GET"],
            "headers": ["content-type"],
        },
        "exposeHeaders": ["ETag"],
        "maxAgeSeconds": 3600,
        "id": "uploads",
    }
    assert as_s3["CORSRules"][1] == {
        "AllowedOrigins": ["https://*.example.com"],
        "AllowedMethods": ["GET", "HEAD"],
    }


def test_evaluate_allows_with_the_first_matching_rule() -> None:
    v = evaluate(FULL, "http://127.0.0.1:8000", "PUT", ["Content-Type"])
    assert v.allowed and v.rule == 0 and v.preflight and v.exposed == ["ETag"]
    v = evaluate(FULL, "https://dash.example.com", "GET")
    assert v.allowed and v.rule == 1 and not v.preflight


def test_evaluate_explains_origin_method_and_header() -> None:
    v = evaluate(FULL, "http://127.0.0.1:9999", "PUT")
    assert not v.allowed and "origin http://127.0.0.1:9999 is not allowed by any rule" in v.reason
    v = evaluate(FULL, "http://127.0.0.1:8000", "DELETE")
    assert (
        not v.allowed
        and "method DELETE is not allowed" in v.reason
        and "rule 0 (uploads) allows PUT, GET" in v.reason
    )
    v = evaluate(FULL, "http://127.0.0.1:8000", "PUT", ["x-api-key"])
    assert not v.allowed and "does not allow x-api-key" in v.reason and "allows content-type" in v.reason
    v = evaluate([], "http://127.0.0.1:8000", "GET")
    assert not v.allowed and "no CORS policy" in v.reason
    # a wildcard origin matches only one label's worth of pattern, not a different domain
    assert not evaluate(FULL, "https://example.com.evil.net", "GET").allowed


def test_the_example_policy_allows_what_the_readme_describes() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[3] / "config" / "cors.example.json").read_text()
    rules, form = parse_policy(text)
    assert form == "s3"
    upload = evaluate(rules, "https://app.example.com", "PUT", ["Content-Type"])
    assert upload.allowed and "ETag" in upload.exposed
    read = evaluate(rules, "https://dashboard.example.com", "GET", [])
    assert read.allowed and "Content-Length" in read.exposed
    assert not evaluate(rules, "https://dashboard.example.com", "PUT", ["content-type"]).allowed
    assert not evaluate(rules, "https://app.example.com", "DELETE", []).allowed


def test_holds_forgives_a_filled_in_max_age_only() -> None:
    sent = [CorsRule(["https://a.com"], ["GET"])]
    filled = [replace(sent[0], max_age_seconds=0)]  # what SeaweedFS gives back
    assert holds(sent, filled) and holds(sent, sent)
    assert not holds(filled, [replace(filled[0], max_age_seconds=60)])
    assert not holds(sent, [replace(filled[0], origins=["https://b.com"])]) and not holds(sent, [])
