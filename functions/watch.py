"""``bucketbrush watch``: manifest changes as they happen, for people and scripts.

The same event sources the handler uses, pointed at ``manifests/`` instead: the SeaweedFS
filer subscription on the local stack, an SQS queue subscribed to the manifests topic on AWS
(``bucketbrush infra aws --manifests-queue NAME``). Each event is a key; the manifest is read
at that moment, so a burst of progress writes prints the newest state once per event and
never an older one after a newer one.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bucketbrush.manifest import Manifest
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from functions.events import S3Record

# A new watch replays this much of the filer's log: the subscription starts a little after the
# process does, and the --job check reads the manifest before the first event can arrive.
LOOKBACK_S = 10.0


class ManifestWatch:
    """Filters manifest events and emits manifests; sets ``stop`` when the watched job ends."""

    def __init__(self, bucket: Bucket, emit: Callable[[Manifest], None], stop: threading.Event, *,
                 job: str | None = None, recipe: str | None = None, final: bool = False,
                 since: float | None = None) -> None:
        self.bucket = bucket
        self.emit = emit
        self.stop = stop
        self.job = job
        self.recipe = recipe
        self.final = final
        # Skip manifests last written before this (epoch seconds): the replayed lookback.
        self.since = since
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def handle(self, records: list[S3Record]) -> list[Any]:
        for record in records:
            if record.bucket != self.bucket.name or not record.is_created:
                continue
            job_id = self.bucket.layout.job_id_of_manifest(record.key)
            if job_id and (self.job is None or job_id == self.job):
                self.check(job_id)
        return []

    def check(self, job_id: str) -> None:
        """Read ``job_id``'s manifest and emit it if it is newer than the last one emitted."""
        manifest = self.bucket.read_manifest(job_id)
        if manifest is None or (self.recipe and manifest.recipe != self.recipe):
            return
        if self.since and manifest.updated_at < self.since:
            return
        with self._lock:
            if manifest.updated_at <= self._seen.get(job_id, 0):
                return
            self._seen[job_id] = manifest.updated_at
            if not self.final or manifest.is_final:
                self.emit(manifest)
            if self.job and manifest.is_final:
                self.stop.set()


def human_line(manifest: Manifest) -> str:
    parts = [time.strftime("%H:%M:%S", time.localtime(manifest.updated_at)), manifest.job_id,
             manifest.recipe or "-", manifest.status]
    if manifest.status == "running" and manifest.progress.total:
        parts.append(f"{manifest.progress.step}/{manifest.progress.total}")
    if manifest.error:
        parts.append(f"{manifest.error.code}: {manifest.error.message}")
    if manifest.outputs:
        parts.append(" ".join(out.key for out in manifest.outputs))
    return "  ".join(parts)


def seaweedfs_watch(settings: Settings, watch: ManifestWatch, *, filer: str, state: Path | None = None) -> Any:
    """A filer subscription feeding ``watch`` (its cursor in a throwaway directory)."""
    from functions.sources.seaweedfs import Cursor, FilerSubscription

    where = Path(tempfile.mkdtemp(prefix="bucketbrush-watch-", dir=state)) / "cursor.txt"
    return FilerSubscription(filer=filer, bucket=settings.bucket, cursor=Cursor(where), handle=watch.handle,
                             initial_lookback_s=LOOKBACK_S)


def sqs_watch(settings: Settings, watch: ManifestWatch, *, queue_url: str, endpoint_url: str | None = None) -> Any:
    """An SQS poller feeding ``watch`` from a queue subscribed to the manifests topic."""
    from functions.sources.sqs import SqsPoller, sqs_client

    sqs = sqs_client(settings, endpoint_url or settings.sqs_endpoint_url)
    # Short polls while watching one job, so it exits soon after its end.
    return SqsPoller(sqs, queue_url, watch.handle, wait_time_s=5 if watch.job else settings.sqs_wait_time_s,
                     visibility_timeout_s=30)
