"""The gallery: soft delete and restore of job outputs (and of whole conversations) with S3 versioning.

With versioning on, deleting a key only adds a delete marker; the data stays as a
non-current version. Each function below is a few plain S3 calls an app can make itself:

- soft delete: ``DeleteObject(key)`` for each output (adds delete markers)
- list deleted: ``ListObjectVersions(prefix=outputs/)``, keys whose latest entry is a delete marker
- restore: ``DeleteObject(key, VersionId=<the delete marker's id>)``
- permanent delete: ``DeleteObject(key, VersionId=v)`` for every version and marker
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bucketbrush.errors import InvalidState, JobNotFound
from bucketbrush.management import get_job
from bucketbrush.store import Bucket


def enable_versioning(bucket: Bucket) -> None:
    bucket.s3.put_bucket_versioning(Bucket=bucket.name, VersioningConfiguration={"Status": "Enabled"})


def versioning_enabled(bucket: Bucket) -> bool:
    return bucket.s3.get_bucket_versioning(Bucket=bucket.name).get("Status") == "Enabled"


def _versions(bucket: Bucket, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Key -> its versions and delete markers, newest first."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    paginator = bucket.s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket.name, Prefix=prefix):
        for v in page.get("Versions", []):
            by_key[v["Key"]].append({**v, "marker": False})
        for m in page.get("DeleteMarkers", []):
            by_key[m["Key"]].append({**m, "marker": True})
    for entries in by_key.values():
        entries.sort(key=lambda e: (e["IsLatest"], e["LastModified"]), reverse=True)
    return by_key


def _require_versioning(bucket: Bucket) -> None:
    if not versioning_enabled(bucket):
        raise InvalidState("bucket versioning is off: `bucketbrush gallery enable` turns it on "
                           "(soft delete needs it)")


def soft_delete(bucket: Bucket, job_id: str) -> list[str]:
    """Hide a job's outputs and manifest behind delete markers (restorable)."""
    _require_versioning(bucket)
    manifest = get_job(bucket, job_id)
    if not manifest.is_final:
        raise InvalidState(f"job {job_id} is {manifest.status}: cancel it first")
    # The job's own input goes too: the reconciling sweep would otherwise see an input without
    # a manifest and run the job again.
    keys = [manifest.inputs[0].key] if manifest.inputs else []
    keys += [o.key for o in manifest.outputs] + [bucket.manifest_key(job_id)]
    for key in keys:
        bucket.s3.delete_object(Bucket=bucket.name, Key=key)
    return keys


def list_deleted(bucket: Bucket) -> list[str]:
    """Job ids whose manifest is soft-deleted (latest entry is a delete marker)."""
    return _deleted(bucket, bucket.layout.manifests, bucket.layout.job_id_of_manifest)


def _deleted(bucket: Bucket, prefix: str, name_of: Callable[[str], str | None]) -> list[str]:
    """``name_of(key)`` of each key under ``prefix`` whose latest entry is a delete marker."""
    _require_versioning(bucket)
    return sorted(
        name
        for key, entries in _versions(bucket, prefix).items()
        if entries and entries[0]["marker"] and (name := name_of(key))
    )


def restore(bucket: Bucket, job_id: str) -> list[str]:
    """Remove the delete markers that hide a job's manifest, then its outputs and input."""
    _require_versioning(bucket)
    restored = _unhide(bucket, bucket.manifest_key(job_id))
    if not restored:
        raise JobNotFound(f"job {job_id} is not in the deleted list")
    manifest = get_job(bucket, job_id)
    restored += _unhide(bucket, bucket.output_key(job_id, ""))
    if manifest.inputs:
        restored += _unhide(bucket, manifest.inputs[0].key, exact=True)
    return restored


def _unhide(bucket: Bucket, prefix: str, *, exact: bool = False) -> list[str]:
    unhidden = []
    for key, entries in _versions(bucket, prefix).items():
        if (not exact or key == prefix) and entries and entries[0]["marker"]:
            bucket.s3.delete_object(Bucket=bucket.name, Key=key, VersionId=entries[0]["VersionId"])
            unhidden.append(key)
    return unhidden


def purge(bucket: Bucket, job_id: str) -> int:
    """Permanently delete every version of a job's outputs and manifest."""
    count = 0
    for prefix in (bucket.output_key(job_id, ""), bucket.manifest_key(job_id)):
        for key, entries in _versions(bucket, prefix).items():
            for entry in entries:
                bucket.s3.delete_object(Bucket=bucket.name, Key=key, VersionId=entry["VersionId"])
                count += 1
    if not count:
        raise JobNotFound(f"no job {job_id!r}")
    return count


# -- conversations ----------------------------------------------------------------------------

def soft_delete_conversation(bucket: Bucket, conversation: str) -> list[str]:
    """Hide a conversation: every turn's job (``soft_delete``: its turn file or upload, outputs
    and manifest), then the conversation's manifest. Restorable with ``restore_conversation``."""
    from bucketbrush.conversations import turn_jobs

    _require_versioning(bucket)
    manifests = turn_jobs(bucket, conversation)
    keys = [key for m in manifests for key in soft_delete(bucket, m.job_id)]
    key = bucket.layout.conversation_manifest_key(conversation)
    bucket.s3.delete_object(Bucket=bucket.name, Key=key)
    return keys + [key]


def deleted_conversations(bucket: Bucket) -> list[str]:
    """Conversation ids whose manifest is soft-deleted."""
    return _deleted(bucket, bucket.layout.conversation_manifests, bucket.layout.conversation_of_manifest)


def restore_conversation(bucket: Bucket, conversation: str) -> list[str]:
    """Bring a soft-deleted conversation back: its manifest, then every turn's job."""
    from bucketbrush.conversations import Conversations

    _require_versioning(bucket)
    restored = _unhide(bucket, bucket.layout.conversation_manifest_key(conversation), exact=True)
    if not restored:
        raise JobNotFound(f"conversation {conversation} is not in the deleted list")
    for turn in Conversations(bucket, None).get(conversation).turns:
        if bucket.read_manifest(turn.job_id) is None:
            try:
                restored += restore(bucket, turn.job_id)
            except JobNotFound:  # that turn's job was deleted for good on its own
                continue
    return restored
