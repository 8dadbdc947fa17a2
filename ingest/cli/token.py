"""`ingest token create`: a least-privilege R2 token through the Cloudflare API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, cast

import anyio
import typer

from ingest.cli.app import err, out, settings

token_app = typer.Typer(help="Cloudflare API tokens for R2.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    bucket: Annotated[str, typer.Option(help="The only bucket the token may use.")],
    permission: Annotated[str, typer.Option(help="read or write (object level).")] = "write",
    jurisdiction: Annotated[str, typer.Option(help="default, eu, fedramp or us.")] = "default",
    account_owned: Annotated[bool, typer.Option(help="Create an account-owned token.")] = False,
    expires_on: Annotated[str | None, typer.Option(help="Expiry, e.g. 2027-01-01T00:00:00Z.")] = None,
    name: Annotated[str, typer.Option(help="Token name.")] = "",
    queues: Annotated[
        bool, typer.Option(help="Also Queues Write: the token serves a queue source (CLOUDFLARE_API_TOKEN).")
    ] = False,
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
                queues,
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
    if queues:
        lines["CLOUDFLARE_API_TOKEN"] = value  # what a queue source pulls with
    if env_file is not None:
        from ingest.config import write_env_file

        write_env_file(env_file, lines)
        out.print(f"token {key_id} created; keys written to {env_file}")
        return
    out.print("Shown once — store them now:")
    for k, v in lines.items():
        out.print(f"{k}={v}", markup=False, highlight=False)
