"""The reconciling sweep: find inputs no event announced, and jobs whose runner vanished.

Every event transport seen either duplicates or loses events (a webhook receiver that was
down, an SQS message past its retention, a cursor file restored from a backup). The sweep
lists ``inbox/`` and ``jobs/``, and every input object old enough that its own event should
have arrived (``grace_s``) but whose job has no manifest is fed to the handler as an S3 record,
exactly as an event would be. The handler's Redis claim makes this safe while real events for
the same objects arrive concurrently, and with several sweepers running at once.

Jobs whose runner died are the reaper's (``functions/reaper.py``), jobs whose broker message
was lost (Redis restarted empty) ``functions/requeue.py``'s; ``reconcile`` runs all three, as
``bucketbrush sweep`` and the event source's periodic sweep do, for the default tenant and
then each tenant found under ``tenants/`` (its own ``inbox/``, ``jobs/`` and manifests).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError

from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.layout import NotAnInput, is_tenant
from bucketbrush.settings import Settings
from bucketbrush.status import prune_heartbeats
from bucketbrush.store import Bucket
from functions.events import S3Record
from functions.handler import Handler, Outcome
from functions.reaper import TIMEOUT_MARGIN_S, fail_dead_running
from functions.requeue import marker_key, requeue_lost

log = logging.getLogger(__name__)

SOURCE = "sweep"
# A claim older than this with still no manifest belongs to a handler that died between its
# claim and its manifest write (milliseconds apart): release it so the job can go through.
ABANDONED_CLAIM_S = 60
# Running manifests are found by reading manifests last written in a window (not all of
# them, every sweep): this is how far back past the longest time limit that window reaches.
RUNNING_LOOKBACK_S = 3600


@dataclass
class SweepReport:
    """What one sweep saw and did (counts of input objects, then of running manifests)."""

    listed: int = 0  # objects under inbox/ and jobs/
    young: int = 0  # skipped: younger than the grace period (their event may be in flight)
    too_old: int = 0  # skipped: older than the dedupe horizon (their manifest may have expired)
    not_input: int = 0  # skipped: not inbox/<recipe>/<file> or jobs/<job_id>.json
    has_manifest: int = 0  # the job exists
    enqueued: int = 0  # recovered: no event had made its job
    duplicate: int = 0  # a concurrent event claimed it first
    reclaimed: int = 0  # an abandoned claim was released and the job enqueued (also in enqueued)
    rejected: int = 0  # the handler refused it (bad key, bad spec)
    ignored: int = 0  # the handler ignored it
    timed_out: int = 0  # running manifests past their deadline, now failed
    requeued: int = 0  # queued or dead-runner jobs whose broker message was lost, enqueued again
    pruned: int = 0  # heartbeats of runners / event sources gone for over heartbeat_expire_s, deleted
    released: int = 0  # tenants' quota slots of jobs that ended without their runner saying so
    outcomes: list[Outcome] = field(default_factory=list)  # handler outcomes, one per object fed
    seconds: float = 0.0

    def add(self, other: SweepReport) -> None:
        """Count ``other`` (another tenant's pass) in."""
        for name, value in other.__dict__.items():
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
        self.outcomes += other.outcomes

    def summary(self) -> str:
        counts = {k: v for k, v in self.__dict__.items() if isinstance(v, int) and v}
        return " ".join(f"{k}={v}" for k, v in counts.items()) + f" in {self.seconds:.2f}s"


def sweep(settings: Settings, bucket: Bucket, handler: Handler, *, grace_s: float = 60,
          now: float | None = None, manifests: dict[str, float] | None = None,
          under: str | None = None) -> SweepReport:
    """One pass over inputs; see the module docstring. ``now`` (epoch seconds) is for tests;
    ``manifests`` (job id -> last written) saves a listing when the caller has one; ``under``
    (a key prefix, relative to the tenant's root) sweeps only the inputs whose keys start with
    it, e.g. ``inbox/upscale/`` to re-drive one folder after an incident."""
    started = time.monotonic()
    now = time.time() if now is None else now
    report = SweepReport()
    manifests = manifest_times(bucket) if manifests is None else manifests
    _recover_inputs(settings, bucket, handler, manifests, report, now=now, grace_s=grace_s,
                    prefixes=input_prefixes(bucket, under))
    report.seconds = time.monotonic() - started
    return report


def reconcile(settings: Settings, bucket: Bucket, handler: Handler, *, grace_s: float = 60,
              now: float | None = None, timeout_margin_s: float = TIMEOUT_MARGIN_S,
              running_lookback_s: float | None = RUNNING_LOOKBACK_S, under: str | None = None) -> SweepReport:
    """The whole reconciling pass: recover unannounced inputs, then fail running jobs whose
    runner died (``functions.reaper``), from one listing of the manifests.
    ``running_lookback_s=None`` reads every manifest instead of the recent ones; ``under``
    limits the input recovery to keys under that prefix (see ``sweep``; the reaper and the
    re-queue still look at every job: a job's manifest does not say which folder it came from)."""
    started = time.monotonic()
    now = time.time() if now is None else now
    report = SweepReport()
    views = tenant_views(bucket)  # the store first: when it is down, that is what to say
    redis = handler.claims.redis
    # Whether Redis lost its data since the last full pass: then every tenant's pass is full.
    full = running_lookback_s is None or not redis.exists(marker_key(settings))
    for view in views:
        manifests = manifest_times(view)
        part = sweep(settings, view, handler, grace_s=grace_s, now=now, manifests=manifests, under=under)
        part.timed_out = fail_dead_running(settings, view, manifests, now=now, margin_s=timeout_margin_s,
                                           lookback_s=running_lookback_s)
        # After the reaper: a job it just failed is final and stays so.
        requeued = requeue_lost(settings, view, handler, manifests, now=now, grace_s=grace_s,
                                lookback_s=None if full else running_lookback_s, mark=False)
        part.outcomes += requeued
        part.requeued = sum(o.action == "enqueued" for o in requeued)
        if view.tenant is not None:  # slots of jobs that ended without their runner saying so
            part.released = len(handler.quotas.release_finished(view.tenant, lambda j, v=view: _is_final(v, j)))
        report.add(part)
    if full:
        redis.set(marker_key(settings), str(now))
    report.pruned = len(prune_heartbeats(bucket, now=now))
    report.seconds = time.monotonic() - started
    return report


def run_periodic(settings: Settings, handler: Handler, stop: threading.Event, *, interval_s: float = 300,
                 grace_s: float = 60) -> None:
    """Reconcile every ``interval_s`` until ``stop`` is set (the first after one interval: at
    start the event source replays from its cursor anyway). Errors are logged and the next
    pass tries again. Give it its own Handler (and broker) when other threads have one."""
    while not stop.wait(interval_s):
        try:
            report = reconcile(settings, handler.bucket, handler, grace_s=grace_s)
        except (ClientError, BotoCoreError, RedisError, OSError):
            log.exception("sweep failed; next try in %.0fs", interval_s)
            continue
        level = logging.INFO if report.enqueued or report.timed_out or report.requeued else logging.DEBUG
        log.log(level, "sweep: %s", report.summary())


def _is_final(bucket: Bucket, job_id: str) -> bool:
    manifest = bucket.read_manifest(job_id)
    return manifest is not None and manifest.is_final


def tenant_views(bucket: Bucket) -> list[Bucket]:
    """The default tenant's view of the bucket, then each tenant's that has keys under tenants/."""
    root = bucket.for_tenant(None)
    prefix, names = root.layout.tenants, []
    for page in root.s3.get_paginator("list_objects_v2").paginate(Bucket=root.name, Prefix=prefix, Delimiter="/"):
        names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
    return [root] + [root.for_tenant(name) for name in names if is_tenant(name)]


# -- inputs -------------------------------------------------------------------------------

def input_prefixes(bucket: Bucket, under: str | None = None) -> list[str]:
    """The key prefixes a sweep lists in ``bucket``'s tenant: every input folder, or only what
    of them lies under ``under`` (relative to the tenant's root). ValueError when ``under`` is
    in no input folder (a sweep of it would find nothing: that is a typo, not an empty pass)."""
    folders = list(bucket.layout.input_folders.values())
    if under is None:
        return folders
    root = bucket.layout.space
    full = under if root and under.startswith(root) else root + under.lstrip("/")
    prefixes = [full if full.startswith(f) else f for f in folders if full.startswith(f) or f.startswith(full)]
    if not prefixes:
        raise ValueError(f"{under!r} is in no input folder ({', '.join(f[len(root):] for f in folders)})")
    return prefixes


def _recover_inputs(settings: Settings, bucket: Bucket, handler: Handler, manifests: dict[str, float],
                    report: SweepReport, *, now: float, grace_s: float, prefixes: list[str]) -> None:
    horizon = settings.dedupe_ttl_s
    if settings.manifests_retention_days:
        # Past this the manifest may have expired while the input stayed: not a lost event.
        horizon = min(horizon, settings.manifests_retention_days * 86400)
    versioned = _versioned(bucket)
    pending: list[tuple[ObjectRef, float, str | None]] = []
    for prefix in prefixes:
        for ref, modified in _latest_objects(bucket, prefix, versioned):
            report.listed += 1
            if modified > now - grace_s:
                report.young += 1
                continue
            if modified < now - horizon:
                report.too_old += 1
                continue
            try:
                preferred = bucket.layout.parse_input(ref.key).job_id
            except NotAnInput as exc:
                if not exc.rejected:
                    report.not_input += 1
                    continue
                preferred = None  # the handler rejects it, and says why
            if job_id_for(ref) in manifests:
                report.has_manifest += 1
                continue
            pending.append((ref, modified, preferred))
    # A preferred id (presigned ticket, spec file name) with a manifest is this object's job
    # unless its claim says other content took that id first (a second POST to the same key).
    claims = handler.claims.for_tenant(bucket.tenant)
    holders = claims.holders([p for _, _, p in pending if p and p in manifests])
    for ref, modified, preferred in pending:
        if preferred in manifests and holders.get(preferred) in (None, ref.identity):
            report.has_manifest += 1
            continue
        record = S3Record.created(SOURCE, ref, event_time=datetime.fromtimestamp(modified, tz=UTC).isoformat())
        outcome = handler.handle_record(record)
        if (outcome.action == "duplicate" and outcome.job_id and not outcome.reason
                and _release_abandoned_claim(handler, bucket, outcome.job_id)):
            outcome = handler.handle_record(record)
            report.reclaimed += outcome.action == "enqueued"
        report.outcomes.append(outcome)
        match outcome.action:
            case "enqueued":
                report.enqueued += 1
                log.info("sweep recovered %s: job %s", ref.key, outcome.job_id)
            case "duplicate":
                report.duplicate += 1
            case "rejected":
                report.rejected += 1
            case _:
                report.ignored += 1


def _versioned(bucket: Bucket) -> bool:
    status = bucket.s3.get_bucket_versioning(Bucket=bucket.name).get("Status")
    return status in ("Enabled", "Suspended")


def _latest_objects(bucket: Bucket, prefix: str, versioned: bool) -> Iterator[tuple[ObjectRef, float]]:
    """Each current object under ``prefix`` with the identity its creation event carried:
    ETag, and on versioned buckets the latest version's id (keys whose latest version is a
    delete marker are not listed).

    ETags come from ListObjectsV2 even on versioned buckets: SeaweedFS 4.48's
    ListObjectVersions reports a chunk-derived ``<md5>-<n>`` ETag for objects written before
    versioning was enabled (version ``null``), which would name a different job.
    """
    version_ids: dict[str, str] = {}
    if versioned:
        for page in bucket.s3.get_paginator("list_object_versions").paginate(Bucket=bucket.name, Prefix=prefix):
            for v in page.get("Versions", []):
                if v.get("IsLatest") and v.get("VersionId") not in (None, "", "null"):
                    version_ids[v["Key"]] = v["VersionId"]
    for page in bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield ObjectRef(
                bucket=bucket.name, key=obj["Key"], etag=(obj.get("ETag") or "").strip('"') or None,
                version_id=version_ids.get(obj["Key"]), size=obj.get("Size"),
            ), obj["LastModified"].timestamp()


def manifest_times(bucket: Bucket) -> dict[str, float]:
    """Job id -> when its manifest was last written, from one paginated listing."""
    times = {}
    paginator = bucket.s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket.name, Prefix=bucket.layout.manifests):
        for obj in page.get("Contents", []):
            if job_id := bucket.layout.job_id_of_manifest(obj["Key"]):
                times[job_id] = obj["LastModified"].timestamp()
    return times


def _release_abandoned_claim(handler: Handler, bucket: Bucket, job_id: str) -> bool:
    """Release ``job_id``'s claim (in ``bucket``'s tenant) if it has stood for
    ABANDONED_CLAIM_S with no manifest."""
    claims = handler.claims.for_tenant(bucket.tenant)
    holder, held_s = claims.holder(job_id), claims.held_for_s(job_id)
    if holder is None or held_s is None or held_s < ABANDONED_CLAIM_S:
        return False
    if bucket.exists(bucket.manifest_key(job_id)):
        return False
    log.warning("releasing abandoned claim on job %s (held %ds, no manifest)", job_id, held_s)
    return claims.release_if_held(job_id, holder)
