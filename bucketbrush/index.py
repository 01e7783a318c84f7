"""A time-ordered index of jobs, kept in the bucket next to the manifests.

One empty object per job: ``index/jobs/<rev>.<job_id>.<status>.<recipe>``, where ``<rev>`` is
the job's submission time (``timings.queued_at``, milliseconds) subtracted from 10^13, zero
padded: S3 lists keys in byte order, so a listing is newest first, and the status and recipe
filters read the key alone, with no GET. ``Bucket.write_manifest`` keeps it: it writes the
entry for a new status and removes the job's entries for the other statuses (same position,
so a job's order never changes). The runner leaves the ``running`` entry to its monitor, which
writes it when the job is still running at its first check (0.5 s): a shorter job goes from
``queued`` to its final entry, two index writes fewer (a listing in that half second skips it,
as for any job caught between two writes). A retried job moves to the top (a new ``queued_at``).

The manifest stays the truth: a listing reads the manifest of each entry that passes the
filters and skips entries that no longer match it (a job deleted, soft-deleted, retried or
caught between two writes), so a stale entry can cost a GET but never shows a wrong job.
Entries expire with the manifests (a lifecycle rule on the prefix); ``bucketbrush jobs
reindex`` rebuilds the index from the manifests (buckets written before it existed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

from bucketbrush.manifest import Manifest, Status

if TYPE_CHECKING:
    from bucketbrush.store import Bucket

STATUSES: tuple[str, ...] = get_args(Status)
_REV = 10**13 - 1
# Sorts after every "<status>.<recipe>" tail of the same job: a cursor that skips the job whole.
_AFTER_JOB = "~"


@dataclass(frozen=True)
class IndexEntry:
    key: str
    submitted_at: float
    job_id: str
    status: str
    recipe: str

    @property
    def after(self) -> str:
        """A StartAfter key that skips every entry of this job (whatever its status)."""
        return self.key.rsplit(".", 2)[0] + "." + _AFTER_JOB


def submitted_at(manifest: Manifest) -> float:
    """The time a job is indexed under: when it was (last) queued. The same for every writer
    of the job's manifests, since they carry ``timings`` over."""
    t = manifest.timings
    return t.get("queued_at") or t.get("started_at") or t.get("finished_at") or manifest.updated_at


class JobIndex:
    """The index of one bucket."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.prefix = bucket.layout.index + "jobs/"

    def _position(self, manifest: Manifest) -> str:
        rev = _REV - int(submitted_at(manifest) * 1000)
        return f"{self.prefix}{rev:013d}.{manifest.job_id}."

    def key(self, manifest: Manifest) -> str:
        return f"{self._position(manifest)}{manifest.status}.{manifest.recipe}"

    def parse(self, key: str) -> IndexEntry | None:
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix):].split(".")
        if len(parts) != 4 or not parts[0].isdigit() or parts[2] not in STATUSES:
            return None
        rev, job_id, status, recipe = parts
        return IndexEntry(key, (_REV - int(rev)) / 1000, job_id, status, recipe)

    def record(self, manifest: Manifest) -> str:
        """Index ``manifest`` under its status; drop its entries for the other statuses."""
        key = self.key(manifest)
        s3 = self.bucket.s3
        s3.put_object(Bucket=self.bucket.name, Key=key, Body=b"")
        if manifest.status != "queued" or manifest.attempts:  # a first queued entry has no others
            others = [k for k in self._all_keys(manifest) if k != key]
            s3.delete_objects(Bucket=self.bucket.name, Delete={"Objects": [{"Key": k} for k in others], "Quiet": True})
        return key

    def forget(self, manifest: Manifest) -> None:
        """Remove the job's entries at its current position (before a delete or a retry)."""
        self.bucket.s3.delete_objects(Bucket=self.bucket.name, Delete={
            "Objects": [{"Key": k} for k in self._all_keys(manifest)], "Quiet": True})

    def _all_keys(self, manifest: Manifest) -> list[str]:
        return [f"{self._position(manifest)}{status}.{manifest.recipe}" for status in STATUSES]

    def entries(self, start_after: str | None = None) -> Iterator[IndexEntry]:
        """Every entry, newest first, from after ``start_after``."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket.name, "Prefix": self.prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        for page in self.bucket.s3.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                if entry := self.parse(obj["Key"]):
                    yield entry

    def is_current(self, entry: IndexEntry, manifest: Manifest | None) -> bool:
        """Whether ``entry`` still describes ``manifest`` (the stored truth)."""
        return manifest is not None and self.key(manifest) == entry.key
