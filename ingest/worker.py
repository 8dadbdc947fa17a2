"""`ingest run`: assemble credentials, client, sources and pipeline; handle signals, probes, progress.

With no R2 configured it starts the embedded local R2 first, so `ingest run` works on a fresh machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from rich.console import Console

from ingest import logs
from ingest.config import ConfigError, Settings, SourceConfig
from ingest.daemon import systemd
from ingest.daemon.grants import UploadGrants
from ingest.daemon.health import Health, Stats
from ingest.layout import TABLE_KEY_TEMPLATE
from ingest.local.fallback import r2_settings
from ingest.logs import get_logger
from ingest.messages import count
from ingest.pipeline import Pipeline
from ingest.pipeline.keys import KeyTemplate
from ingest.pipeline.spool import Spool
from ingest.r2.client import R2Client
from ingest.r2.credentials import provider_from_settings
from ingest.r2.endpoint import endpoint_url
from ingest.sources.base import Source, Starting
from ingest.sources.directory.source import DirectorySource
from ingest.sources.landing import LandingSource
from ingest.sources.notified import Notified
from ingest.sources.reader import FileSource

STARTING = "starting"  # the readiness problem open until every source takes input
log = get_logger("ingest.worker")
DEFAULT_INBOX = "inbox"


@dataclass
class RunResult:
    stats: Stats
    dead_letters: int
    dead_letter_dir: Path
    bucket: str = ""
    pending_units: dict[str, str] = field(default_factory=dict)  # input not acknowledged → why
    unreadable: dict[str, str] = field(default_factory=dict)  # input that could not be read → why
    unit_noun: str = "file"  # what a source unit is called in the summary ("input": requests, stdin)
    lost: dict[str, str] = field(default_factory=dict)  # input not ingested that cannot be kept → why

    @property
    def complete(self) -> bool:
        return not (self.stats.failed_objects or self.pending_units or self.unreadable or self.lost)


def open_spool(settings: Settings) -> Spool:
    """This worker's spool; also settles the worker id (`<host>.2` for a second process on a host)."""
    try:
        return Spool(
            Path(settings.spool.dir),
            settings.worker.id or socket.gethostname(),
            settings.spool.max_bytes,
            explicit=bool(settings.worker.id),
        )
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"spool.dir: cannot create or write {settings.spool.dir} ({_reason(exc)}); "
            "point it at a writable local directory"
        ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def check_directory(key: str, path: str, create: bool = False) -> None:
    """A watched directory must exist and be one: a typo must not watch a new, empty directory."""
    p = Path(path)
    if create and not p.exists():
        p.mkdir(parents=True, exist_ok=True)
    if not p.exists():
        raise ConfigError(f"{key}: directory {p} does not exist; create it or fix the path")
    if not p.is_dir():
        raise ConfigError(f"{key}: {p} is not a directory; point it at the directory to watch")
    if not os.access(p, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key}: {p} is not readable and writable by this user; files are claimed by renaming them"
        )


def check_tables(settings: Settings, configs: list[SourceConfig]) -> bool:
    """Whether keys can tell tables apart (the template has {table}); without it, the sources must
    all write one table."""
    per_table = KeyTemplate(settings.output.key_template).per_table
    if per_table:
        return True
    tables = {c.default_table for c in configs} | {t for c in configs for t in c.tables}
    if len(tables) > 1:
        raise ConfigError(
            f"output.key_template: the sources write tables {', '.join(sorted(tables))}, but the template "
            f"has no {{table}}, so their keys would collide; use e.g. {TABLE_KEY_TEMPLATE!r}"
        )
    return False


def source_configs(settings: Settings) -> list[SourceConfig]:
    """The configured sources, or the default inbox when none is."""
    return settings.sources or [SourceConfig(kind="directory", path=DEFAULT_INBOX)]


def check_sources(settings: Settings, once: bool) -> bool:
    """Every source setting that can be checked without starting anything (ConfigError, one line):
    run before the local R2 or the spool start, so a config error is said at once. Returns whether
    keys tell tables apart."""
    configs = source_configs(settings)
    default = not settings.sources
    per_table = check_tables(settings, configs)
    kinds: set[str] = set()
    for i, cfg in enumerate(configs):
        if cfg.kind == "http":
            if once:
                raise ConfigError(
                    f"sources.{i}.kind: an http source takes requests for as long as the worker runs, so "
                    "--once would end it at once; run without --once (or use another config for cron runs)"
                )
            if "http" in kinds:
                raise ConfigError(
                    f"sources.{i}.kind: a second http source; one serves every table, so keep one"
                )
            if not settings.server.listen:
                raise ConfigError(f"sources.{i}.kind: an http source needs server.listen (host:port)")
            from ingest.sources.http.source import tokens_of

            tokens_of(cfg, i)
        elif cfg.kind == "landing" and "landing" in kinds:
            raise ConfigError(
                f"sources.{i}.kind: a second landing source; there is one landing prefix "
                "({output.prefix}_landing/) per worker, so keep one"
            )
        elif cfg.kind == "queue":
            from ingest.sources.queue.source import check_visibility

            commit = settings.iceberg.commit_interval if settings.iceberg.enabled else 0.0
            check_visibility(cfg, i, settings.batch.max_age, commit)
            if not (cfg.queue or cfg.queue_id):
                raise ConfigError(f"sources.{i}.queue: required: the queue's name (or queue_id)")
        elif cfg.kind == "directory":
            if not cfg.path:
                raise ConfigError(f"sources.{i}.path: required for a directory source")
            check_directory(f"sources.{i}.path", cfg.path, create=default)
            if cfg.done_dir:
                check_done_dir(f"sources.{i}.done_dir", cfg.done_dir)
        kinds.add(cfg.kind)
    if settings.server.upload_token.get_secret_value() and "landing" not in kinds:
        raise ConfigError(
            'server.upload_token: set, but no source has kind = "landing", so granted uploads would '
            'never be ingested; add [[sources]] kind = "landing"'
        )
    return per_table


def build_sources(
    settings: Settings, spool: Spool, say: Console, client: R2Client, per_table: bool
) -> list[Source]:
    """The sources of a config that `check_sources` passed (`per_table`: what it answered)."""
    configs = source_configs(settings)
    if not settings.sources:
        say.print(f"no sources configured: watching ./{DEFAULT_INBOX}/", markup=False, highlight=False)
    sources: list[Source] = []
    for i, cfg in enumerate(configs):
        if cfg.kind == "http":
            sources.append(http_source(settings, spool, cfg, i, per_table))
            continue
        if cfg.kind == "redis":
            from ingest.sources.redis.source import RedisSource

            sources.append(
                RedisSource(
                    cfg,
                    i,
                    spool.worker_id,
                    spool.dead,
                    settings.batch.max_record_bytes,
                    settings.batch.max_age,
                    settings.retry,
                )
            )
            continue
        if cfg.kind == "queue":
            from ingest.sources.queue.source import QueueSource

            sources.append(
                QueueSource(
                    cfg,
                    i,
                    settings.r2.account_id,
                    settings.r2.api_base_url,
                    settings.r2.admin_api_token,
                    client,
                    settings.r2.bucket,
                    settings.output.prefix,
                    spool.worker_id,
                    spool.dead,
                    settings.batch.max_record_bytes,
                    settings.retry,
                )
            )
            continue
        if cfg.kind == "stdin":
            from ingest.sources.stdin import StdinSource

            sources.append(StdinSource(cfg, spool.dead, settings.batch.max_record_bytes))
            continue
        if cfg.kind == "landing":
            sources.append(
                LandingSource(
                    cfg,
                    client,
                    settings.r2.bucket,
                    settings.output.prefix,
                    spool.worker_id,
                    spool.dir / "landing",
                    spool.dead,
                    settings.batch.max_record_bytes,
                    settings.retry,
                    Notified.of(settings, cfg, i) if cfg.notifications else None,
                )
            )
            continue
        # The claim directory is named like the spool, so a restarted worker finds both together.
        source = DirectorySource(cfg, spool.worker_id, spool.dead, True, settings.batch.max_record_bytes)
        source.lock_claim_dir()
        sources.append(source)
    return sources


def http_source(settings: Settings, spool: Spool, cfg: SourceConfig, index: int, per_table: bool) -> Source:
    from ingest.sources.http.source import HttpSource

    return HttpSource(
        cfg,
        index,
        spool.dir,
        spool.dead,
        settings.batch.max_record_bytes,
        settings.batch.max_bytes,
        per_table,
    )


def check_done_dir(key: str, path: str) -> None:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{key}: cannot create {p} ({_reason(exc)}); fix the path or its permissions"
        ) from None
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {p} is not a writable directory")


def upload_grants(settings: Settings, client: R2Client) -> UploadGrants | None:
    """Grants for browser uploads, when a token is set; they only make sense with a landing source."""
    if not settings.server.upload_token.get_secret_value():
        return None
    landing = [c for c in settings.sources if c.kind == "landing"]  # there is one: check_sources
    return UploadGrants(
        client,
        settings.r2.bucket,
        settings.output.prefix,
        settings.server.upload_expires,
        landing[0].format,
    )


async def run(settings: Settings, once: bool, say: Console, progress: Console | None = None) -> RunResult:
    """Run the worker; `progress`: a terminal's console to show a progress bar on (log lines then go
    through it too, above the bar)."""
    per_table = check_sources(settings, once)  # before the local R2 starts: said at once
    catalog = None
    if settings.iceberg.enabled:  # reached while the rest starts (its errors are said below)
        from ingest.pipeline.commit import Connection

        catalog = Connection(settings)
    from ingest.daemon.limits import connection_cap, open_files_limit, quiet_accept_errors

    open_files = open_files_limit()  # raised to the hard limit: connections, spool files, sockets
    asyncio.get_running_loop().set_exception_handler(quiet_accept_errors)
    async with r2_settings(settings, say) as s, AsyncExitStack() as stack:
        r2 = s.r2
        if not r2.bucket:
            raise ConfigError("r2.bucket: required (R2_BUCKET_NAME)")
        spool = open_spool(s)
        stack.callback(spool.close)
        provider = await stack.enter_async_context(await provider_from_settings(r2, s.output.prefix))
        client = await stack.enter_async_context(
            R2Client(
                endpoint_url(r2.account_id, r2.jurisdiction, r2.endpoint_url),
                provider,
                max_connections=s.upload.concurrency + 4,
                lazy=True,  # built by `warm` below, while the first files are read
            )
        )
        sources = build_sources(s, spool, say, client, per_table)
        probe_sock = None  # bound after the sources' config is checked: a taken port does not hide it
        if not once and s.server.listen:  # --once serves no probes: the server is not even imported
            from ingest.daemon.server import bind

            probe_sock = bind(s.server.listen)
            stack.callback(probe_sock.close)
        for src in sources:  # sources that must reach something first (Redis): a clear error now
            if (check := getattr(src, "check", None)) is not None:
                await check()
                stack.push_async_callback(src.close)  # type: ignore[attr-defined]
        grants = upload_grants(s, client)
        health = Health()
        health.fail("the worker is starting", kind=STARTING)  # until every source takes input
        pipeline = Pipeline(s, client, sources, spool, health, catalog)
        stack.callback(pipeline.close)
        if pipeline.committer is not None:  # a refused token or a missing catalog: exit 2 now
            await pipeline.committer.start()
        interrupted = False
        drain = anyio.CancelScope()

        async def deadline() -> None:
            await anyio.sleep(s.worker.shutdown_timeout)
            log.warning(
                "shutdown_timeout reached: stopping now; unfinished work stays in the spool and the "
                "claimed input for the next start",
                spool=str(spool.dir),
                waiting_bytes=spool.used,
            )
            drain.cancel()

        probes = None
        if probe_sock is not None:  # built before the task group: a bad certificate is a config error
            from ingest.daemon.server import ProbeServer
            from ingest.daemon.server import app as server_app

            routes = [r for src in sources for r in getattr(src, "routes", list)()]
            application = server_app(health, grants, s.server.upload_token, s.server.cors_origins, routes)
            cap = connection_cap(s.server.max_connections, open_files)
            probes = ProbeServer(
                application, probe_sock, s.server.tls_cert, s.server.tls_key, s.server.header_timeout, cap
            )

        async with anyio.create_task_group() as tg:
            if probes is not None:
                tg.start_soon(probes.serve)
                scheme = "https" if s.server.tls_cert else "http"
                log.info("probes listening", healthz=f"{scheme}://{s.server.listen}/healthz")

            async def on_signals() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        if interrupted:  # second signal: stop now; unacked input is read again later
                            log.warning("second signal: exiting without draining")
                            tg.cancel_scope.cancel()
                            return
                        interrupted = True
                        log.info(
                            "stopping intake; finishing what was read", signal=signal.Signals(signum).name
                        )
                        systemd.notify("STOPPING=1", "STATUS=draining: finishing what was read")
                        pipeline.stop_intake()
                        tg.start_soon(deadline)

            tg.start_soon(on_signals)
            tg.start_soon(_warm, client, pipeline, once)
            tg.start_soon(_started, pipeline, sources, health)
            if progress is not None:
                tg.start_soon(_show_progress, pipeline, progress)
            with drain:
                await pipeline.run(once)
            tg.cancel_scope.cancel()  # signal watcher, deadline, progress
            if probes is not None:
                probes.stop()
        # What the sources still hold claimed, and (the safety net) every unit the pipeline took or
        # found in the journal that is not acknowledged, whatever the sources say.
        pending = {p: "claimed, not acknowledged" for src in sources for p in src.pending()}
        pending |= pipeline.unacknowledged()
        unreadable = {where: why for src in sources for where, why in src.problems().items()}
        from ingest.sources.stdin import StdinSource

        lost = {w: why for src in sources if isinstance(src, StdinSource) for w, why in src.lost().items()}
        noun = "file" if all(isinstance(src, FileSource) for src in sources) else "input"
        return RunResult(
            pipeline.stats, spool.dead.count, spool.dead.dir, r2.bucket, pending, unreadable, noun, lost
        )


async def _warm(client: R2Client, pipeline: Pipeline, once: bool) -> None:
    """Build the S3 client while the first input is read. A `--once` run builds it only once a
    source has opened something: one that finds nothing ends without it (its build was 0.25 s of
    such a run's 0.7 s, measured). Anything uploaded before (a crash's spooled objects) builds it
    at its first use."""
    if once:
        await pipeline.has_input.wait()
    await client.warm()


async def _started(pipeline: Pipeline, sources: list[Source], health: Health) -> None:
    """Ready (probes, systemd's READY=1) once the pipeline runs and every source takes input; then
    feed the watchdog (when systemd set one)."""
    await pipeline.started.wait()
    for source in sources:
        if isinstance(source, Starting):
            await source.taking.wait()
    health.clear(STARTING)
    systemd.notify("READY=1", f"STATUS=running: {', '.join(s.name for s in sources)}")
    if (interval := systemd.watchdog_interval()) is not None:
        await systemd.keep_alive(interval)


async def _show_progress(pipeline: Pipeline, console: Console) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    st = pipeline.stats
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[files]} · {task.fields[records]} · {task.fields[mb]:.1f} MB"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar, logs.through(console):
        task = bar.add_task("uploading", total=None, files="0 files", records="0 records", mb=0.0)
        while True:
            total = st.records_read or None
            bar.update(
                task,
                total=total,
                completed=st.records_uploaded,
                files=count(st.units_acked, "file"),
                records=count(st.records_uploaded, "record"),
                mb=st.bytes_uploaded / 1e6,
            )
            await anyio.sleep(0.2)
