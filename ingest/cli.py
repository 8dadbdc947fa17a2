"""The `ingest` command line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import anyio
import typer
from rich.console import Console

from ingest import logs
from ingest.config import ConfigError, Settings, load_settings, write_env_file

if TYPE_CHECKING:
    from ingest.doctor import Check

app = typer.Typer(
    name="ingest",
    help="Batch records from sources into dated Parquet objects on Cloudflare R2.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class State:
    config_path: Path | None = None


def settings() -> Settings:
    """Load the configuration or exit 2 with a one-line message naming the key."""
    try:
        s = load_settings(State.config_path)
    except ConfigError as exc:
        err.print(f"config error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    logs.register_secret(s.r2.auth.secret_access_key, s.r2.auth.api_token, s.r2.admin_api_token)
    logs.configure(s.log.format, s.log.level)
    return s


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config file (default: ./ingest.toml when present)."),
    ] = None,
) -> None:
    State.config_path = config


@app.command()
def local(
    directory: Annotated[Path, typer.Option("--dir", help="Where the local R2 keeps its data.")] = Path(
        ".ingest/local"
    ),
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="Write R2_* connection variables here once ready.")
    ] = None,
    bucket: Annotated[str, typer.Option(help="Default bucket (created on first start).")] = "ingest",
    s3_port: Annotated[int, typer.Option(help="S3 port (default: a free one).")] = 0,
    api_port: Annotated[int, typer.Option(help="Cloudflare API emulator port (default: a free one).")] = 0,
    check: Annotated[bool, typer.Option("--check", help="Start, run a self-check, stop.")] = False,
    new_ports: Annotated[
        bool, typer.Option("--new-ports", help="Pick new free ports instead of those kept for --dir.")
    ] = False,
) -> None:
    """Run an offline R2 (SeaweedFS + Cloudflare API emulator) on 127.0.0.1 until SIGINT/SIGTERM."""
    from ingest.doctor import diagnose
    from ingest.local.seaweed import SeaweedError
    from ingest.local.server import LocalR2

    s = settings()
    ok = True

    async def serve() -> None:
        nonlocal ok
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with LocalR2(directory, bucket, s3_port, api_port, new_ports).running() as info:
                if env_file is not None:
                    info.write_env_file(env_file)
                out.print("[bold green]local R2 ready[/] (Ctrl-C to stop)" if not check else "local R2 ready")
                for k, v in info.env().items():
                    out.print(f"  {k}={v}", markup=False, highlight=False)
                if check:
                    for mode in ("keys", "temporary"):
                        out.print(f"self-check, {mode} credentials:")
                        checks = await diagnose(info.settings(mode))
                        print_checks(checks)
                        ok &= not any(c.ok is False for c in checks)
                    return
                async for signum in signals:
                    out.print(f"received {signal.Signals(signum).name}, stopping")
                    return

    logs.configure(s.log.format, "warning" if check else s.log.level)
    try:
        anyio.run(serve)
    except* SeaweedError as group:
        err.print(f"local R2 stopped: {group.exceptions[0]}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if not ok:
        raise typer.Exit(1)


@app.command()
def run(
    once: Annotated[
        bool, typer.Option("--once", help="Take what the sources hold now, upload it all, exit (cron).")
    ] = False,
) -> None:
    """Watch the sources and upload Parquet batches to R2 (SIGTERM/SIGINT drains and exits 0)."""
    from ingest import service
    from ingest.local.seaweed import SeaweedError
    from ingest.r2.credentials import CredentialError
    from ingest.spool import SpoolError

    s = settings()
    try:
        result = anyio.run(service.run, s, once, out, once and out.is_terminal)
    except (ConfigError, CredentialError) as exc:
        err.print(f"config error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except SeaweedError as exc:
        err.print(f"local R2: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except (SpoolError, BaseExceptionGroup) as exc:
        spool_error = _first(exc, SpoolError)
        if spool_error is None:
            raise
        err.print(f"error: {spool_error}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    st = result.stats
    out.print(
        f"uploaded {st.records_uploaded:,} records in {st.objects_uploaded} objects "
        f"({st.bytes_uploaded / 1e6:.1f} MB) from {st.units_acked} files",
        markup=False,
        highlight=False,
    )
    keys = st.dead_letter_keys
    if result.dead_letters or keys:
        where = f"s3://{result.bucket}/{keys[0]}" if keys else str(result.dead_letter_dir)
        more = f" (and {len(keys) - 1} more objects)" if len(keys) > 1 else ""
        out.print(
            f"dead letters: {result.dead_letters} records could not be read; source, line and reason "
            f"are in {where}{more}",
            markup=False,
            highlight=False,
        )
    if result.complete:
        return
    if st.failed_objects:
        where = str(st.failed_objects[0].path.parent)
        err.print(
            f"not uploaded: {st.failed_records:,} records in {len(st.failed_objects)} objects, "
            f"kept in {where}",
            markup=False,
            highlight=False,
        )
    if result.pending_units:
        err.print(
            f"not acknowledged: {len(result.pending_units)} source files, kept in "
            f"{Path(result.pending_units[0]).parent}",
            markup=False,
            highlight=False,
        )
    if result.unreadable:
        err.print(
            f"could not read {len(result.unreadable)} inputs; they are kept where they are and tried again "
            "on the next run:",
            markup=False,
            highlight=False,
        )
        for where, why in sorted(result.unreadable.items())[:20]:
            err.print(f"  {where}: {why}", markup=False, highlight=False)
        if len(result.unreadable) > 20:
            err.print(f"  … and {len(result.unreadable) - 20} more", markup=False, highlight=False)
    if once:
        raise typer.Exit(1)


def _first(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` itself or the first `kind` inside it (task groups wrap what their tasks raise)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _first(inner, kind)) is not None:
                return found
    return None


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, one object per worker.")] = False,
) -> None:
    """Spool backlog (objects, bytes, oldest), last successful upload, dead letters today."""
    import json

    from ingest.status import describe, spool_status

    s = settings()
    workers = spool_status(Path(s.spool.dir))
    if as_json:
        print(json.dumps([w.as_json() for w in workers]))
        return
    if not workers:
        out.print(f"no spool at {s.spool.dir}: no worker has run with this configuration here yet")
        return
    for w in workers:
        for line in describe(w):
            out.print(line, markup=False, highlight=False)


@app.command()
def doctor() -> None:
    """Check config, endpoint, token, credentials and bucket behaviour; exit 1 on any ✗."""
    from ingest.doctor import diagnose

    s = settings()
    checks = anyio.run(diagnose, s)
    print_checks(checks)
    if any(c.ok is False for c in checks):
        raise typer.Exit(1)


def print_checks(checks: list[Check]) -> None:
    for c in checks:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "·"}[c.ok]
        out.print(f"{mark} {c.name}: ", end="")
        out.print(c.detail, markup=False, highlight=False)


token_app = typer.Typer(help="Cloudflare API tokens for R2.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    bucket: Annotated[str, typer.Option(help="The only bucket the token may use.")],
    permission: Annotated[str, typer.Option(help="read or write (object level).")] = "write",
    jurisdiction: Annotated[str, typer.Option(help="default, eu, fedramp or us.")] = "default",
    account_owned: Annotated[bool, typer.Option(help="Create an account-owned token.")] = False,
    expires_on: Annotated[str | None, typer.Option(help="Expiry, e.g. 2027-01-01T00:00:00Z.")] = None,
    name: Annotated[str, typer.Option(help="Token name.")] = "",
    env_file: Annotated[
        Path | None, typer.Option(help="Write the keys here (mode 0600) instead of printing them.")
    ] = None,
) -> None:
    """Create a least-privilege R2 token (needs CLOUDFLARE_API_TOKEN able to create tokens)."""
    from ingest.r2.api import cloudflare_client
    from ingest.r2.tokens import create_bucket_token

    s = settings()
    admin = s.r2.admin_api_token.get_secret_value()
    if permission not in ("read", "write") or jurisdiction not in ("default", "eu", "fedramp", "us"):
        err.print("usage error: --permission is read|write; --jurisdiction is default|eu|fedramp|us")
        raise typer.Exit(2)
    if not admin or not s.r2.account_id:
        err.print("config error: CLOUDFLARE_API_TOKEN and r2.account_id (R2_ACCOUNT_ID) are required")
        raise typer.Exit(2)

    async def create() -> tuple[str, str, str]:
        async with cloudflare_client(admin, s.r2.api_base_url) as cf:
            tok = await create_bucket_token(
                cf,
                s.r2.account_id,
                bucket,
                cast(Literal["read", "write"], permission),
                jurisdiction,
                account_owned,
                name,
                expires_on,
            )
        return tok.access_key_id, tok.secret_access_key, tok.value

    key_id, secret, value = anyio.run(create)
    lines = {
        "R2_ACCOUNT_ID": s.r2.account_id,
        "R2_BUCKET_NAME": bucket,
        "R2_ACCESS_KEY_ID": key_id,
        "R2_SECRET_ACCESS_KEY": secret,
        "R2_API_TOKEN": value,
    }
    if env_file is not None:
        write_env_file(env_file, lines)
        out.print(f"token {key_id} created; keys written to {env_file}")
        return
    out.print("Shown once — store them now:")
    for k, v in lines.items():
        out.print(f"{k}={v}", markup=False, highlight=False)


# Defined in their own module; imported last because they use the helpers above.
from ingest.cli_browser import cors_app, presign_command  # noqa: E402

app.add_typer(cors_app, name="cors")
app.command("presign")(presign_command)
