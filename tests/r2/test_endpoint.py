from __future__ import annotations

import pytest

from ingest.r2.endpoint import client_config, endpoint_url


@pytest.mark.parametrize(
    ("jurisdiction", "host"),
    [
        ("default", "https://acct.r2.cloudflarestorage.com"),
        ("eu", "https://acct.eu.r2.cloudflarestorage.com"),
        ("fedramp", "https://acct.fedramp.r2.cloudflarestorage.com"),
        ("us", "https://acct.us.r2.cloudflarestorage.com"),
    ],
)
def test_jurisdiction_endpoints(jurisdiction: str, host: str) -> None:
    assert endpoint_url("acct", jurisdiction) == host


def test_override_wins_and_account_is_required_without_it() -> None:
    assert endpoint_url("acct", "eu", "http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    with pytest.raises(ValueError, match="account_id"):
        endpoint_url("", "default")
    with pytest.raises(ValueError, match="jurisdiction"):
        endpoint_url("acct", "mars")


def test_client_config_fits_r2() -> None:
    cfg = client_config(max_pool_connections=32)
    assert cfg.region_name == "auto"
    assert cfg.request_checksum_calculation == "when_required"
    assert cfg.response_checksum_validation == "when_required"
    assert cfg.max_pool_connections == 32
