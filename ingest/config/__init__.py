"""Settings: a TOML file plus the environment names R2 users already use (env wins).

Invalid configuration raises `ConfigError` whose message is one line naming the key, which the CLI
prints before exiting with code 2.
"""

from __future__ import annotations

import codecs
import difflib
import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ingest.config.origins import origin_problem
from ingest.config.quantities import ByteSize, Duration
from ingest.layout import (
    DEFAULT_KEY_TEMPLATE,
    DEFAULT_TABLE,
    ERRORS,
    LANDING,
    RESERVED_TABLE_START,
    TABLE_NAME,
)

DEFAULT_CONFIG_FILE = Path("ingest.toml")

# The file `load_settings` reads; a context variable because pydantic-settings builds sources per class.
_config_file: ContextVar[Path | None] = ContextVar("ingest_config_file", default=None)

# Environment variable -> dotted settings key: the names R2 tooling already uses, and a few deployment
# ones. (`INGEST_CONFIG`, the config file itself, is read by the CLI.)
ENV_KEYS: dict[str, str] = {
    "R2_ACCOUNT_ID": "r2.account_id",
    "R2_BUCKET_NAME": "r2.bucket",
    "R2_JURISDICTION": "r2.jurisdiction",
    "R2_ENDPOINT_URL": "r2.endpoint_url",
    "CLOUDFLARE_API_BASE_URL": "r2.api_base_url",
    "R2_AUTH_MODE": "r2.auth.mode",
    "R2_ACCESS_KEY_ID": "r2.auth.access_key_id",
    "R2_SECRET_ACCESS_KEY": "r2.auth.secret_access_key",
    "R2_API_TOKEN": "r2.auth.api_token",
    "R2_TOKEN_ID": "r2.auth.token_id",
    "CLOUDFLARE_API_TOKEN": "r2.admin_api_token",
    "R2_CATALOG_URI": "iceberg.catalog_uri",
    "R2_WAREHOUSE": "iceberg.warehouse",
    "R2_CATALOG_TOKEN": "iceberg.token",
    "INGEST_UPLOAD_TOKEN": "server.upload_token",
    "INGEST_TLS_CERT": "server.tls_cert",
    "INGEST_TLS_KEY": "server.tls_key",
    # What a deployment sets per replica or per image (a pod's name, a volume's mount point).
    "INGEST_WORKER_ID": "worker.id",
    "INGEST_SPOOL_DIR": "spool.dir",
    "INGEST_LISTEN": "server.listen",
    "INGEST_LOG_FORMAT": "log.format",
    "INGEST_LOG_LEVEL": "log.level",
}


class ConfigError(Exception):
    """A configuration problem, phrased as one line that names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class AuthConfig(_Section):
    mode: Literal["", "keys", "token", "temporary"] = ""
    access_key_id: str = ""
    secret_access_key: SecretStr = SecretStr("")
    api_token: SecretStr = SecretStr("")
    token_id: str = ""
    permission: Literal["object-read-write", "object-read-only", "admin-read-write", "admin-read-only"] = (
        "object-read-write"
    )
    ttl_seconds: int = Field(default=3600, ge=1, le=604800)
    refresh_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)


class R2Config(_Section):
    account_id: str = ""
    bucket: str = ""
    jurisdiction: Literal["default", "eu", "fedramp", "us"] = "default"
    endpoint_url: str = ""
    api_base_url: str = ""
    # Account-level Cloudflare API token for admin work (creating tokens, bucket CORS via the API);
    # never needed by `ingest run`.
    admin_api_token: SecretStr = SecretStr("")
    auth: AuthConfig = AuthConfig()

    @field_validator("endpoint_url", "api_base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        scheme, _, rest = v.partition("://")
        if v and (scheme not in ("http", "https") or not rest.split("/")[0]):
            example = "https://<account id>.r2.cloudflarestorage.com"
            raise ValueError(f"{v!r} is not an http(s) URL; e.g. {example}")
        return v

    @property
    def configured(self) -> bool:
        """True when a real (or explicitly pointed-at) R2 is configured; else the local R2 is used."""
        return bool(self.endpoint_url or self.account_id)


# Keys that only some source kinds read; setting one on another kind is a mistake worth an error.
_ONLY_FOR: dict[str, tuple[str, ...]] = {
    "path": ("directory",),
    "done_dir": ("directory",),
    "settle_seconds": ("directory", "landing"),
    "follow_symlinks": ("directory",),
    "wait_for_writers": ("directory",),
    "encoding": ("directory", "landing", "stdin"),
    "delimiter": ("directory", "landing", "stdin"),
    "quote": ("directory", "landing", "stdin"),
    "header": ("directory", "landing", "stdin"),
    "columns": ("directory", "landing", "stdin"),
    "null_values": ("directory", "landing", "stdin"),
    "tables": ("http",),
    "token": ("http",),
    "tokens": ("http",),
    "strict": ("http",),
    "max_request_bytes": ("http",),
    "body_timeout": ("http",),
    "ack": ("http",),
    "ack_timeout": ("http",),
    "idempotency_window": ("http",),
    "url": ("redis",),
    "stream": ("redis",),
    "streams": ("redis",),
    "group": ("redis",),
    "start": ("redis",),
    "field": ("redis",),
    "include_id": ("redis",),
    "read_count": ("redis",),
    "block": ("redis",),
    "claim_interval": ("redis",),
    "claim_idle": ("redis",),
    "max_deliveries": ("redis",),
    "queue": ("queue",),
    "queue_id": ("queue",),
    "batch_size": ("queue",),
    "visibility_timeout": ("queue",),
    "concurrency": ("queue",),
    "api_token": ("queue", "landing"),
    "poll_interval": ("queue", "landing"),
    "notifications": ("landing",),
    "reconcile_interval": ("landing",),
}


class SourceConfig(_Section):
    kind: Literal["directory", "landing", "http", "stdin", "redis", "queue"]
    path: str = ""
    format: Literal["", "jsonl", "json", "csv", "parquet"] = ""
    table: str = ""  # the table its records go to (default: "default"; http: also the URL's)
    settle_seconds: Duration = 1.0
    done_dir: str = ""
    follow_symlinks: bool = True  # read a linked file's target (only the link is acknowledged)
    wait_for_writers: bool = True  # never finish a file some process holds open for writing (/proc)
    # directory, landing, stdin: how text is read (a byte-order mark wins over utf-8/utf-16)
    encoding: str = "utf-8"  # utf-8 | cp1252 | latin-1 | utf-16 | any Python codec name
    delimiter: str = ","  # CSV: one character (";" for European Excel, "\t" for TSV)
    quote: str = '"'  # CSV: one character
    header: bool = True  # CSV: the first row names the columns (false: `columns` names them)
    columns: list[str] = []  # CSV without a header row: the column names, in order
    null_values: list[str] = []  # CSV: cells read as null (by default none: an empty cell is "")
    # http: POST /v1/records[/{table}] on server.listen
    tables: list[str] = []  # the tables a request may name (empty: any)
    token: SecretStr = SecretStr("")  # bearer token senders present (env INGEST_HTTP_TOKEN)
    tokens: list[SecretStr] = []  # several accepted at once, for rotation
    strict: bool = False  # refuse a whole request (400) when any line of it is malformed
    max_request_bytes: ByteSize = Field(default=16 * 2**20, ge=1)  # also after decompression: 413
    body_timeout: Duration = Field(default=30.0, gt=0)  # a request's whole body arrives within this: 408
    ack: Literal["spool", "upload"] = "spool"  # answer once durable here (202) or once in R2 (200)
    ack_timeout: Duration = Field(default=30.0, gt=0)  # ack = "upload": 504 after this (still delivered)
    idempotency_window: Duration = Field(default=86400.0, gt=0)  # Idempotency-Key answers kept this long
    # redis: Redis Streams through a consumer group (the consumer is worker.id)
    url: SecretStr = SecretStr("")  # redis://[:password@]host:port/db (env INGEST_REDIS_URL)
    stream: str = ""  # the stream to read (or several: `streams`)
    streams: list[str] = []
    group: str = "ingest"  # the consumer group all workers share (created when missing)
    start: Literal["0", "$"] = "0"  # a new group starts at the oldest entry ("0") or at new ones ("$")
    field: str = "data"  # the entry field holding one JSON object; without it: the entry's fields
    include_id: bool = False  # add the entry id as column `_entry_id` (lineage)
    read_count: int = Field(default=10_000, ge=1, le=100_000)  # entries per read (one unit)
    block: Duration = Field(default=1.0, gt=0)  # a read waits at most this long for new entries
    claim_interval: Duration = Field(default=30.0, gt=0)  # how often idle entries of dead workers are taken
    claim_idle: Duration = Field(default=300.0, gt=0)  # entries idle this long belong to a dead worker
    max_deliveries: int = Field(default=5, ge=1)  # delivered more often: a dead letter (then acked)
    # queue: a Cloudflare Queues HTTP pull consumer (docs/queues.md); landing: `notifications` names one
    queue: str = ""  # the queue's name (or `queue_id`)
    queue_id: str = ""
    batch_size: int = Field(default=100, ge=1, le=100)  # messages per pull (the API's maximum is 100)
    # a pulled message is hidden from other consumers this long; it must outlast a batch's age + upload
    visibility_timeout: Duration = Field(default=300.0, gt=0, le=43200)
    concurrency: int = Field(default=2, ge=1, le=32)  # pulls in flight at once
    # Cloudflare API token with Queues Write (env CLOUDFLARE_API_TOKEN), not the R2 data credentials
    api_token: SecretStr = SecretStr("")
    poll_interval: Duration = Field(default=5.0, gt=0)  # an empty queue is asked again after at most this
    notifications: str = ""  # landing: the queue R2 event notifications of the landing prefix go to
    reconcile_interval: Duration = Field(default=600.0, gt=0)  # landing with notifications: LIST this often

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        if v.get_secret_value() and (problem := redis_url_problem(v.get_secret_value())) is not None:
            raise ValueError(problem)
        return v

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if raw and not raw.strip():
            raise ValueError("blank (only spaces): no sender could present it; set a token or remove the key")
        return SecretStr(raw.strip())

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: list[SecretStr]) -> list[SecretStr]:
        if any(not t.get_secret_value().strip() for t in v):
            raise ValueError("a token is blank (empty or only spaces): no sender could present it")
        return [SecretStr(t.get_secret_value().strip()) for t in v]

    @field_validator("table")
    @classmethod
    def _table_name(cls, v: str) -> str:
        if v and (problem := table_problem(v)) is not None:
            raise ValueError(problem)
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name.replace("_", "-")
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}; use e.g. utf-8, cp1252, latin-1, utf-16") from None

    @field_validator("delimiter", "quote")
    @classmethod
    def _one_character(cls, v: str) -> str:
        if len(v) != 1 or v in "\r\n":
            raise ValueError(f"must be one character other than a line end, not {v!r}")
        return v

    @field_validator("tables")
    @classmethod
    def _table_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if (problem := table_problem(name)) is not None:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _keys_for_kind(self) -> SourceConfig:
        for key in sorted(self.model_fields_set):
            kinds = _ONLY_FOR.get(key)
            if kinds is not None and self.kind not in kinds:
                raise ValueError(f"{key} is only read by kind = {' or '.join(repr(k) for k in kinds)}")
        if not self.header and not self.columns:
            raise ValueError("header = false needs `columns`: the names of the CSV's columns, in order")
        if self.delimiter == self.quote:
            raise ValueError("delimiter and quote must differ")
        return self

    @property
    def default_table(self) -> str:
        return self.table or DEFAULT_TABLE


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL (never quoting it: it may hold a password), or None."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        return "use redis://[:password@]host:port/db, rediss://… (TLS) or unix:///path/to/socket"
    try:
        port = parsed.port
    except ValueError:
        return "the port is not a number from 0 to 65535; use redis://host:6379/0"
    if parsed.scheme != "unix" and not parsed.hostname:
        return "no host; use redis://host:port/db"
    db = parsed.path.strip("/")
    if parsed.scheme != "unix" and db and not db.isdigit():
        return f"the database ({db!r}) is not a number; use redis://host:{port or 6379}/0"
    return None


def redis_where(url: str) -> str:
    """`host:port` (or the socket path) of a Redis URL, for messages: never its password."""
    parsed = urlparse(url)
    try:
        port = parsed.port or 6379
    except ValueError:
        port = 6379
    return f"{parsed.hostname or parsed.path}:{port}"


def table_problem(name: str) -> str | None:
    if not re.fullmatch(TABLE_NAME, name):
        return f"table name {name!r} is not valid: use 1 to 64 of a-z, 0-9, _ and -"
    if name.startswith(RESERVED_TABLE_START):  # `{prefix}{table}/` would write into _landing/, _errors/
        return (
            f"table name {name!r} is reserved: names starting with {RESERVED_TABLE_START!r} are the "
            f"worker's own prefixes ({LANDING.rstrip('/')}, {ERRORS.rstrip('/')}); choose another name"
        )
    return None


class WorkerConfig(_Section):
    id: str = ""  # default: the host name; names this worker's spool and claim directories
    shutdown_timeout: Duration = Field(default=25.0, gt=0)  # SIGTERM drain limit (k8s grace is 30 s)


class BatchConfig(_Section):
    max_records: int = Field(default=1_000_000, ge=1)
    max_record_bytes: ByteSize = Field(default=8 * 2**20, ge=1)  # longer records go to dead letters
    max_bytes: ByteSize = Field(default=128 * 2**20, ge=1)  # Arrow bytes + 8 KiB a chunk (batch.CHUNK_COST)
    max_age: Duration = Field(default=60.0, gt=0)


class OutputConfig(_Section):
    prefix: str = ""
    key_template: str = DEFAULT_KEY_TEMPLATE
    partition_by: str = ""
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    row_group_size: int = Field(default=1_000_000, ge=1)
    schema_file: str = ""
    # Columns a table may have; a field first seen past it goes into the JSON text column `_extra`.
    max_columns: int = Field(default=1000, ge=2, le=100_000)

    @field_validator("key_template")
    @classmethod
    def _template_has_seq(cls, v: str) -> str:
        if "{seq" not in v:
            raise ValueError("must contain {seq...} so concurrent writers get distinct keys")
        return v


class UploadConfig(_Section):
    concurrency: int = Field(default=8, ge=1, le=256)
    multipart_threshold: ByteSize = Field(default=64 * 2**20, ge=5 * 2**20)
    part_size: ByteSize = Field(default=16 * 2**20, ge=5 * 2**20, le=5 * 2**30)


class RetryConfig(_Section):
    initial: Duration = Field(default=0.5, gt=0)
    max: Duration = Field(default=60.0, gt=0)
    max_elapsed: Duration = Field(default=86400.0, gt=0)
    max_attempts: int = Field(default=0, ge=0)  # 0 = bounded by max_elapsed only
    once_max_elapsed: Duration = Field(default=600.0, gt=0)  # --once: stop retrying this long after start


class SpoolConfig(_Section):
    dir: str = ".ingest/spool"
    max_bytes: ByteSize = Field(default=10 * 2**30, ge=1)  # above it intake pauses (resumes at 80 %)


class ServerConfig(_Section):
    listen: str = "127.0.0.1:8080"
    ready_failure_seconds: Duration = Field(default=30.0, gt=0)  # failing uploads this long: not ready
    upload_token: SecretStr = SecretStr("")  # bearer token for POST /v1/uploads; empty = no grants
    upload_expires: Duration = Field(default=900.0, ge=1, le=7 * 86400)  # life of a granted URL
    cors_origins: list[str] = []  # browser origins that may call the worker's API (upload grants)
    # a request's headers arrive within this of the connection's start (or the previous answer)
    header_timeout: Duration = Field(default=30.0, gt=0)
    # open connections at most (0: three quarters of the open-files limit); see ingest/connections.py
    max_connections: int = Field(default=0, ge=0)
    # HTTPS for the whole server (probes, metrics, http sources): PEM files
    tls_cert: str = ""
    tls_key: str = ""

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if (problem := origin_problem(origin)) is not None:
                raise ValueError(problem)
        return v


class IcebergConfig(_Section):
    """Iceberg tables in R2 Data Catalog (docs/iceberg.md)."""

    enabled: bool = False
    namespace: str = "ingest"
    table: str = ""  # default: each record's routed table
    catalog_uri: str = ""  # https://catalog.cloudflarestorage.com/<account_id>/<bucket> (R2_CATALOG_URI)
    warehouse: str = ""  # <account_id>_<bucket> (R2_WAREHOUSE)
    token: SecretStr = SecretStr("")  # R2_CATALOG_TOKEN, else CLOUDFLARE_API_TOKEN
    commit_interval: Duration = Field(default=10.0, gt=0)  # objects gathered into one snapshot
    max_objects_per_commit: int = Field(default=100, ge=1, le=10_000)

    @field_validator("namespace", "table")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"{v!r} is not an Iceberg identifier: use letters, digits and _")
        return v

    @model_validator(mode="after")
    def _reachable(self) -> IcebergConfig:
        if self.enabled and not (self.catalog_uri and self.warehouse):
            key, env = (
                ("catalog_uri", "R2_CATALOG_URI") if not self.catalog_uri else ("warehouse", "R2_WAREHOUSE")
            )
            raise ValueError(
                f"enabled, but {key} is empty: set it or {env} (`wrangler r2 bucket catalog get <bucket>` "
                "prints both)"
            )
        return self


class LogConfig(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    r2: R2Config = R2Config()
    worker: WorkerConfig = WorkerConfig()
    sources: list[SourceConfig] = []
    batch: BatchConfig = BatchConfig()
    output: OutputConfig = OutputConfig()
    upload: UploadConfig = UploadConfig()
    retry: RetryConfig = RetryConfig()
    spool: SpoolConfig = SpoolConfig()
    server: ServerConfig = ServerConfig()
    iceberg: IcebergConfig = IcebergConfig()
    log: LogConfig = LogConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: explicit values, then the R2 environment names, then the file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, _R2EnvSource(settings_cls)]
        if (path := _config_file.get()) is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


class _R2EnvSource(PydanticBaseSettingsSource):
    """Maps the flat R2_* / CLOUDFLARE_* environment names onto the nested settings keys."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for env, dotted in ENV_KEYS.items():
            value = os.environ.get(env)
            if value is None or value == "":
                continue
            node = out
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out


def _format_error(exc: ValidationError, model: type[BaseModel] = Settings) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "config"
    kind = err["type"]
    if kind == "extra_forbidden":
        # Walk the model down to the section that owns the unknown key, to suggest the nearest one.
        node: type[BaseModel] | None = model
        for part in loc[:-1]:
            if part.isdigit() or node is None:  # list index, e.g. sources.0.kind
                continue
            ann = node.model_fields[part].annotation if part in node.model_fields else None
            ann = (get_args(ann) or (ann,))[0]
            node = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        choices = list(node.model_fields) if node is not None else []
        close = difflib.get_close_matches(loc[-1], choices, n=1)
        hint = f" (did you mean {'.'.join([*loc[:-1], close[0]])}?)" if close else ""
        return f"{key}: unknown key{hint}"
    if kind == "literal_error":
        # pydantic says "'default', 'eu', 'fedramp' or 'us'"
        options = str(err.get("ctx", {}).get("expected", "")).replace("' or '", "', '").replace("'", "")
        return f"{key}: must be one of {options} (got {err['input']!r})"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    return f"{key}: {msg}"


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Write KEY=value lines atomically with mode 0600 (they hold secrets), replacing any old file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{k}={v}\n" for k, v in values.items())
    os.replace(tmp, path)


def resolve_paths(settings: Settings, base: Path) -> Settings:
    """Relative paths in a config file mean paths next to that file, wherever the worker is started
    from (a cron job's working directory is rarely the config's)."""

    def at(value: str) -> str:
        return value if not value or Path(value).is_absolute() else str(base / value)

    sources = [
        src.model_copy(update={"path": at(src.path), "done_dir": at(src.done_dir)})
        for src in settings.sources
    ]
    return settings.model_copy(
        update={
            "sources": sources,
            "spool": settings.spool.model_copy(update={"dir": at(settings.spool.dir)}),
            "output": settings.output.model_copy(update={"schema_file": at(settings.output.schema_file)}),
            "server": settings.server.model_copy(
                update={"tls_cert": at(settings.server.tls_cert), "tls_key": at(settings.server.tls_key)}
            ),
        }
    )


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load `path` (or ./ingest.toml when present), overlay the environment, validate."""
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None and not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing file to --config")
    token = _config_file.set(path)
    try:
        settings = Settings(**overrides)
        return settings if path is None else resolve_paths(settings, path.resolve().parent)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    finally:
        _config_file.reset(token)
