"""The bucket as bucketbrush uses it: manifests, outputs and inputs under configured prefixes."""

from __future__ import annotations

import json
import time
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from bucketbrush.manifest import Manifest
from bucketbrush.settings import Settings

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})


def s3_client(settings: Settings, *, public: bool = False, probe: bool = False) -> Any:
    """A boto3 S3 client for the configured store (path-style by default, SigV4). ``probe``:
    short timeouts and no retries, for "does it answer yet?" checks."""
    config = Config(
        s3={"addressing_style": settings.s3_addressing_style},
        signature_version="s3v4",
        retries={"mode": "standard", "max_attempts": 1 if probe else 3},
        connect_timeout=2 if probe else 5,
        read_timeout=2 if probe else 60,
    )
    return boto3.client("s3", config=config, **settings.s3_client_kwargs(public=public))


def is_not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in NOT_FOUND_CODES


class Bucket:
    """Typed access to the bucket's manifests and outputs."""

    def __init__(self, settings: Settings, s3: Any | None = None) -> None:
        self.settings = settings
        self.name = settings.bucket
        self._s3 = s3

    @cached_property
    def s3(self) -> Any:
        return self._s3 or s3_client(self.settings)

    @cached_property
    def public_s3(self) -> Any:
        """A client that signs URLs for the endpoint apps reach (may differ from ours)."""
        if self.settings.s3_public_endpoint_url:
            return s3_client(self.settings, public=True)
        return self.s3

    def manifest_key(self, job_id: str) -> str:
        return f"{self.settings.manifests_prefix}{job_id}.json"

    def output_key(self, job_id: str, name: str) -> str:
        return f"{self.settings.outputs_prefix}{job_id}/{name}"

    def cancel_key(self, job_id: str) -> str:
        return f"{self.settings.cancel_prefix}{job_id}"

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.name, Key=key)
            return True
        except ClientError as exc:
            if is_not_found(exc):
                return False
            raise

    def read_manifest(self, job_id: str) -> Manifest | None:
        """The stored manifest, or None when there is none or it is not a manifest."""
        try:
            body = self.s3.get_object(Bucket=self.name, Key=self.manifest_key(job_id))["Body"].read()
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise
        try:
            return Manifest.model_validate(json.loads(body))
        except ValueError:
            return None

    def write_manifest(self, manifest: Manifest) -> None:
        manifest.updated_at = time.time()
        self.s3.put_object(
            Bucket=self.name,
            Key=self.manifest_key(manifest.job_id),
            Body=manifest.model_dump_json(indent=2).encode(),
            ContentType="application/json",
            CacheControl="no-cache",
        )

    def presigned_get(self, key: str, expires_s: int | None = None) -> str:
        return self.public_s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.name, "Key": key},
            ExpiresIn=expires_s or self.settings.presign_expires_s,
        )
