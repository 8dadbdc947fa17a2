"""Read and write a bucket's CORS policy through S3 (Put/Get/DeleteBucketCors) or the Cloudflare API.

Both transports take and return `CorsRule`s, so the CLI validates once and either path applies the
same policy. The API path sends the `cf-r2-jurisdiction` header: R2 finds a bucket only in its own
jurisdiction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from botocore.exceptions import ClientError

from ingest.r2.client import R2Client
from ingest.r2.cors.rules import CorsRule, to_s3, to_wrangler
from ingest.r2.errors import code_of

if TYPE_CHECKING:  # the SDK is imported by the API path only (`--via api`)
    from cloudflare import AsyncCloudflare

Jurisdiction = Literal["default", "eu", "us", "fedramp", "fedramp-high"]


class BucketCors(Protocol):
    async def get(self) -> list[CorsRule]:
        """The live policy; [] when the bucket has none."""
        ...

    async def put(self, rules: list[CorsRule]) -> None: ...

    async def delete(self) -> None: ...


@dataclass
class S3BucketCors:
    client: R2Client
    bucket: str

    async def get(self) -> list[CorsRule]:
        try:
            out = await self.client.call("get_bucket_cors", Bucket=self.bucket)
        except ClientError as exc:
            if code_of(exc) == "NoSuchCORSConfiguration":
                return []
            raise
        return [CorsRule.from_s3(r) for r in out.get("CORSRules", [])]

    async def put(self, rules: list[CorsRule]) -> None:
        await self.client.call("put_bucket_cors", Bucket=self.bucket, CORSConfiguration=to_s3(rules))

    async def delete(self) -> None:
        await self.client.call("delete_bucket_cors", Bucket=self.bucket)


@dataclass
class ApiBucketCors:
    cf: AsyncCloudflare
    account_id: str
    bucket: str
    jurisdiction: str = "default"

    @property
    def _where(self) -> dict[str, Any]:
        return {"account_id": self.account_id, "cf_r2_jurisdiction": cast(Jurisdiction, self.jurisdiction)}

    async def get(self) -> list[CorsRule]:
        import cloudflare

        try:
            out = await self.cf.r2.buckets.cors.get(self.bucket, **self._where)
        except cloudflare.NotFoundError as exc:
            if "CORS configuration does not exist" in str(exc):
                return []
            raise
        return [CorsRule.from_wrangler(r) for r in out.model_dump(by_alias=True)["rules"] or []]

    async def put(self, rules: list[CorsRule]) -> None:
        body = to_wrangler(rules)["rules"]
        await self.cf.r2.buckets.cors.update(self.bucket, rules=body, **self._where)

    async def delete(self) -> None:
        await self.cf.r2.buckets.cors.delete(self.bucket, **self._where)
