"""The reconciling sweep: find inputs no event announced, and jobs whose runner vanished.

Every event transport seen either duplicates or loses events (a webhook receiver that was
down, an SQS message past its retention, a cursor file restored from a backup). The sweep
lists ``inbox/`` and ``jobs/``, and every input object old enough that its own event should
have arrived (``grace_s``) but whose job has no manifest is fed to the handler as an S3 record,
exactly as an event would be. The handler's Redis claim makes this safe while real events for
the same objects arrive concurrently, and with several sweepers running at once.

It also ends jobs stuck in ``running``: the runner enforces time limits itself (Dramatiq's
TimeLimit, ``timed_out``), so a ``running`` manifest past ``started_at`` + the recipe's limit +
a margin means the runner died without writing a final manifest (killed for memory, machine
lost). Such a job is marked ``failed`` with ``timed_out``, ``retryable: true`` rather than
re-queued: a job that killed its runner would kill the next one too, so a person or app
decides (``bucketbrush jobs retry``). Dramatiq may still redeliver the dead worker's message;
the runner skips it because the manifest is final for the same input.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from redis.exceptions import RedisError

from bucketbrush.jobs import ObjectRef, is_spec_job_id, is_ticket, job_id_for
from bucketbrush.manifest import ErrorInfo, Manifest
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from functions.events import S3Record
from functions.handler import Handler, Outcome

log = logging.getLogger(__name__)

SOURCE = "sweep"
# A claim older than this with still no manifest belongs to a handler that died between its
# claim and its manifest write (milliseconds apart): release it so the job can go through.
ABANDONED_CLAIM_S = 60
# After the deadline, how long before a running job is declared dead: covers clock skew
# between runner and sweeper and the runner's own time-limit handling.
TIMEOUT_MARGIN_S = 120
# Running manifests are found by reading manifests last written in a window (not all of
# them, every sweep): this is how far back past the longest time limit that window reaches.
RUNNING_LOOKBACK_S = 3600
_RELEASE_IF_HELD = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


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
    outcomes: list[Outcome] = field(default_factory=list)  # handler outcomes, one per object fed
    seconds: float = 0.0

    def summary(self) -> str:
        counts = {k: v for k, v in self.__dict__.items() if isinstance(v, int) and v}
        return " ".join(f"{k}={v}" for k, v in counts.items()) + f" in {self.seconds:.2f}s"


def sweep(settings: Settings, bucket: Bucket, handler: Handler, *, grace_s: float = 60,
          now: float | None = None, timeout_margin_s: float = TIMEOUT_MARGIN_S,
          running_lookback_s: float | None = RUNNING_LOOKBACK_S) -> SweepReport:
    """One pass over the bucket; see the module docstring. ``now`` (epoch seconds) is for
    tests; ``running_lookback_s=None`` reads every manifest instead of the recent ones."""
    started = time.monotonic()
    now = time.time() if now is None else now
    report = SweepReport()
    manifests = _manifest_times(bucket)
    _recover_inputs(settings, bucket, handler, manifests, report, now=now, grace_s=grace_s)
    report.timed_out = _fail_dead_running(settings, bucket, manifests, now=now, margin_s=timeout_margin_s,
                                          lookback_s=running_lookback_s)
    report.seconds = time.monotonic() - started
    return report


def run_periodic(settings: Settings, handler: Handler, stop: threading.Event, *, interval_s: float = 300,
                 grace_s: float = 60) -> None:
    """Sweep every ``interval_s`` until ``stop`` is set (the first after one interval: at start
    the event source replays from its cursor anyway). Errors are logged and the next sweep
    tries again. Give it its own Handler (and broker) when other threads have one."""
    while not stop.wait(interval_s):
        try:
            report = sweep(settings, handler.bucket, handler, grace_s=grace_s)
        except (ClientError, BotoCoreError, RedisError, OSError):
            log.exception("sweep failed; next try in %.0fs", interval_s)
            continue
        level = logging.INFO if report.enqueued or report.timed_out else logging.DEBUG
        log.log(level, "sweep: %s", report.summary())


# -- inputs -------------------------------------------------------------------------------

def _recover_inputs(settings: Settings, bucket: Bucket, handler: Handler, manifests: dict[str, float],
                    report: SweepReport, *, now: float, grace_s: float) -> None:
    horizon = settings.dedupe_ttl_s
    if settings.manifests_retention_days:
        # Past this the manifest may have expired while the input stayed: not a lost event.
        horizon = min(horizon, settings.manifests_retention_days * 86400)
    versioned = _versioned(bucket)
    pending: list[tuple[ObjectRef, float, str | None]] = []
    for prefix in (settings.inbox_prefix, settings.jobs_prefix):
        for ref, modified in _latest_objects(bucket, prefix, versioned):
            report.listed += 1
            if modified > now - grace_s:
                report.young += 1
                continue
            if modified < now - horizon:
                report.too_old += 1
                continue
            routed, preferred = _preferred_job_id(settings, ref.key)
            if not routed:
                report.not_input += 1
                continue
            if job_id_for(ref) in manifests:
                report.has_manifest += 1
                continue
            pending.append((ref, modified, preferred))
    # A preferred id (presigned ticket, spec file name) with a manifest is this object's job
    # unless its claim says other content took that id first (a second POST to the same key).
    holders = _claim_holders(handler, [p for _, _, p in pending if p and p in manifests])
    for ref, modified, preferred in pending:
        if preferred in manifests and holders.get(preferred) in (None, ref.identity):
            report.has_manifest += 1
            continue
        record = S3Record.created(SOURCE, ref, event_time=datetime.fromtimestamp(modified, tz=UTC).isoformat())
        outcome = handler.handle_record(record)
        if (outcome.action == "duplicate" and outcome.job_id and not outcome.reason
                and _release_abandoned_claim(handler, outcome.job_id)):
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


def _preferred_job_id(settings: Settings, key: str) -> tuple[bool, str | None]:
    """(is this a job input at all, the job id its key names if any), by the handler's rules."""
    if key.startswith(settings.inbox_prefix):
        parts = key[len(settings.inbox_prefix):].split("/")
        if len(parts) < 2 or not parts[-1]:
            return False, None
        return True, parts[1] if len(parts) >= 3 and is_ticket(parts[1]) else None
    name = key[len(settings.jobs_prefix):]
    job_id = name.removesuffix(".json")
    if "/" in name or not name.endswith(".json") or not is_spec_job_id(job_id):
        return False, None
    return True, job_id


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


def _manifest_times(bucket: Bucket) -> dict[str, float]:
    """Job id -> when its manifest was last written, from one paginated listing."""
    prefix = bucket.settings.manifests_prefix
    times = {}
    for page in bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".json"):
                times[obj["Key"][len(prefix):-len(".json")]] = obj["LastModified"].timestamp()
    return times


def _claim_holders(handler: Handler, job_ids: list[str]) -> dict[str, str | None]:
    if not job_ids:
        return {}
    pipe = handler.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.get(handler.claim_key(job_id))
    values = pipe.execute()
    return {j: v.decode() if isinstance(v, bytes) else v for j, v in zip(job_ids, values, strict=True)}


def _release_abandoned_claim(handler: Handler, job_id: str) -> bool:
    """Release ``job_id``'s claim if it has stood for ABANDONED_CLAIM_S with no manifest."""
    key = handler.claim_key(job_id)
    holder, ttl = handler.redis.get(key), handler.redis.ttl(key)
    if holder is None or ttl < 0 or handler.settings.dedupe_ttl_s - ttl < ABANDONED_CLAIM_S:
        return False
    if handler.bucket.exists(handler.bucket.manifest_key(job_id)):
        return False
    log.warning("releasing abandoned claim on job %s (held %ds, no manifest)", job_id,
                handler.settings.dedupe_ttl_s - ttl)
    return bool(handler.redis.eval(_RELEASE_IF_HELD, 1, key, holder))


# -- running jobs whose runner is gone ----------------------------------------------------

def _fail_dead_running(settings: Settings, bucket: Bucket, manifests: dict[str, float], *, now: float,
                       margin_s: float, lookback_s: float | None) -> int:
    longest = max([settings.job_time_limit_s, *settings.recipe_time_limits_s.values()])
    # A dead job's manifest was last written between its start and its deadline, so at the
    # deadline + margin it is at least margin_s old: younger manifests cannot be overdue.
    oldest = now - (longest + margin_s + lookback_s) if lookback_s is not None else float("-inf")
    failed = 0
    busy: set[str] | None = None
    for job_id, modified in manifests.items():
        if modified > now - margin_s or modified < oldest:
            continue
        manifest, etag = _read_with_etag(bucket, job_id)
        if manifest is None or manifest.status != "running":
            continue
        started = manifest.timings.get("started_at", manifest.updated_at)
        limit = settings.time_limit_s(manifest.recipe)
        if now < started + limit + margin_s:
            continue
        if busy is None:
            busy = _jobs_on_live_runners(bucket, now)
        if job_id in busy:
            continue  # stuck past its limit in native code, but its runner is alive
        manifest.status = "failed"
        manifest.outputs = []
        manifest.error = ErrorInfo(
            code="timed_out", retryable=True,
            message=f"no runner finished the job within its time limit of {limit} s "
                    f"(+{margin_s:.0f} s margin); its runner stopped without reporting",
        )
        manifest.timings["finished_at"] = now
        if _write_if_unchanged(bucket, manifest, etag):
            failed += 1
            log.warning("job %s was running past its deadline with no live runner: failed (timed_out)", job_id)
    return failed


def _read_with_etag(bucket: Bucket, job_id: str) -> tuple[Manifest | None, str | None]:
    try:
        obj = bucket.s3.get_object(Bucket=bucket.name, Key=bucket.manifest_key(job_id))
        return Manifest.model_validate(json.loads(obj["Body"].read())), obj.get("ETag")
    except ClientError:
        return None, None  # gone since the listing
    except (ValueError, ValidationError):
        return None, None


def _write_if_unchanged(bucket: Bucket, manifest: Manifest, etag: str | None) -> bool:
    """Write unless the runner wrote meanwhile (If-Match; stores without it: last writer wins)."""
    manifest.updated_at = time.time()
    kwargs: dict[str, Any] = {
        "Bucket": bucket.name, "Key": bucket.manifest_key(manifest.job_id),
        "Body": manifest.model_dump_json(indent=2).encode(),
        "ContentType": "application/json", "CacheControl": "no-cache",
    }
    try:
        bucket.s3.put_object(**kwargs, **({"IfMatch": etag} if etag else {}))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        if code != "NotImplemented":
            raise
        bucket.s3.put_object(**kwargs)
    return True


def _jobs_on_live_runners(bucket: Bucket, now: float) -> set[str]:
    """Jobs that runners with a fresh heartbeat (status/runners/*.json) say they are on."""
    busy = set()
    prefix = f"{bucket.settings.status_prefix}runners/"
    for page in bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix):
        for obj in page.get("Contents", []):
            try:
                doc = json.loads(bucket.s3.get_object(Bucket=bucket.name, Key=obj["Key"])["Body"].read())
            except (ClientError, ValueError):
                continue
            fresh = now - float(doc.get("updated_at") or 0) < 3 * float(doc.get("interval_s") or 10)
            if fresh and doc.get("current_job"):
                busy.add(doc["current_job"])
    return busy
