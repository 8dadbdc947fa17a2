"""Prometheus metrics. Names carry the `ingest_` prefix; no label ever holds a secret."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CREDENTIAL_REFRESHES = Counter(
    "ingest_credential_refreshes_total", "Temporary credentials minted, by reason.", ["reason"]
)
CREDENTIAL_REFRESH_FAILURES = Counter(
    "ingest_credential_refresh_failures_total", "Failed attempts to mint temporary credentials."
)
CLOUDFLARE_RATE_LIMITED = Counter(
    "ingest_cloudflare_api_rate_limited_total", "429 answers from the Cloudflare API."
)
# A timestamp, not a countdown: it stays right between refreshes (alert on `- time() < N`).
CREDENTIAL_EXPIRY = Gauge(
    "ingest_credential_expiry_timestamp_seconds",
    "Unix time at which the current temporary credentials expire.",
)
