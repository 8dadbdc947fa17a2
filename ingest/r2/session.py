"""The aiobotocore side of the S3 client: a session whose credentials follow the provider.

Imported only when a client is built: aiohttp, aiobotocore and S3's service model cost about
0.3 s, which `ingest run` spends in a thread while its first files are already being read.

The aiobotocore signer asks the session's credentials for a frozen copy on every request, so a
credentials object that reads `provider.current()` makes every refresh visible immediately, without
recreating clients or refreshing on the request path.
"""

from __future__ import annotations

from typing import Any

from aiobotocore.credentials import AioCredentials
from aiobotocore.session import AioSession
from botocore.credentials import ReadOnlyCredentials
from botocore.handlers import convert_body_to_file_like_object

from ingest.r2.credentials import CredentialProvider


class _LiveCredentials(AioCredentials):  # type: ignore[misc]
    def __init__(self, provider: CredentialProvider) -> None:
        super().__init__("placeholder", "placeholder")
        self._provider = provider

    async def get_frozen_credentials(self) -> ReadOnlyCredentials:
        c = self._provider.current()
        token = c.session_token.get_secret_value() if c.session_token else None
        return ReadOnlyCredentials(c.access_key_id, c.secret_access_key.get_secret_value(), token, None)


class _Resolver:
    def __init__(self, creds: AioCredentials) -> None:
        self._creds = creds

    async def load_credentials(self) -> AioCredentials:
        return self._creds


def s3_session(provider: CredentialProvider) -> AioSession:
    """A session for `provider`'s credentials, with S3's service model already loaded (its files
    are read here, not when the client is made on the event loop). aiobotocore's own session, not
    aioboto3's wrapper: that imports boto3 and its S3 transfer helpers, 80 ms of every run's CPU
    (measured), for methods the client never calls."""
    session = AioSession()
    session.register_component("credential_provider", _Resolver(_LiveCredentials(provider)))
    loader = session.get_component("data_loader")
    loader.load_service_model("s3", "service-2")
    loader.load_service_model("s3", "endpoint-rule-set-1")
    # The files the client's build reads next, cached by the loader: the endpoints (the endpoint
    # resolver's), the partitions (the rule set's) and the SDK's defaults (the client's config).
    loader.load_data_with_path("endpoints")
    for name in ("partitions", "sdk-default-configuration"):
        loader.load_data(name)
    return session


def keep_bodies_as_bytes(s3: Any) -> None:
    """botocore wraps a bytes body in BytesIO, which aiohttp then sends 64 KiB per loop turn: with
    parsing threads holding the GIL, each turn waits, and a 27 MB PUT took seconds (measured). Kept
    as bytes, it is hashed in one call; the uploader's objects go as `ingest.r2.body.Body`, sent a
    1 MiB slice per turn without copies of the whole."""
    for operation in ("PutObject", "UploadPart"):
        s3.meta.events.unregister(f"before-parameter-build.s3.{operation}", convert_body_to_file_like_object)
