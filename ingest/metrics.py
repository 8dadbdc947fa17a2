"""Prometheus metrics. Names carry the `ingest_` prefix and base units (`_seconds`, `_bytes`, `_total`
for counters); no label ever holds a secret. `source` labels are configured source names
(`directory:<path>`, `landing:<prefix>`), so their number is bounded by the configuration.

config/grafana/ingest.json and config/prometheus/alerts.yaml query these names; a test checks each one
against a live worker's /metrics.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

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

RECORDS_READ = Counter("ingest_records_read_total", "Rows read from a source, by source.", ["source"])
RECORDS_UPLOADED = Counter("ingest_records_uploaded_total", "Rows inside objects now in R2.")
OBJECTS_UPLOADED = Counter("ingest_objects_uploaded_total", "Parquet objects written to R2.")
BYTES_UPLOADED = Counter("ingest_bytes_uploaded_total", "Bytes of Parquet written to R2.")
UPLOAD_RETRIES = Counter("ingest_upload_retries_total", "S3 requests retried after a transient failure.")
KEY_CONFLICTS = Counter(
    "ingest_key_conflicts_total", "Keys already taken (412) so the next number was tried."
)
UPLOAD_FAILURES = Counter("ingest_upload_failures_total", "Objects that failed for good and stay local.")
DEAD_LETTERS = Counter(
    "ingest_dead_letters_total", "Records kept aside as dead letters, by source.", ["source"]
)
UPLOAD_SECONDS = Histogram(
    "ingest_upload_duration_seconds",
    "Time to put one object into R2, retries included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SPOOL_BYTES = Gauge("ingest_spool_bytes", "Bytes of encoded objects in the spool waiting for upload.")
SPOOL_OBJECTS = Gauge("ingest_spool_objects", "Objects in the spool waiting for upload.")
SPOOL_OLDEST = Gauge(
    "ingest_spool_oldest_object_timestamp_seconds",
    "Unix time the oldest object waiting in the spool was written (0: none waiting).",
)
READY = Gauge("ingest_ready", "1 when the worker is ready (see /readyz for the reason when it is not).")


def watch(
    spool_bytes: Callable[[], float],
    spool_objects: Callable[[], float],
    spool_oldest: Callable[[], float],
    ready: Callable[[], float],
) -> None:
    """Gauges read at scrape time from the running worker (never stale, nothing to update)."""
    SPOOL_BYTES.set_function(spool_bytes)
    SPOOL_OBJECTS.set_function(spool_objects)
    SPOOL_OLDEST.set_function(spool_oldest)
    READY.set_function(ready)


UNITS_ACKED = Counter("ingest_source_units_acked_total", "Source units (files, ...) fully ingested.")

HTTP_REQUESTS = Counter(
    "ingest_http_requests_total",
    "Requests to an http source, by source and status code.",
    ["source", "status"],
)
HTTP_RECORDS = Counter(
    "ingest_http_records_total",
    "Records sent to an http source, by outcome (accepted, rejected).",
    ["source", "outcome"],
)
HTTP_COMMITS = Counter(
    "ingest_http_commits_total",
    "Group commits of accepted requests (one fdatasync and one journal transaction each).",
    ["source"],
)
HTTP_PARSES = Counter(
    "ingest_http_parses_total",
    "Parses of request bodies (bodies that wait for a parse are parsed together: fewer than requests).",
    ["source"],
)
SLOW_HEADERS = Counter(
    "ingest_http_slow_headers_total",
    "Connections to the server closed because a request's headers did not arrive within header_timeout.",
)
CONNECTIONS_SHED = Counter(
    "ingest_http_connections_shed_total",
    "Connections closed at server.max_connections: the longest idle one (idle_closed), or the new "
    "one (refused).",
    ["reason"],
)
HTTP_SECONDS = Histogram(
    "ingest_http_request_duration_seconds",
    "Time from a request's arrival to its answer (202: durable in the spool).",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30),
)

REDIS_ENTRIES = Counter(
    "ingest_redis_entries_total",
    "Stream entries by what happened to them: read, acked, reclaimed, dead_lettered, trimmed (deleted "
    "before they were ingested).",
    ["stream", "event"],
)
REDIS_PENDING = Gauge(
    "ingest_redis_group_pending",
    "Entries delivered to the group but not acked (XINFO GROUPS).",
    ["stream", "group"],
)
REDIS_LAG = Gauge(
    "ingest_redis_group_lag",
    "Entries in the stream not yet delivered to the group (XINFO GROUPS lag).",
    ["stream", "group"],
)
