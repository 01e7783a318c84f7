"""``bucketbrush studio publish``: the studio page as static files in the bucket.

The page is the same files ``serve-functions`` serves at ``/``, plus a ``config.json`` that
tells it where the functions host is (for ``/presign``, ``/recipes`` and ``/studio/...``).
That host must let the page's origin in: ``BUCKETBRUSH_STUDIO_ORIGINS='["https://..."]'``.
Anonymous reads of the prefix need a bucket policy (``public_read_policy``; ``--public``
applies it) or a CDN / proxy in front of the bucket.
"""

from __future__ import annotations

import json
import mimetypes
from typing import Any

from bucketbrush.settings import Settings
from functions.studio_api import STUDIO_DIR


def studio_files() -> list[str]:
    return sorted(p.name for p in STUDIO_DIR.iterdir() if p.is_file())


def publish_studio(s3: Any, settings: Settings, *, prefix: str = "studio/", api: str) -> list[str]:
    """Upload the page under ``prefix`` with its config; returns the keys written."""
    prefix = prefix.strip("/") + "/"
    keys = []
    for name in studio_files():
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.endswith(".js"):
            content_type = "text/javascript"  # ES modules need a JavaScript MIME type
        s3.put_object(Bucket=settings.bucket, Key=prefix + name, Body=(STUDIO_DIR / name).read_bytes(),
                      ContentType=content_type, CacheControl="no-cache")
        keys.append(prefix + name)
    config = json.dumps({"api": api.rstrip("/")}).encode()
    s3.put_object(Bucket=settings.bucket, Key=prefix + "config.json", Body=config,
                  ContentType="application/json", CacheControl="no-cache")
    return [*keys, prefix + "config.json"]


def public_read_policy(settings: Settings, prefix: str = "studio/") -> dict[str, Any]:
    """A bucket policy that lets anyone read the page's files (and nothing else)."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "bucketbrush-studio-public-read", "Effect": "Allow", "Principal": "*",
        "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{settings.bucket}/{prefix.strip('/')}/*"],
    }]}
