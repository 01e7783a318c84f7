"""Presigned POST uploads into ``inbox/<recipe>/<job_id>/<file>`` for apps and browsers.

The store enforces the policy: the exact key, a size range, an ``image/*`` content type and
the job params. The job id is in the key, so the app knows which manifest to watch.
"""

from __future__ import annotations

import json
import mimetypes
import re
import time
from typing import Any

from pydantic import BaseModel

from bucketbrush.errors import InvalidParams, InvalidWebhook
from bucketbrush.jobs import RECIPE_NAME, WebhookTarget, new_ticket
from bucketbrush.layout import Layout
from bucketbrush.settings import Settings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PresignedUpload(BaseModel):
    url: str
    fields: dict[str, str]
    key: str
    job_id: str
    manifest_key: str
    max_bytes: int
    expires_at: float
    # A presigned GET of the manifest (answered with Cache-Control: no-store), so a browser
    # without credentials can poll the job's status and progress.
    manifest_url: str | None = None


def safe_filename(filename: str) -> str:
    name = _UNSAFE.sub("_", filename.rsplit("/", 1)[-1]).strip("._") or "upload"
    return name[:128]


def presign_upload(
    s3: Any,
    settings: Settings,
    *,
    recipe: str,
    filename: str = "upload.png",
    content_type: str | None = None,
    params: dict[str, Any] | None = None,
    max_bytes: int | None = None,
    expires_s: int | None = None,
    webhook: str | None = None,
    webhook_events: list[str] | None = None,
) -> PresignedUpload:
    """A presigned POST for one upload; ``s3`` should use the endpoint apps can reach."""
    if not RECIPE_NAME.match(recipe):
        raise InvalidParams(f"invalid recipe name {recipe!r}: lowercase letters, digits, '_' and '-'")
    max_bytes = min(max_bytes or settings.max_upload_bytes, settings.max_upload_bytes)
    expires_s = expires_s or settings.presign_expires_s
    content_type = content_type or mimetypes.guess_type(filename)[0] or "image/png"
    if not content_type.startswith("image/"):
        raise InvalidParams(f"content type must be image/*, not {content_type!r}")
    job_id = new_ticket()
    layout = Layout(settings)
    key = layout.upload_key(recipe, job_id, safe_filename(filename))
    fields = {"Content-Type": content_type}
    conditions: list[Any] = [
        ["content-length-range", 1, max_bytes],
        ["starts-with", "$Content-Type", "image/"],
    ]
    if params:
        fields["x-amz-meta-params"] = json.dumps(params, separators=(",", ":"), sort_keys=True)
        conditions.append({"x-amz-meta-params": fields["x-amz-meta-params"]})
    if webhook is not None:
        # Signed into the policy like the params: the app cannot redirect another job's events.
        target = WebhookTarget.parse(webhook, webhook_events, InvalidWebhook)
        fields["x-amz-meta-webhook"] = target.url
        fields["x-amz-meta-webhook-events"] = ",".join(target.events)
        conditions += [{name: fields[name]} for name in ("x-amz-meta-webhook", "x-amz-meta-webhook-events")]
    elif webhook_events:
        raise InvalidWebhook("webhook_events needs a webhook URL")
    post = s3.generate_presigned_post(
        Bucket=settings.bucket, Key=key, Fields=fields, Conditions=conditions, ExpiresIn=expires_s
    )
    manifest_url = s3.generate_presigned_url("get_object", ExpiresIn=expires_s, Params={
        "Bucket": settings.bucket, "Key": layout.manifest_key(job_id), "ResponseCacheControl": "no-store"})
    return PresignedUpload(
        url=post["url"],
        fields=post["fields"],
        key=key,
        job_id=job_id,
        manifest_key=layout.manifest_key(job_id),
        max_bytes=max_bytes,
        expires_at=time.time() + expires_s,
        manifest_url=manifest_url,
    )
