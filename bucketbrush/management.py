"""Job management on plain S3 objects: list, show, download, delete, retry, cancel.

Everything here is what an app could do itself with S3 calls; the CLI is a convenience.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dramatiq
from botocore.exceptions import ClientError

from bucketbrush.broker import enqueue_job
from bucketbrush.claims import Claims
from bucketbrush.errors import InvalidCursor, InvalidState, JobNotFound
from bucketbrush.jobs import JobSpec, ObjectRef, TurnRef
from bucketbrush.manifest import Manifest, TurnInfo
from bucketbrush.store import Bucket, is_not_found


@dataclass
class Page:
    jobs: list[Manifest]
    next_cursor: str | None


# At most this many index entries are read per page, however selective the filters: a page
# may then come back short, with a cursor to go on.
MAX_SCAN = 10_000


def _encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, prefix: str) -> str:
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = ""
    if not key.startswith(prefix):
        raise InvalidCursor(f"the cursor {cursor!r} did not come from a job listing")
    return key


def list_jobs(bucket: Bucket, *, status: str | None = None, recipe: str | None = None,
              since: float | None = None, limit: int = 50, cursor: str | None = None,
              max_scan: int = MAX_SCAN) -> Page:
    """Up to ``limit`` jobs matching every filter, newest submitted first (``since``: submitted
    at or after this epoch time), from the time-ordered index (``bucketbrush.index``).

    Filters apply before the limit. ``next_cursor`` (None at the end) continues after the last
    job returned: stable while jobs come and go, since a job's position is its submission time.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    index = bucket.index
    start_after = _decode_cursor(cursor, index.prefix) if cursor else None
    jobs: list[Manifest] = []
    scanned = 0
    resume: str | None = None
    for entry in index.entries(start_after):
        if since is not None and entry.submitted_at < since:
            return Page(jobs, None)  # newest first: everything after is older
        if (status and entry.status != status) or (recipe and entry.recipe != recipe):
            scanned += 1
            if scanned >= max_scan:
                return Page(jobs, _encode_cursor(entry.after))
            continue
        if len(jobs) == limit:
            return Page(jobs, _encode_cursor(resume or entry.key))  # there is at least one more candidate
        manifest = bucket.read_manifest(entry.job_id)
        if index.is_current(entry, manifest):
            assert manifest is not None
            jobs.append(manifest)
        resume = entry.after
        scanned += 1
        if scanned >= max_scan and len(jobs) < limit:
            return Page(jobs, _encode_cursor(resume))
    return Page(jobs, None)


def reindex_jobs(bucket: Bucket) -> int:
    """Write the index entry of every manifest (a bucket written before the index existed)."""
    count = 0
    for page in bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=bucket.layout.manifests):
        for obj in page.get("Contents", []):
            job_id = bucket.layout.job_id_of_manifest(obj["Key"])
            if job_id and (manifest := bucket.read_manifest(job_id)) is not None:
                bucket.index.record(manifest)
                count += 1
    return count


def get_job(bucket: Bucket, job_id: str) -> Manifest:
    manifest = bucket.read_manifest(job_id)
    if manifest is None:
        raise JobNotFound(f"no job {job_id!r} (no {bucket.manifest_key(job_id)})")
    return manifest


def download_outputs(bucket: Bucket, job_id: str, dest: Path) -> list[Path]:
    manifest = get_job(bucket, job_id)
    if manifest.status != "succeeded":
        raise InvalidState(f"job {job_id} is {manifest.status}: it has no outputs to download")
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for out in manifest.outputs:
        path = dest / out.key.rsplit("/", 1)[-1]
        bucket.s3.download_file(bucket.name, out.key, str(path))
        paths.append(path)
    return paths


def job_objects(bucket: Bucket, manifest: Manifest) -> list[str]:
    """Every existing key that belongs to the job: its inputs, outputs, cancel marker, and the
    manifest last, so the manifest is the last thing to go if a delete is interrupted."""
    keys = [ref.key for ref in manifest.inputs if bucket.exists(ref.key)]
    paginator = bucket.s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket.name, Prefix=bucket.layout.outputs_of(manifest.job_id)):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    if bucket.exists(bucket.cancel_key(manifest.job_id)):
        keys.append(bucket.cancel_key(manifest.job_id))
    return keys + [bucket.manifest_key(manifest.job_id)]


def delete_job(bucket: Bucket, broker: dramatiq.Broker, job_id: str) -> list[str]:
    """Delete a finished job with all its objects; its input can then be uploaded again.
    Returns the keys that existed and were deleted."""
    manifest = get_job(bucket, job_id)
    if not manifest.is_final:
        raise InvalidState(f"job {job_id} is {manifest.status}: cancel it first")
    keys = job_objects(bucket, manifest)
    # Inputs may be shared with other jobs (jobs/<id>.json specs pointing at one upload):
    # only the job's own source object goes, plus what lives under its id.
    own = [k for k in keys if k not in {ref.key for ref in manifest.inputs[1:]}]
    for i in range(0, len(own), 1000):
        bucket.s3.delete_objects(Bucket=bucket.name, Delete={
            "Objects": [{"Key": k} for k in own[i:i + 1000]], "Quiet": True})
    Claims(broker.client, bucket.settings, bucket.tenant).delete(job_id)
    bucket.index.forget(manifest)
    return own


def retry_job(bucket: Bucket, broker: dramatiq.Broker, job_id: str,
              priority: Literal["interactive", "bulk"] = "interactive") -> Manifest:
    """Run a failed or cancelled job again with the params it resolved to (``priority``: see
    ``bucketbrush.routing``)."""
    manifest = get_job(bucket, job_id)
    if manifest.status not in ("failed", "cancelled"):
        raise InvalidState(f"job {job_id} is {manifest.status}: only failed or cancelled jobs can be retried")
    if not manifest.inputs:
        raise InvalidState(f"job {job_id} records no input to retry from")
    source = _latest_same_content(bucket, manifest.inputs[0])
    settings = bucket.settings
    if source.key.startswith(bucket.layout.inbox):
        input_ref = source
    else:
        input_ref = manifest.inputs[1] if len(manifest.inputs) > 1 else None
    bucket.s3.delete_object(Bucket=bucket.name, Key=bucket.cancel_key(job_id))
    bucket.index.forget(manifest)  # the retried job is indexed anew, as just submitted
    recipe, params, turn, allowed = manifest.recipe, manifest.params, None, None
    if manifest.turn is not None:
        # A chat turn runs again as a turn: refined again, on the picture its number starts from,
        # and for a tenant limited to some recipes, limited as its first run was (the handler's
        # check, from the same tenants file: the runner may pick another recipe this time).
        from bucketbrush.conversations import CHAT_RECIPE
        from bucketbrush.tenants import TenantsFile

        recipe, params, input_ref = CHAT_RECIPE, {}, None
        turn = TurnRef(conversation=manifest.turn.conversation, seq=manifest.turn.seq, name=manifest.turn.name)
        if manifest.tenant is not None:
            allowed = TenantsFile.from_settings(settings).limits(settings, manifest.tenant).recipes or None
    queued = Manifest(job_id=job_id, status="queued", recipe=recipe, params=params,
                      inputs=manifest.inputs, timings={"queued_at": time.time()},
                      attempts=manifest.attempts, tenant=manifest.tenant, replay_of=manifest.replay_of,
                      turn=TurnInfo(**turn.model_dump()) if turn else None)
    bucket.write_manifest(queued)
    enqueue_job(broker, settings, JobSpec(job_id=job_id, recipe=recipe, source=source,
                                          input=input_ref, params=params, priority=priority,
                                          tenant=manifest.tenant, replay_of=manifest.replay_of, turn=turn,
                                          allowed_recipes=allowed))
    return queued


def _latest_same_content(bucket: Bucket, ref: ObjectRef) -> ObjectRef:
    """``ref`` pinned to its key's latest version when that holds the same bytes (ETag): with
    versioning on, a metadata fix (a copy onto itself) is a new version of the same content,
    the same job, and a retry must read it. Other bytes under the key: ``ref`` as it was."""
    if not ref.version_id or not ref.etag:
        return ref
    try:
        head = bucket.s3.head_object(Bucket=ref.bucket, Key=ref.key)
    except ClientError as exc:
        if is_not_found(exc):
            return ref
        raise
    if head.get("ETag", "").strip('"') != ref.etag.strip('"'):
        return ref
    return ref.model_copy(update={"version_id": head.get("VersionId") or ref.version_id})


def cancel_job(bucket: Bucket, job_id: str) -> Manifest:
    """Ask the runner to stop a queued or running job (an object at cancel/<job_id>)."""
    manifest = get_job(bucket, job_id)
    if manifest.is_final:
        raise InvalidState(f"job {job_id} already {manifest.status}")
    bucket.s3.put_object(Bucket=bucket.name, Key=bucket.cancel_key(job_id), Body=b"",
                         Metadata={"requested-at": f"{time.time():.3f}"})
    return manifest
