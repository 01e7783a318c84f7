"""The reaper: end jobs stuck in ``running`` because their runner died.

The runner enforces time limits itself (Dramatiq's TimeLimit, ``timed_out``), so a ``running``
manifest past ``started_at`` + the recipe's limit + a margin means the runner died without
writing a final manifest (killed for memory, machine lost). Such a job is marked ``failed``
with ``timed_out``, ``retryable: true`` rather than re-queued: a job that killed its runner
would kill the next one too, so a person or app decides (``bucketbrush jobs retry``). Dramatiq
may still redeliver the dead worker's message; the runner skips it because the manifest is
final for the same input. Jobs that a runner with a fresh heartbeat says it is working on are
left alone (stuck in native code past the limit, but alive).

The failed manifest is written with If-Match on the ETag that was read, so a runner that
finishes meanwhile wins. SeaweedFS 4.48 and AWS S3 check it (412: tested against SeaweedFS in
tests/test_runner_processes.py). Stores that answer NotImplemented get a plain PUT (last
writer wins): there only the margin and the heartbeat check keep the reaper off live jobs.
"""

from __future__ import annotations

import logging
import time

from bucketbrush.errors import TimedOut
from bucketbrush.manifest import ErrorInfo
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket

log = logging.getLogger(__name__)

# After the deadline, how long before a running job is declared dead: covers clock skew
# between runner and reaper and the runner's own time-limit handling.
TIMEOUT_MARGIN_S = 120


def fail_dead_running(settings: Settings, bucket: Bucket, manifests: dict[str, float], *, now: float,
                      margin_s: float = TIMEOUT_MARGIN_S, lookback_s: float | None = None) -> int:
    """Fail the running jobs among ``manifests`` (job id -> last written) whose deadline has
    passed with no live runner on them; the number failed. ``lookback_s``: only manifests
    written within this long before the oldest possible deadline (None: all)."""
    longest = max([settings.job_time_limit_s, *settings.recipe_time_limits_s.values()])
    # A dead job's manifest was last written between its start and its deadline, so at the
    # deadline + margin it is at least margin_s old: younger manifests cannot be overdue.
    oldest = now - (longest + margin_s + lookback_s) if lookback_s is not None else float("-inf")
    failed = 0
    busy: set[str] | None = None
    for job_id, modified in manifests.items():
        if modified > now - margin_s or modified < oldest:
            continue
        manifest, etag = bucket.read_manifest_with_etag(job_id)
        if manifest is None or manifest.status != "running":
            continue
        started = manifest.timings.get("started_at", manifest.updated_at)
        limit = settings.time_limit_s(manifest.recipe)
        if now < started + limit + margin_s:
            continue
        if busy is None:
            busy = jobs_on_live_runners(bucket, now)
        if job_id in busy:
            continue  # stuck past its limit in native code, but its runner is alive
        manifest.status = "failed"
        manifest.outputs = []
        manifest.error = ErrorInfo.of(TimedOut(
            f"no runner finished the job within its time limit of {limit} s "
            f"(+{margin_s:.0f} s margin); its runner stopped without reporting"), retryable=True)
        manifest.timings["finished_at"] = now
        if bucket.write_manifest(manifest, if_match=etag):
            failed += 1
            log.warning("job %s was running past its deadline with no live runner: failed (timed_out)", job_id)
    return failed


def jobs_on_live_runners(bucket: Bucket, now: float | None = None) -> set[str]:
    """Jobs that runners with a fresh heartbeat say they are on."""
    now = time.time() if now is None else now
    return {r.current_job for r in bucket.runner_statuses() if r.current_job and r.is_fresh(now)}
