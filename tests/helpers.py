"""Plain helpers shared by test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from pathlib import Path

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.manifest import Manifest
from bucketbrush.samples import landscape
from bucketbrush.settings import Settings
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


def drop(bucket: Bucket, key: str, body: bytes, **kwargs: object) -> str:
    """Put an object as a person or script would; return the job id it will produce."""
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=body, **kwargs)
    ref = ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'), version_id=put.get("VersionId"))
    return job_id_for(ref)


def flush_pipeline(bucket: Bucket, timeout: float = 60) -> Manifest:
    """Positive evidence that everything handed to the stack before now has been handled: a
    canary upload goes through the event source and the runner, which both work in order
    (one subscription, one runner thread), so any job enqueued before it has run (and any
    retry of it been scheduled) once the canary's manifest is final."""
    key = f"inbox/filter/canary/{uuid.uuid4().hex}.png"
    job_id = drop(bucket, key, png_bytes(landscape(16, 12)), Metadata={"style": "sepia"})
    manifest = wait_final(bucket, job_id, timeout)
    assert manifest.status == "succeeded", manifest.error
    return manifest


def check_outputs(bucket: Bucket, manifest: Manifest) -> list[Image.Image]:
    """Every output the manifest lists, read back and checked against its recorded size and hash."""
    images = []
    for out in manifest.outputs:
        data = bucket.s3.get_object(Bucket=bucket.name, Key=out.key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == out.sha256
        assert len(data) == out.bytes
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.size == (out.width, out.height)
        images.append(image)
    return images


def delayed_job_ids(settings: Settings) -> set[str]:
    """Job ids of the messages waiting in Dramatiq's delay queue (retries not yet due)."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    raw = client.hvals(f"{settings.broker_namespace}:{settings.queue_name}.DQ.msgs")
    return {json.loads(m)["args"][0]["job_id"] for m in raw}


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric_value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
