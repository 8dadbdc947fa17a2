"""`ingest doctor`: check configuration, reachability, credentials and bucket behaviour, one line each."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from botocore.exceptions import ClientError

from ingest.config import ConfigError, ServerConfig, Settings, redis_url_problem, redis_where
from ingest.r2.api import cloudflare_client
from ingest.r2.client import R2AccessDenied, R2Client
from ingest.r2.cors.rules import CorsRule, evaluate
from ingest.r2.credentials import (
    CredentialError,
    TemporaryCredentials,
    infer_mode,
    looks_derived,
    provider_from_settings,
    verify_token,
)
from ingest.r2.endpoint import endpoint_url
from ingest.r2.errors import code_of, is_conflict, message_of

MAX_SKEW = 300.0  # SigV4 rejects requests whose clock is off by more than 5 minutes


@dataclass(frozen=True)
class Check:
    ok: bool | None  # None: information only
    name: str
    detail: str


def explain(exc: Exception, bucket: str) -> str:
    """A person's sentence for the S3 errors a misconfiguration produces."""
    if isinstance(exc, R2AccessDenied):
        return str(exc)
    if not isinstance(exc, ClientError):
        return f"{type(exc).__name__}: {exc}"
    code = code_of(exc)
    return {
        "NoSuchBucket": f"bucket {bucket} does not exist; create it or fix r2.bucket (R2_BUCKET_NAME)",
        "SignatureDoesNotMatch": "R2 rejected the signature: the secret access key does not belong to this "
        "access key id (a token-derived secret is the SHA-256 hex of the token value)",
        "InvalidAccessKeyId": "R2 does not know this access key id; check R2_ACCESS_KEY_ID",
        "AccessDenied": f"access denied on bucket {bucket}: the credentials lack permission there",
    }.get(code, f"{code}: {message_of(exc)}")


async def diagnose(settings: Settings) -> list[Check]:
    return await _r2_checks(settings) + await _source_checks(settings) + await _iceberg_checks(settings)


async def _iceberg_checks(settings: Settings) -> list[Check]:
    """With [iceberg] on: the catalog, the token's rights in the namespace, the tables' types."""
    if not settings.iceberg.enabled:
        return []
    import anyio.to_thread

    from ingest.iceberg.checks import check
    from ingest.pipeline.encode import load_schema

    found = await anyio.to_thread.run_sync(check, settings, load_schema(settings.output.schema_file))
    return [Check(f.ok, "iceberg", f.detail) for f in found]


async def _source_checks(settings: Settings) -> list[Check]:
    """What push and stream sources need besides R2: a token to accept, a Redis to read from."""
    import os

    checks: list[Check] = []
    for i, cfg in enumerate(settings.sources):
        name = f"sources.{i}"
        if cfg.kind == "http":
            tokens = [t for t in (cfg.token, *cfg.tokens) if t.get_secret_value()]
            env = bool(os.environ.get("INGEST_HTTP_TOKEN"))
            count = len(tokens) + int(env)
            checks.append(
                Check(
                    count > 0,
                    name,
                    f"http: POST /v1/records on {settings.server.listen or '(server.listen unset)'}, "
                    + (f"{count} token(s)" if count else "no token: set token or INGEST_HTTP_TOKEN"),
                )
            )
        elif cfg.kind == "redis":
            url = cfg.url.get_secret_value() or os.environ.get("INGEST_REDIS_URL", "")
            if url and (problem := redis_url_problem(url)) is not None:  # (a config file's is checked
                raise ConfigError(f"INGEST_REDIS_URL: {problem}")  # when it is loaded)
            where = redis_where(url)  # never the password
            checks += await _redis_checks(name, url, where, cfg.streams or [cfg.stream], cfg.group)
        elif cfg.kind == "queue" or (cfg.kind == "landing" and cfg.notifications):
            from ingest.sources.queue.checks import check_queue

            found = await check_queue(settings, cfg, cfg.notifications if cfg.kind == "landing" else "")
            checks += [Check(ok, name, detail) for ok, detail in found]
    return checks


async def _redis_checks(name: str, url: str, where: str, streams: list[str], group: str) -> list[Check]:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError, ResponseError

    if not url:
        return [Check(False, name, "redis: no url (set url or INGEST_REDIS_URL)")]
    client = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    checks: list[Check] = []
    try:
        await client.ping()
        for stream in streams:
            try:
                groups = await client.xinfo_groups(stream)
            except ResponseError:
                checks.append(
                    Check(
                        None, name, f"redis at {where}: stream {stream} does not exist yet (created at start)"
                    )
                )
                continue
            found = [g for g in groups if g["name"] in (group, group.encode())]
            if not found:
                detail = f"stream {stream}: group {group} not created yet (created at start)"
            else:
                g = found[0]
                detail = f"stream {stream}, group {group}: {g['pending']} pending, lag {g.get('lag')}"
            checks.append(Check(True, name, f"redis at {where}: {detail}"))
    except (RedisError, OSError) as exc:
        checks.append(Check(False, name, f"redis at {where}: {type(exc).__name__}: {exc}"))
    finally:
        await client.aclose()
    return checks


async def _r2_checks(settings: Settings) -> list[Check]:
    checks = [Check(True, "config", "valid")]
    r2 = settings.r2
    if not r2.configured:
        checks.append(
            Check(False, "r2", "no R2 configured: set R2_ACCOUNT_ID (or R2_ENDPOINT_URL) and credentials")
        )
        return checks
    endpoint = endpoint_url(r2.account_id, r2.jurisdiction, r2.endpoint_url)
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.get(endpoint)
    except httpx.HTTPError as exc:
        checks.append(Check(False, "endpoint", f"cannot reach {endpoint}: {exc or type(exc).__name__}"))
        return checks
    checks.append(Check(True, "endpoint", f"{endpoint} answers (HTTP {response.status_code})"))
    if date := response.headers.get("date"):
        skew = (parsedate_to_datetime(date) - datetime.now(UTC)).total_seconds()
        ok = abs(skew) <= MAX_SKEW
        checks.append(
            Check(ok, "clock", f"{_seconds(skew)} from the server" + ("" if ok else "; fix NTP: SigV4 fails"))
        )

    auth = r2.auth
    try:
        mode = infer_mode(auth)
    except CredentialError as exc:
        checks.append(Check(False, "credentials", str(exc)))
        return checks
    token_value = auth.api_token.get_secret_value()
    if token_value:
        cf = cloudflare_client(token_value, r2.api_base_url)
        try:
            token_id, status = await verify_token(cf, r2.account_id)
            checks.append(Check(status == "active", "token", f"API token {token_id} is {status}"))
        except CredentialError as exc:
            checks.append(Check(False, "token", str(exc)))
        finally:
            await cf.close()
    if mode == "keys":
        secret = auth.secret_access_key.get_secret_value()
        if looks_derived(secret):
            checks.append(Check(True, "secret", "secret access key has the shape of an R2 secret (64 hex)"))
        elif secret == token_value or len(secret) == 40:
            checks.append(
                Check(
                    False,
                    "secret",
                    "R2_SECRET_ACCESS_KEY holds a raw API token value, not a Secret Access Key;"
                    " set it to the token's SHA-256: printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1",
                )
            )
        else:
            checks.append(
                Check(False, "secret", "secret access key is not 64 hex characters as R2 secrets are")
            )

    try:
        provider = await provider_from_settings(r2, settings.output.prefix)
    except CredentialError as exc:
        checks.append(Check(False, "credentials", str(exc)))
        return checks
    async with provider, R2Client(endpoint, provider) as client:
        if isinstance(provider, TemporaryCredentials):
            checks.append(
                Check(True, "temporary", f"minted: {provider.describe_scope()}, ttl {provider.ttl_seconds} s")
            )
        checks += await _bucket_checks(client, r2.bucket, settings)
    return checks


async def _bucket_checks(client: R2Client, bucket: str, settings: Settings) -> list[Check]:
    prefix = settings.output.prefix
    checks: list[Check] = []
    try:
        await client.call("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        checks.append(Check(True, "bucket", f"{bucket} exists and lists under '{prefix}'"))
    except R2AccessDenied as exc:
        # A bucket-scoped token gets AccessDenied for a bucket it does not cover, existing or not.
        why = f"bucket {bucket} does not exist or these credentials may not use it ({exc})"
        return [Check(False, "bucket", why)]
    except Exception as exc:
        return [Check(False, "bucket", explain(exc, bucket))]
    key = f"{prefix}_doctor/{uuid.uuid4().hex}.txt"
    try:
        await client.call("put_object", Bucket=bucket, Key=key, Body=b"r2-ingest doctor probe")
        body = await (await client.call("get_object", Bucket=bucket, Key=key))["Body"].read()
        conditional = await _second_put_refused(client, bucket, key)
        await client.call("delete_object", Bucket=bucket, Key=key)
    except Exception as exc:
        return [*checks, Check(False, "write", explain(exc, bucket))]
    checks.append(Check(body == b"r2-ingest doctor probe", "write", f"write, read and delete of {key}"))
    checks.append(conditional)
    return checks + await _cors_checks(client, bucket, settings.server)


async def _second_put_refused(client: R2Client, bucket: str, key: str) -> Check:
    try:
        await client.call("put_object", Bucket=bucket, Key=key, Body=b"again", IfNoneMatch="*")
    except ClientError as exc:
        if is_conflict(exc):
            return Check(True, "conditional", "PUT with If-None-Match: * on an existing key is refused (412)")
        return Check(False, "conditional", f"unexpected answer to a conditional PUT: {explain(exc, bucket)}")
    return Check(False, "conditional", "the store overwrote an existing key despite If-None-Match: *")


async def _cors_checks(client: R2Client, bucket: str, server: ServerConfig) -> list[Check]:
    """The policy in one line; with upload grants for browser origins, whether their PUTs get through."""
    try:
        found = (await client.call("get_bucket_cors", Bucket=bucket)).get("CORSRules", [])
    except (ClientError, R2AccessDenied) as exc:
        code = code_of(exc) if isinstance(exc, ClientError) else ""
        if code != "NoSuchCORSConfiguration":
            return [Check(None, "cors", "CORS policy not readable with these credentials")]
        found = []
    rules = [CorsRule.from_s3(r) for r in found]
    origins = sorted({o for r in rules for o in r.origins})
    summary = f"{len(rules)} rule(s) for {', '.join(origins) or 'no origin'}"
    if not rules:
        summary = "no CORS policy: browsers cannot upload to or read from the bucket"
    checks = [Check(None, "cors", summary)]
    if not server.upload_token.get_secret_value():
        return checks
    for origin in server.cors_origins:  # pages that get upload grants must also be let through by R2
        verdict = evaluate(rules, origin, "PUT", ["content-type"])
        if verdict.allowed:
            checks.append(Check(True, "cors", f"uploads from {origin}: {verdict.reason}"))
        else:
            why = verdict.reason.removeprefix("blocked: ")
            checks.append(
                Check(False, "cors", f"uploads from {origin} would be blocked by the browser: {why} "
                      "(grants need PUT with header content-type; example: config/cors.example.json)")
            )  # fmt: skip
    return checks


def _seconds(skew: float) -> str:
    """`+3 s`, `-2 s`, and `0 s` (never `-0 s`) for a skew under half a second."""
    whole = round(skew)
    return f"{whole:+d} s" if whole else "0 s"
