"""The local R2: SeaweedFS + the Cloudflare API emulator, bootstrapped with a bucket and two tokens.

`LocalR2` is used by `ingest local` (foreground), by `ingest run` when no R2 is configured, and by the
test suite. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from botocore.exceptions import ClientError
from starlette.routing import Mount
from tenacity import AsyncRetrying, stop_after_attempt, wait_fixed

from ingest.config import Settings, write_env_file
from ingest.local import policy as pol
from ingest.local.catalog import CATALOG_PATH, Catalogs, table_bucket
from ingest.local.emulator import API_PREFIX, Emulator
from ingest.local.identities import IdentityStore
from ingest.local.notifications import Notifications
from ingest.local.queues import Queues
from ingest.local.seaweed import SeaweedError, SeaweedServer, weed_binary
from ingest.local.state import LocalState, TokenRecord, new_token_value, token_secret, utc_iso
from ingest.logs import get_logger, register_secret

log = get_logger("ingest.local")
SUPERVISE_INTERVAL = 0.5
MAX_RESTARTS, RESTART_WINDOW = 3, 300.0
DEFAULT_DIR = Path(".ingest/local")
DEFAULT_BUCKET = "ingest"


READY_KEY = ".ingest-local-ready"  # written, read back and deleted once per start


@dataclass(frozen=True)
class LocalR2Info:
    """What a client needs to use the local R2; `env()` is the env-file content."""

    endpoint_url: str
    api_base_url: str
    account_id: str
    bucket: str
    api_token: str  # bucket-scoped R2 token (object read/write on the default bucket)
    access_key_id: str
    secret_access_key: str
    cloudflare_api_token: str  # may create tokens and manage buckets/CORS
    admin_access_key_id: str
    admin_secret_access_key: str
    catalog_uri: str = ""  # the bucket's R2 Data Catalog (Iceberg REST)
    warehouse: str = ""
    catalog_token: str = ""  # R2 Data Catalog write + object read/write on the bucket

    def env(self) -> dict[str, str]:
        return {
            "R2_ENDPOINT_URL": self.endpoint_url,
            "R2_ACCOUNT_ID": self.account_id,
            "R2_BUCKET_NAME": self.bucket,
            "R2_API_TOKEN": self.api_token,
            "R2_ACCESS_KEY_ID": self.access_key_id,
            "R2_SECRET_ACCESS_KEY": self.secret_access_key,
            "CLOUDFLARE_API_BASE_URL": self.api_base_url,
            "CLOUDFLARE_API_TOKEN": self.cloudflare_api_token,
            "R2_CATALOG_URI": self.catalog_uri,
            "R2_WAREHOUSE": self.warehouse,
            "R2_CATALOG_TOKEN": self.catalog_token,
        }

    def settings(self, mode: str = "keys") -> Settings:
        """Settings that point this tool at the local R2 (used by `ingest local --check`)."""
        auth: dict[str, Any] = {"mode": mode, "api_token": self.api_token}
        if mode == "keys":
            auth |= {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}
        r2 = {
            "account_id": self.account_id,
            "bucket": self.bucket,
            "endpoint_url": self.endpoint_url,
            "api_base_url": self.api_base_url,
            "admin_api_token": self.cloudflare_api_token,
            "auth": auth,
        }
        return Settings.model_validate({"r2": r2})

    def write_env_file(self, path: Path) -> None:
        write_env_file(path, self.env())


def _loopback_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


class LocalR2:
    def __init__(
        self,
        directory: Path = DEFAULT_DIR,
        bucket: str = DEFAULT_BUCKET,
        s3_port: int = 0,
        api_port: int = 0,
        new_ports: bool = False,
    ) -> None:
        self.dir = directory.resolve()
        self.state_path = self.dir / "state.json"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = LocalState.load(self.state_path) or LocalState.new(bucket)
        self.state.save(self.state_path)
        saved = {} if new_ports else dict(self.state.ports)
        self._api_port = api_port or saved.get("api", 0)
        self.seaweed = SeaweedServer(
            self.dir,
            self.state.admin_access_key,
            self.state.admin_secret_key,
            s3_port,
            saved if set(saved) >= {"s3", "master", "volume", "filer", "admin"} else None,
            avoid={self._api_port},
            table_buckets=(table_bucket(self.state.default_bucket),),
        )
        register_secret(self.state.admin_secret_key, self.state.sts_secret_key)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LocalR2Info]:
        """Start everything, yield connection info, stop everything (also on cancellation)."""
        self.seaweed.spawn()  # on this (long-lived) thread; see SeaweedServer.spawn
        await anyio.to_thread.run_sync(self.seaweed.wait_ready)
        store = IdentityStore(
            self.seaweed.s3_url,
            self.seaweed.filer_url,
            self.state.admin_access_key,
            self.state.admin_secret_key,
        )
        try:
            sock = _loopback_socket(self._api_port)
        except OSError as exc:
            await anyio.to_thread.run_sync(self.seaweed.stop)
            raise SeaweedError(
                f"API port {self._api_port} kept for {self.dir} is in use ({exc.strerror}); stop what "
                "holds it, or start with --new-ports"
            ) from None
        self.state.ports = {**self.seaweed.ports.saved(), "api": sock.getsockname()[1]}
        catalogs: Catalogs | None = None
        try:
            emulator = Emulator(self.state, self.state_path, store)
            catalogs = Catalogs(
                emulator,
                self.seaweed.iceberg_url,
                self.seaweed.s3_url,
                (self.state.admin_access_key, self.state.admin_secret_key),
            )
            queues = Queues(emulator)
            notifications = Notifications(
                emulator, queues, weed_binary(), f"127.0.0.1:{self.seaweed.ports.filer}"
            )
            emulator.more_routes = [
                *catalogs.management_routes("/accounts/{account_id}"),
                *queues.routes("/accounts/{account_id}"),
                *notifications.routes("/accounts/{account_id}"),
            ]
            emulator.mounts = [Mount(CATALOG_PATH, routes=catalogs.catalog_routes())]
            await self._bootstrap(store, emulator)
            config = uvicorn.Config(
                emulator.app(), log_level="warning", lifespan="on", access_log=False, log_config=None
            )
            server = uvicorn.Server(config)
            failed: Exception | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [sock])
                supervisor = anyio.CancelScope()
                tg.start_soon(self._supervise, supervisor)
                feeding = anyio.CancelScope()
                tg.start_soon(_within, feeding, notifications.feed)
                while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
                    await anyio.sleep(0.02)
                try:
                    yield self.info(f"http://127.0.0.1:{sock.getsockname()[1]}{API_PREFIX}")
                except Exception as exc:  # the server stops as usual first: no lifespan traceback
                    failed = exc
                supervisor.cancel()
                feeding.cancel()
                server.should_exit = True
            if failed is not None:
                raise failed
        finally:
            sock.close()
            with anyio.CancelScope(shield=True):  # Ctrl-C included: SeaweedFS always stops cleanly
                await store.aclose()
                if catalogs is not None:
                    await catalogs.aclose()
                await anyio.to_thread.run_sync(self.seaweed.stop)

    async def _supervise(self, scope: anyio.CancelScope) -> None:
        """Restart SeaweedFS on the same ports when it dies; give up (raising, so `ingest local`
        exits non-zero saying why) when it dies again and again. Ends when `scope` is cancelled."""
        with scope:
            await self._watch_seaweed()

    async def _watch_seaweed(self) -> None:
        deaths: list[float] = []
        while True:
            await anyio.sleep(SUPERVISE_INTERVAL)
            code = self.seaweed.exited()
            if code is None:
                continue
            now = anyio.current_time()
            deaths = [t for t in deaths if now - t < RESTART_WINDOW] + [now]
            tail = self.seaweed.log_tail()
            if len(deaths) > MAX_RESTARTS:
                raise SeaweedError(
                    f"SeaweedFS exited with {code} {len(deaths)} times in {RESTART_WINDOW:.0f}s; giving up "
                    f"(see {self.dir / 'weed.log'}: {tail})"
                )
            log.error("seaweedfs exited unexpectedly; restarting it on the same ports", code=code, log=tail)
            self.seaweed.spawn()  # on the event loop's thread, which lives as long as the process
            await anyio.to_thread.run_sync(self.seaweed.wait_ready)

    async def _bootstrap(self, store: IdentityStore, emulator: Emulator) -> None:
        st = self.state
        async with store.admin_client() as s3:
            # Volumes may need a moment after the gateway answers: 50 tries, 0.2 s apart.
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(50), wait=wait_fixed(0.2), reraise=True
            ):
                with attempt:
                    try:
                        await s3.create_bucket(Bucket=st.default_bucket)
                    except ClientError as exc:
                        if exc.response["Error"]["Code"] not in (
                            "BucketAlreadyOwnedByYou",
                            "BucketAlreadyExists",
                        ):
                            raise
            # Ready means data is served: after a restart the gateway answers (and the bucket exists)
            # a moment before the volumes serve reads, so a write and a read back must go through.
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(100), wait=wait_fixed(0.2), reraise=True
            ):
                with attempt:
                    await s3.put_object(Bucket=st.default_bucket, Key=READY_KEY, Body=b"ready")
                    answer = await s3.get_object(Bucket=st.default_bucket, Key=READY_KEY)
                    async with answer["Body"] as body:
                        if await body.read() != b"ready":
                            raise SeaweedError("the local R2 read back other bytes than it wrote")
                    await s3.delete_object(Bucket=st.default_bucket, Key=READY_KEY)
        if not st.sts_access_key:
            st.sts_access_key, st.sts_secret_key = await store.ensure_sts_parent()
            register_secret(st.sts_secret_key)
        if not st.root_token:
            st.root_token = new_token_value()
            await emulator.issue_token(
                self._token(
                    "local root token",
                    st.root_token,
                    [
                        (f"{pol.USER_RESOURCE}.*", [pol.TOKENS_WRITE, pol.TOKENS_READ]),
                        (f"{pol.ACCOUNT_RESOURCE}.{st.account_id}", [pol.STORAGE_WRITE, pol.QUEUES_WRITE]),
                    ],
                )
            )
        if not st.default_token:
            st.default_token = new_token_value()
            resource = pol.bucket_resource(st.account_id, st.default_bucket)
            await emulator.issue_token(
                self._token("local bucket token", st.default_token, [(resource, [pol.ITEM_WRITE])])
            )
        if not st.catalog_token:
            st.catalog_token = new_token_value()
            await emulator.issue_token(
                self._token(
                    "local catalog token",
                    st.catalog_token,
                    [
                        (f"{pol.ACCOUNT_RESOURCE}.{st.account_id}", [pol.CATALOG_WRITE]),
                        (pol.bucket_resource(st.account_id, st.default_bucket), [pol.ITEM_WRITE]),
                    ],
                )
            )
        # R2 Data Catalog is enabled per bucket; the local R2 enables it on its bucket at the first start.
        st.catalogs.setdefault(st.default_bucket, {"id": str(uuid.uuid4()), "active": True})
        register_secret(st.root_token, st.default_token, token_secret(st.default_token))
        register_secret(st.catalog_token, token_secret(st.catalog_token))
        await emulator.sweep_expired()
        st.save(self.state_path)

    def _token(self, name: str, value: str, grants: list[tuple[str, list[str]]]) -> TokenRecord:
        ids = {g["name"]: g["id"] for g in pol.PERMISSION_GROUPS}
        policies = [
            {
                "id": os.urandom(16).hex(),
                "effect": "allow",
                "resources": {resource: "*"},
                "permission_groups": [{"id": ids[n], "name": n} for n in names],
            }
            for resource, names in grants
        ]
        return TokenRecord(os.urandom(16).hex(), name, token_secret(value), policies, utc_iso())

    def info(self, api_base_url: str) -> LocalR2Info:
        st = self.state
        default = st.token_by_value(st.default_token)
        assert default is not None
        return LocalR2Info(
            endpoint_url=self.seaweed.s3_url,
            api_base_url=api_base_url,
            account_id=st.account_id,
            bucket=st.default_bucket,
            api_token=st.default_token,
            access_key_id=default.id,
            secret_access_key=token_secret(st.default_token),
            cloudflare_api_token=st.root_token,
            admin_access_key_id=st.admin_access_key,
            admin_secret_access_key=st.admin_secret_key,
            catalog_uri=f"{api_base_url.removesuffix(API_PREFIX)}{CATALOG_PATH}/{st.account_id}/{st.default_bucket}",
            warehouse=f"{st.account_id}_{st.default_bucket}",
            catalog_token=st.catalog_token,
        )


async def _within(scope: anyio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await run()
