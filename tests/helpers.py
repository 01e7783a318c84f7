"""Plain helpers shared by test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import io
import time
from pathlib import Path

from PIL import Image

from bucketbrush.manifest import Manifest
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket

EVENTS = Path(__file__).parent / "events"


def png_bytes(image: Image.Image | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    (image or landscape(128, 96)).save(buf, fmt)
    return buf.getvalue()


def wait_final(bucket: Bucket, job_id: str, timeout: float = 60) -> Manifest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = bucket.read_manifest(job_id)
        if manifest is not None and manifest.is_final:
            return manifest
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not final after {timeout}s: {bucket.read_manifest(job_id)}")
