"""Progress writes and cancel checks for a running job, off the denoising thread.

A step callback must cost nothing next to a step: it only records the progress and reads a
flag. This thread does the S3 calls, at most once per interval: it writes the ``running``
manifest at its first check (a job shorter than one interval never has one), rewrites the
manifest when the progress moved, and looks for ``cancel/<job_id>``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from bucketbrush.manifest import Manifest, Progress
from bucketbrush.store import Bucket

log = logging.getLogger(__name__)


class JobMonitor:
    def __init__(self, bucket: Bucket, manifest: Manifest, *, interval_s: float = 0.5,
                 on_write: Callable[[Manifest], None] | None = None) -> None:
        self.bucket = bucket
        # Told each progress manifest written (the runner sends progress webhooks from it).
        self.on_write = on_write
        self.manifest = manifest
        self.interval_s = interval_s
        self.cancel_requested = threading.Event()
        self._stop = threading.Event()
        self._written: Progress | None = None
        self._thread = threading.Thread(target=self._loop, name=f"monitor-{manifest.job_id}", daemon=True)

    def progress(self, step: int, total: int) -> None:
        """Called from the recipe's thread: record only."""
        self.manifest.progress = Progress(step=step, total=total, fraction=step / total if total else 0.0)

    def cancelled(self) -> bool:
        return self.cancel_requested.is_set()

    def __enter__(self) -> JobMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Stopped before the final manifest is written, so it can never overwrite it.
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        cancel_key = self.bucket.cancel_key(self.manifest.job_id)
        running_written = False
        while not self._stop.wait(self.interval_s):
            try:
                if not self.cancel_requested.is_set() and self.bucket.exists(cancel_key):
                    self.cancel_requested.set()
                progress = self.manifest.progress
                # The last step is left to the final manifest.
                moved = progress != self._written and progress.step < progress.total
                # Still running at the first check: the job earns its running manifest (and
                # index entry) now; a shorter one goes from queued to its final manifest.
                if moved or not running_written:
                    written = self.manifest.model_copy(update={"progress": progress})
                    self.bucket.write_manifest(written)
                    running_written = True
                    if moved:
                        self._written = progress
                        if self.on_write:
                            self.on_write(written)
            except (ClientError, BotoCoreError) as exc:
                log.warning("job %s: progress/cancel check failed: %s", self.manifest.job_id, exc)
