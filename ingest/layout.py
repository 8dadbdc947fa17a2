"""Every key, prefix and path name the worker writes, in one place.

Data objects go under the key template; dead letters under `{prefix}_errors/`; browser uploads land
under `{prefix}_landing/<uuid>/<name>` and are claimed with markers under `{prefix}_landing/.claims/`;
the directory source claims files into `<path>/.ingest/claimed/<worker-id>/`.
"""

from __future__ import annotations

DEFAULT_KEY_TEMPLATE = "{prefix}{date:%Y/%m/%d}/ingested_{seq:04d}.parquet"
TABLE_KEY_TEMPLATE = "{prefix}{table}/{date:%Y/%m/%d}/ingested_{seq:04d}.parquet"  # several tables
DEFAULT_TABLE = "default"  # a record's table when neither its source nor its request names one
TABLE_NAME = r"[a-z0-9_-]{1,64}"
RESERVED_TABLE_START = "_"  # the worker's own prefixes (_landing/, _errors/) are not tables
ERRORS = "_errors/"
ERRORS_TEMPLATE = "{prefix}" + ERRORS + "{date:%Y/%m/%d}/errors_{seq:04d}.jsonl"
LANDING = "_landing/"
INDEX = "_index/"  # the worker's index of the objects it uploaded (pipeline/index.py)
LEDGER = "_ledger/"  # which queue messages each object holds (sources/queue/ledger.py)
CLAIMS = ".claims/"  # under the landing prefix: one marker per claimed landing object
CLAIM_DIR = ".ingest"  # under a watched directory: `claimed/<worker-id>/` holds the claimed files


def landing_prefix(prefix: str) -> str:
    """Where browser uploads land (and the landing source lists)."""
    return f"{prefix}{LANDING}"


def index_prefix(prefix: str) -> str:
    """Where the worker indexes what it uploaded, in folders that mirror the objects' own."""
    return f"{prefix}{INDEX}"


def queue_ledger_prefix(prefix: str, queue_id: str) -> str:
    """Where the queue source records, before each PUT, which messages the object holds."""
    return f"{prefix}{LEDGER}queues/{queue_id}/"


def errors_prefix(prefix: str) -> str:
    """Where dead-letter files are uploaded (ERRORS_TEMPLATE's fixed part)."""
    return f"{prefix}{ERRORS}"
