"""Requeue jobs whose broker message was lost (Redis restarted empty, a queue flushed).

A ``queued`` manifest promises that a message for the job waits in the broker; a ``running``
one, that a runner works on it. When Redis loses its data, both promises break: the queued
job's message is gone and nothing would ever enqueue it again (its input has a manifest, so
the input sweep leaves it alone), and the running job's runner, if it died, left a message
that Dramatiq can no longer give back.

So each reconciling pass reads the manifests that are ``queued``, or ``running`` with no live
runner on them, and not written for ``grace_s``, and asks the broker which job messages it
still holds (``bucketbrush.broker.job_ids_in_broker``: waiting, delayed or in flight) and
which jobs a runner is running now (their run locks, ``bucketbrush.runlocks``). A job whose
message is gone and that no runner runs is rebuilt from its source object and enqueued again
(``Handler.requeue``), under a short Redis lock so concurrent sweepers requeue it once. A job
whose message still exists is never touched: it will run from that message.

Which manifests are read: those written within ``lookback_s`` (the reaper's window), and all
of them once after Redis lost its data. A marker key that this pass sets in Redis after a
full pass tells the two apart: when it is missing, Redis was emptied (or this is the first
pass ever), and queued manifests of any age may have lost their message.
"""

from __future__ import annotations

import logging

from bucketbrush.broker import job_ids_in_broker
from bucketbrush.manifest import Manifest
from bucketbrush.runlocks import RunLocks
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from functions.handler import Handler, Outcome
from functions.reaper import jobs_on_live_runners

log = logging.getLogger(__name__)

# How long one sweeper's requeue of a job keeps others from requeuing it too.
REQUEUE_LOCK_S = 300


def marker_key(settings: Settings) -> str:
    """Set after each full pass; its absence means Redis lost its data since."""
    return f"{settings.broker_namespace}:sweep:full-pass"


def requeue_lost(settings: Settings, bucket: Bucket, handler: Handler, manifests: dict[str, float], *,
                 now: float, grace_s: float, lookback_s: float | None, mark: bool = True) -> list[Outcome]:
    """One pass (see the module docstring); the outcome of each requeue.
    ``manifests``: job id -> last written; ``lookback_s`` None: read every manifest.
    ``mark``: record a full pass (False where the caller passes over several tenants and
    records it once, after the last)."""
    redis = handler.claims.redis
    full = lookback_s is None or not redis.exists(marker_key(settings))
    oldest = float("-inf") if full else now - (lookback_s or 0) - grace_s
    stranded: list[Manifest] = []
    busy: set[str] | None = None
    for job_id, modified in manifests.items():
        if modified > now - grace_s or modified < oldest:
            continue
        manifest = bucket.read_manifest(job_id)
        if manifest is None or manifest.status not in ("queued", "running") or not manifest.inputs:
            continue
        if manifest.status == "running":
            if busy is None:
                busy = jobs_on_live_runners(bucket, now)
            if job_id in busy:
                continue
        stranded.append(manifest)
    outcomes = []
    if stranded:
        # Read after the manifests: a message enqueued before a manifest was read is seen.
        held = job_ids_in_broker(redis, settings)
        held |= RunLocks(redis, settings).held([m.job_id for m in stranded])
        for manifest in stranded:
            if manifest.job_id in held:
                continue
            lock = f"{settings.broker_namespace}:requeue:{manifest.job_id}"
            if not redis.set(lock, "1", nx=True, ex=REQUEUE_LOCK_S):
                continue  # another sweeper is requeuing it
            outcomes.append(handler.requeue(manifest.job_id, manifest.inputs[0]))
    if full and mark:
        redis.set(marker_key(settings), str(now))
    return outcomes
