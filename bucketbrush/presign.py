"""Presigned POST uploads into ``inbox/<recipe>/<job_id>/<file>`` for apps and browsers.

The store enforces the policy: the exact key, a size range, the content type (``image/*``;
``video/*`` or ``image/gif`` for the ``video`` recipe) and the job params. The job id is in
the key, so the app knows which manifest to watch, and the reply carries a presigned GET for
that manifest (``manifest_url``): manifests are private, so an app without credentials reads
its job through it. ``presign_manifest`` renews the link.

Recipe and params are checked before anything is signed, by a ``ParamsValidator`` the
composition root injects (``bucketbrush/cli.py`` passes the runner's own
``gpu_runner.recipes.validate_params``): one validation, the same codes (``unknown_recipe``,
``invalid_params``) a failed manifest would carry, and the core never imports the runner.
"""

from __future__ import annotations

import json
import mimetypes
import re
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from bucketbrush.errors import InvalidParams, InvalidWebhook
from bucketbrush.jobs import RECIPE_NAME, WebhookTarget, is_job_id, is_spec_job_id, new_ticket
from bucketbrush.layout import CHAT_FOLDER, Layout
from bucketbrush.settings import Settings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# Checks a recipe name and its params; raises UnknownRecipe or InvalidParams. Injected by the
# composition root (the runner's validator), so presign and the runner share one validation.
ParamsValidator = Callable[[str, dict[str, Any]], object]


# Recipes whose input is a video: the only ones whose uploads may be ``video/*`` (a GIF is
# ``image/gif``, which they take too). Every other recipe takes ``image/*`` only.
VIDEO_RECIPES = frozenset({"video"})


def accepted_types(recipe: str) -> str:
    """What ``recipe``'s uploads may be, as an HTML ``accept`` attribute (the studio page's file
    chooser): the same families ``content_type_prefix`` lets through."""
    return "video/*,image/gif" if recipe in VIDEO_RECIPES else "image/*"


def content_type_prefix(recipe: str, content_type: str) -> str:
    """The ``starts-with`` prefix the policy binds ``content_type`` to, or InvalidParams."""
    if recipe in VIDEO_RECIPES:
        if content_type.startswith("video/"):
            return "video/"
        if content_type == "image/gif":
            return "image/gif"
        raise InvalidParams(f"the {recipe} recipe takes video/* or image/gif uploads, not {content_type!r}")
    if content_type.startswith("image/"):
        return "image/"
    raise InvalidParams(f"content type must be image/*, not {content_type!r}")


class PresignedUpload(BaseModel):
    url: str
    fields: dict[str, str]
    key: str
    job_id: str
    manifest_key: str
    # A presigned GET for manifest_key (answered with Cache-Control: no-store, so a browser without
    # credentials can poll status and progress), valid as long as the upload's POST (expires_at);
    # renew it with ``bucketbrush presign-get JOB`` or ``GET /manifest-url?job_id=JOB``.
    manifest_url: str
    max_bytes: int
    expires_at: float


class ManifestLink(BaseModel):
    """A fresh presigned GET for a job's manifest (and, once it succeeded, for its outputs)."""

    job_id: str
    manifest_key: str
    manifest_url: str
    expires_at: float
    # Output key -> presigned GET, when the caller looked at the manifest (may be empty).
    outputs: dict[str, str] = {}


def presign_get(s3: Any, settings: Settings, key: str, expires_s: int | None = None, *,
                no_store: bool = False) -> str:
    """A presigned GET for ``key``; ``s3`` should use the endpoint apps can reach. ``no_store``:
    the store answers with ``Cache-Control: no-store`` (for documents that change, manifests)."""
    params = {"Bucket": settings.bucket, "Key": key}
    if no_store:
        params["ResponseCacheControl"] = "no-store"
    return s3.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s or settings.presign_expires_s)


def presign_manifest(s3: Any, settings: Settings, job_id: str, expires_s: int | None = None, *,
                     layout: Layout | None = None) -> ManifestLink:
    """A presigned GET for ``manifests/<job_id>.json`` (the job need not exist yet), in ``layout``
    (default: ``settings.tenant``'s)."""
    if not is_job_id(job_id):
        raise InvalidParams(f"invalid job id {job_id!r}")
    expires_s = expires_s or settings.presign_expires_s
    key = (layout or Layout(settings)).manifest_key(job_id)
    return ManifestLink(job_id=job_id, manifest_key=key, expires_at=time.time() + expires_s,
                        manifest_url=presign_get(s3, settings, key, expires_s, no_store=True))


def check_chat_params(conversation: str | None, params: dict[str, Any] | None) -> None:
    """A chat upload's conversation id and params (a ``message`` string, nothing else)."""
    if not isinstance(conversation, str) or not is_spec_job_id(conversation):
        raise InvalidParams(f"a {CHAT_FOLDER} upload needs a conversation id: letters, digits, '_' and '-', up to 64")
    extra = sorted(set(params or {}) - {"message"})
    if extra or not isinstance((params or {}).get("message", ""), str):
        raise InvalidParams(f"a {CHAT_FOLDER} upload's only param is the message (a string); not {extra}")


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
    validate: ParamsValidator | None = None,
    webhook: str | None = None,
    webhook_events: list[str] | None = None,
    conversation: str | None = None,
) -> PresignedUpload:
    """A presigned POST for one upload; ``s3`` should use the endpoint apps can reach.
    ``validate`` (recipe, params) refuses an unknown recipe or bad params before signing.

    ``recipe="chat"`` with a ``conversation`` id: a chat turn's picture, into
    ``inbox/chat/<conversation>/<job_id>/<file>``, its only param the ``message`` (signed like
    any params; see docs/conversations.md)."""
    if not RECIPE_NAME.match(recipe):
        raise InvalidParams(f"invalid recipe name {recipe!r}: lowercase letters, digits, '_' and '-'")
    if recipe == CHAT_FOLDER:
        check_chat_params(conversation, params)
    elif conversation is not None:
        raise InvalidParams(f"a conversation goes with the {CHAT_FOLDER} recipe, not {recipe!r}")
    elif validate is not None:
        validate(recipe, dict(params or {}))
    max_bytes = min(max_bytes or settings.max_upload_bytes, settings.max_upload_bytes)
    expires_s = expires_s or settings.presign_expires_s
    content_type = content_type or mimetypes.guess_type(filename)[0] or "image/png"
    prefix = content_type_prefix(recipe, content_type)
    job_id = new_ticket()
    layout = Layout(settings)
    key = (layout.chat_upload_key(conversation, job_id, safe_filename(filename)) if conversation
           else layout.upload_key(recipe, job_id, safe_filename(filename)))
    fields = {"Content-Type": content_type}
    conditions: list[Any] = [
        ["content-length-range", 1, max_bytes],
        ["starts-with", "$Content-Type", prefix],
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
    return PresignedUpload(
        url=post["url"],
        fields=post["fields"],
        key=key,
        job_id=job_id,
        manifest_key=layout.manifest_key(job_id),
        manifest_url=presign_get(s3, settings, layout.manifest_key(job_id), expires_s, no_store=True),
        max_bytes=max_bytes,
        expires_at=time.time() + expires_s,
    )
