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

RECORDS_UPLOADED = Counter("ingest_records_uploaded_total", "Rows inside objects now in R2.")
OBJECTS_UPLOADED = Counter("ingest_objects_uploaded_total", "Parquet objects written to R2.")
BYTES_UPLOADED = Counter("ingest_bytes_uploaded_total", "Bytes of Parquet written to R2.")
UPLOAD_RETRIES = Counter("ingest_upload_retries_total", "S3 requests retried after a transient failure.")
KEY_CONFLICTS = Counter(
    "ingest_key_conflicts_total", "Keys already taken (412) so the next number was tried."
)
UPLOAD_FAILURES = Counter("ingest_upload_failures_total", "Objects that failed for good and stay local.")
DEAD_LETTERS = Counter("ingest_dead_letters_total", "Records kept aside as dead letters.")
UNITS_ACKED = Counter("ingest_source_units_acked_total", "Source units (files, ...) fully ingested.")
