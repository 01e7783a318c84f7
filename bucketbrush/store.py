"""The bucket as bucketbrush uses it: manifests, outputs and inputs under configured prefixes."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from bucketbrush.index import JobIndex
from bucketbrush.layout import Layout
from bucketbrush.manifest import Manifest, RunnerStatus, SourceStatus
from bucketbrush.presign import ManifestLink, presign_get, presign_manifest
from bucketbrush.settings import Settings

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})
T = TypeVar("T", RunnerStatus, SourceStatus)
# Index entries this process wrote, remembered so progress rewrites cost no index writes.
_INDEXED_MEMORY = 4096


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


_FIRST_KEY = re.compile(rb"<Key>([^<]*)</Key>")


class RequestCounter:
    """Counts the HTTP requests S3 clients send, by (operation, what the key is), through
    botocore's ``before-send`` event: every request sent (retries too, as a bill counts them;
    presigning sends nothing), whoever makes it. ``kind`` names a key: ``manifest``,
    ``output``, ``index``, ``cancel``, ``status``, ``input`` (inbox or job specs), ``other``."""

    def __init__(self, settings: Settings, on_request: Callable[[str, str], None] | None = None) -> None:
        s = settings
        self.bucket = s.bucket
        # Told (operation, kind) of each request as it is sent (the metrics' totals).
        self.on_request = on_request
        self._kinds = [(s.manifests_prefix, "manifest"), (s.outputs_prefix, "output"), (s.index_prefix, "index"),
                       (s.cancel_prefix, "cancel"), (s.status_prefix, "status"), (s.inbox_prefix, "input"),
                       (s.jobs_prefix, "input")]
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def attach(self, s3: Any) -> Any:
        s3.meta.events.register("before-send.s3", self._count)
        return s3

    def kind(self, key: str) -> str:
        return next((kind for prefix, kind in self._kinds if key.startswith(prefix)), "other")

    def _count(self, request: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        key = unquote(urlsplit(request.url).path).lstrip("/")
        key = key.removeprefix(self.bucket + "/")  # path-style addressing
        if operation == "DeleteObjects" and (found := _FIRST_KEY.search(bytes(request.body or b""))):
            key = found.group(1).decode()
        kind = self.kind(key)
        with self._lock:
            self.counts[(operation, kind)] += 1
        if self.on_request:
            self.on_request(operation, kind)

    def total(self, *, exclude: tuple[str, ...] = ()) -> int:
        with self._lock:
            return sum(n for (_, kind), n in self.counts.items() if kind not in exclude)

    def take(self) -> Counter[tuple[str, str]]:
        """The counts so far, and start again from zero."""
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts


def is_not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in NOT_FOUND_CODES


class Bucket:
    """Typed access to the bucket's manifests and outputs."""

    def __init__(self, settings: Settings, s3: Any | None = None, *, layout: Layout | None = None) -> None:
        self.settings = settings
        self.name = settings.bucket
        # settings.tenant's keys (the default tenant's when unset).
        self.layout = layout or Layout(settings)
        self._s3 = s3
        self.index = JobIndex(self)
        self._indexed: OrderedDict[str, str] = OrderedDict()
        self._tenants: dict[str | None, Bucket] = {self.layout.tenant: self}

    @property
    def tenant(self) -> str | None:
        return self.layout.tenant

    def for_tenant(self, tenant: str | None) -> Bucket:
        """The same bucket (and client) as ``tenant`` sees it: its manifests, outputs, index."""
        if tenant not in self._tenants:
            view = Bucket(self.settings, self.s3, layout=self.layout.for_tenant(tenant))
            view.public_s3 = self.public_s3
            view._tenants = self._tenants
            self._tenants[tenant] = view
        return self._tenants[tenant]

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
        return self.layout.manifest_key(job_id)

    def output_key(self, job_id: str, name: str) -> str:
        return self.layout.output_key(job_id, name)

    def cancel_key(self, job_id: str) -> str:
        return self.layout.cancel_key(job_id)

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
        return self.read_manifest_with_etag(job_id)[0]

    def read_manifest_with_etag(self, job_id: str) -> tuple[Manifest | None, str | None]:
        """The stored manifest and its ETag (for ``write_manifest(if_match=...)``); (None, None)
        when there is none or it is not a manifest."""
        try:
            obj = self.s3.get_object(Bucket=self.name, Key=self.manifest_key(job_id))
            body = obj["Body"].read()
        except ClientError as exc:
            if is_not_found(exc):
                return None, None
            raise
        try:
            return Manifest.model_validate(json.loads(body)), obj.get("ETag")
        except ValueError:
            return None, None

    def write_manifest(self, manifest: Manifest, *, if_match: str | None = None, index: bool = True) -> bool:
        """Write the manifest (stamping ``updated_at``). With ``if_match`` (an ETag from
        ``read_manifest_with_etag``) only if nobody wrote it since: False when somebody did.
        Stores that do not implement conditional PUTs answer NotImplemented; there the write
        is unconditional (last writer wins). ``index=False``: leave the job index as it is
        (the caller indexes the status later with ``index_manifest``, or never)."""
        manifest.updated_at = time.time()
        written = self.put_json(self.manifest_key(manifest.job_id), manifest.model_dump_json(indent=2).encode(),
                                if_match=if_match)
        if not written:
            return False
        if index:
            self.index_manifest(manifest)
        return True

    def put_json(self, key: str, body: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> bool:
        """PUT a JSON document (never cached). With ``if_match`` (the ETag it was read with)
        only if nobody wrote it since, with ``if_none_match`` only if it does not exist yet:
        False when somebody wrote it. Stores that do not implement conditional PUTs answer
        NotImplemented; there the write is unconditional."""
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key, "Body": body,
                                  "ContentType": "application/json", "CacheControl": "no-cache"}
        condition = {"IfMatch": if_match} if if_match is not None else {"IfNoneMatch": "*"} if if_none_match else {}
        if not condition:
            self.s3.put_object(**kwargs)
            return True
        try:
            self.s3.put_object(**kwargs, **condition)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            if code != "NotImplemented":
                raise
            self.s3.put_object(**kwargs)
        return True

    def index_manifest(self, manifest: Manifest) -> None:
        """Keep the job index (``bucketbrush.index``) in step: once per status change."""
        key = self.index.key(manifest)
        if self._indexed.get(manifest.job_id) == key:
            return
        self.index.record(manifest)
        self._indexed[manifest.job_id] = key
        self._indexed.move_to_end(manifest.job_id)
        while len(self._indexed) > _INDEXED_MEMORY:
            self._indexed.popitem(last=False)

    def runner_statuses(self) -> list[RunnerStatus]:
        """Every runner's last heartbeat (``status/runners/<runner_id>.json``), unreadable ones skipped."""
        return [m for _, m in self.heartbeats(self.layout.runners, RunnerStatus)]

    def source_statuses(self) -> list[SourceStatus]:
        """Every event source's last heartbeat (``status/sources/<source_id>.json``)."""
        return [m for _, m in self.heartbeats(self.layout.sources, SourceStatus)]

    def heartbeats(self, prefix: str, model: type[T]) -> list[tuple[str, T]]:
        """(key, heartbeat) under ``prefix``; unreadable ones skipped."""
        statuses = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            for obj in page.get("Contents", []):
                try:
                    body = self.s3.get_object(Bucket=self.name, Key=obj["Key"])["Body"].read()
                    statuses.append((obj["Key"], model.model_validate_json(body)))
                except ClientError as exc:
                    if not is_not_found(exc):  # gone since the listing: the process stopped
                        raise
                except ValueError:
                    continue
        return statuses

    def presigned_get(self, key: str, expires_s: int | None = None) -> str:
        return presign_get(self.public_s3, self.settings, key, expires_s)

    def manifest_link(self, job_id: str, expires_s: int | None = None) -> tuple[ManifestLink, Manifest | None]:
        """Fresh presigned GETs for a job's manifest and, once it succeeded, its outputs (how an
        app renews the links its presign reply carried); also the manifest, None before it exists."""
        link = presign_manifest(self.public_s3, self.settings, job_id, expires_s, layout=self.layout)
        manifest = self.read_manifest(job_id)
        if manifest is not None and manifest.status == "succeeded":
            link.outputs = {o.key: self.presigned_get(o.key, expires_s) for o in manifest.outputs}
        return link, manifest
