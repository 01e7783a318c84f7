"""The app side: upload through a presigned POST, then watch the manifest."""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

from bucketbrush.errors import EmptyInput, InputTooLarge, UploadRejected
from bucketbrush.manifest import Manifest
from bucketbrush.presign import ParamsValidator, PresignedUpload, presign_upload
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket, s3_client


def post_upload(upload: PresignedUpload, data: bytes, filename: str, content_type: str) -> None:
    """POST ``data`` with the presigned form fields, as a browser would."""
    fields: dict[str, Any] = dict(upload.fields)
    fields["file"] = (filename, data, content_type)
    response = urllib3.request("POST", upload.url, fields=fields, timeout=60, retries=False)
    if response.status >= 300:
        raise UploadRejected(f"the store refused the upload ({response.status}): {response.data[:300]!r}")


def wait_for_manifest(bucket: Bucket, job_id: str, *, timeout: float = 600, interval: float = 0.2,
                      on_update: Callable[[Manifest], None] | None = None) -> Manifest:
    """Poll ``manifests/<job_id>.json`` until its status is final."""
    deadline = time.monotonic() + timeout
    seen: tuple[str, float] | None = None
    while True:
        manifest = bucket.read_manifest(job_id)
        if manifest is not None:
            state = (manifest.status, manifest.progress.fraction)
            if on_update and state != seen:
                on_update(manifest)
            seen = state
            if manifest.is_final:
                return manifest
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {timeout:.0f}s")
        time.sleep(interval)


def submit_file(settings: Settings, path: Path, recipe: str, params: dict[str, Any], *,
                wait: bool = True, timeout: float = 600,
                on_update: Callable[[Manifest], None] | None = None,
                validate: ParamsValidator | None = None) -> tuple[PresignedUpload, Manifest | None]:
    """Upload ``path`` as a job: checks the file, then (with ``validate``) the recipe and
    params, before anything is uploaded; then waits for the final manifest unless ``wait`` is off."""
    size = path.stat().st_size  # FileNotFoundError before anything is presigned
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory", str(path))
    if size == 0:
        raise EmptyInput(f"{path} is empty (0 bytes)")
    if size > settings.max_upload_bytes:
        raise InputTooLarge(f"{path} is {size} bytes; uploads are limited to {settings.max_upload_bytes}")
    content_type = mimetypes.guess_type(path.name)[0] or "image/png"
    upload = presign_upload(s3_client(settings, public=True), settings, recipe=recipe,
                            filename=path.name, content_type=content_type, params=params, validate=validate)
    post_upload(upload, path.read_bytes(), path.name, content_type)
    if not wait:
        return upload, None
    return upload, wait_for_manifest(Bucket(settings), upload.job_id, timeout=timeout, on_update=on_update)
