"""Turn S3 event records into jobs: filter, de-duplicate, write the queued manifest, enqueue.

Every transport (subscription, webhook, SQS, Lambda, sweep) ends here, so the rules live once.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dramatiq

from bucketbrush.broker import enqueue_job
from bucketbrush.jobs import RECIPE_NAME, JobSpec, ObjectRef, is_spec_job_id, is_ticket, job_id_for
from bucketbrush.manifest import ErrorInfo, Manifest
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from functions.events import S3Record

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_SPEC_BYTES = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    """What the handler did with one record."""

    key: str
    action: str  # enqueued | duplicate | ignored | rejected
    job_id: str | None = None
    reason: str = ""


class Handler:
    """Shared by every event source. Safe to call with the same record any number of times."""

    def __init__(self, settings: Settings, bucket: Bucket, broker: dramatiq.Broker) -> None:
        self.settings = settings
        self.bucket = bucket
        self.broker = broker
        self.redis = broker.client  # the RedisBroker's own connection pool

    def handle(self, records: Iterable[S3Record]) -> list[Outcome]:
        return [self.handle_record(r) for r in records]

    def handle_record(self, record: S3Record) -> Outcome:
        key = record.key
        if not record.is_created:
            return Outcome(key, "ignored", reason=f"event {record.event_name}")
        if record.bucket != self.settings.bucket:
            return Outcome(key, "ignored", reason=f"bucket {record.bucket}")
        if problem := unsafe_key(key):
            log.warning("rejected key %r: %s", key, problem)
            return Outcome(key, "rejected", reason=problem)
        s = self.settings
        if key.startswith(s.inbox_prefix):
            return self._upload(record)
        if key.startswith(s.jobs_prefix):
            return self._spec(record)
        return Outcome(key, "ignored", reason="outside inbox/ and jobs/")

    # -- routes ---------------------------------------------------------------------------

    def _upload(self, record: S3Record) -> Outcome:
        parts = record.key[len(self.settings.inbox_prefix):].split("/")
        if len(parts) < 2 or not parts[-1]:
            return Outcome(record.key, "ignored", reason="not inbox/<recipe>/<file>")
        recipe = parts[0]
        if not RECIPE_NAME.match(recipe):
            return Outcome(record.key, "rejected", reason=f"bad recipe folder {recipe!r}")
        ticket = parts[1] if len(parts) >= 3 and is_ticket(parts[1]) else None
        ref = record.ref
        return self._submit(ref, recipe, input_ref=ref, params={}, preferred_id=ticket,
                            recent=self._recent(record))

    def _spec(self, record: S3Record) -> Outcome:
        name = record.key[len(self.settings.jobs_prefix):]
        job_id = name.removesuffix(".json")
        if "/" in name or not name.endswith(".json") or not is_spec_job_id(job_id):
            return Outcome(record.key, "ignored", reason="not jobs/<job_id>.json")
        ref = record.ref
        try:
            recipe, input_ref, params, time_limit_s = self._read_spec(ref)
        except ValueError as exc:
            # Nothing to run: record the failure where the user will look for it.
            if self._claim(job_id, ref) is None:
                return Outcome(record.key, "duplicate", job_id)
            self.bucket.write_manifest(Manifest(
                job_id=job_id, status="failed", recipe="", inputs=[ref],
                error=ErrorInfo(code="invalid_spec", message=str(exc)),
            ))
            return Outcome(record.key, "rejected", job_id, reason=str(exc))
        return self._submit(ref, recipe, input_ref=input_ref, params=params, preferred_id=job_id,
                            time_limit_s=time_limit_s, recent=self._recent(record))

    def _read_spec(self, ref: ObjectRef) -> tuple[str, ObjectRef | None, dict[str, Any], int | None]:
        if ref.size is not None and ref.size > MAX_SPEC_BYTES:
            raise ValueError(f"job spec is {ref.size} bytes; the limit is {MAX_SPEC_BYTES}")
        body = self.bucket.s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read(MAX_SPEC_BYTES + 1)
        if len(body) > MAX_SPEC_BYTES:
            raise ValueError(f"job spec is over {MAX_SPEC_BYTES} bytes")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"job spec is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError("job spec must be a JSON object")
        recipe = doc.get("recipe")
        if not isinstance(recipe, str) or not RECIPE_NAME.match(recipe):
            raise ValueError('job spec needs "recipe": a recipe name')
        params = doc.get("params", {})
        if not isinstance(params, dict):
            raise ValueError('"params" must be a JSON object')
        input_ref = None
        if (input_key := doc.get("input")) is not None:
            if not isinstance(input_key, str) or unsafe_key(input_key):
                raise ValueError('"input" must be a key in the bucket')
            input_ref = ObjectRef(bucket=ref.bucket, key=input_key)
        time_limit_s = doc.get("time_limit_s")
        if time_limit_s is not None and (not isinstance(time_limit_s, int) or time_limit_s < 1):
            raise ValueError('"time_limit_s" must be a positive whole number of seconds')
        return recipe, input_ref, params, time_limit_s

    # -- the common path ------------------------------------------------------------------

    def _submit(self, source: ObjectRef, recipe: str, *, input_ref: ObjectRef | None,
                params: dict[str, Any], preferred_id: str | None,
                time_limit_s: int | None = None, recent: bool = False) -> Outcome:
        job_id = self._claim(preferred_id, source) if preferred_id else None
        if preferred_id and job_id is None and self._claimed_by(preferred_id) == source.identity:
            return Outcome(source.key, "duplicate", preferred_id)
        if job_id is None:
            # No preferred id, or it already belongs to other content (a re-upload to the
            # same key): the content's own identity names the job.
            job_id = self._claim(job_id_for(source), source)
            if job_id is None:
                return Outcome(source.key, "duplicate", job_id_for(source))
        # A fresh claim on an object created within the claim TTL means no earlier job for this
        # content exists (any earlier one would still hold its claim): skip the manifest GET.
        # Older objects (sweeps, late redeliveries) may have had a claim that expired.
        existing = None if recent else self.bucket.read_manifest(job_id)
        if existing and existing.finished_for(source):
            return Outcome(source.key, "duplicate", job_id, reason="already finished")
        spec = JobSpec(job_id=job_id, recipe=recipe, source=source, input=input_ref, params=params,
                       time_limit_s=time_limit_s)
        try:
            self.bucket.write_manifest(Manifest(
                job_id=job_id, status="queued", recipe=recipe, params=params, inputs=spec.inputs,
                timings={"queued_at": time.time()},
            ))
            enqueue_job(self.broker, self.settings, spec)
        except Exception:
            # Let the transport redeliver: the claim must not block the retry.
            self.redis.delete(self.claim_key(job_id))
            raise
        log.info("enqueued job %s (%s) for %s", job_id, recipe, source.key)
        return Outcome(source.key, "enqueued", job_id)

    def _recent(self, record: S3Record) -> bool:
        """Whether the event says the object was created well within the claim TTL."""
        if not record.event_time:
            return False
        try:
            created = datetime.fromisoformat(record.event_time.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return False
        return time.time() - created < self.settings.dedupe_ttl_s / 2

    def claim_key(self, job_id: str) -> str:
        return claim_key(self.settings, job_id)

    def _claim(self, job_id: str, source: ObjectRef) -> str | None:
        """Atomically take ``job_id`` for this content; None if something already holds it."""
        ok = self.redis.set(self.claim_key(job_id), source.identity, nx=True, ex=self.settings.dedupe_ttl_s)
        return job_id if ok else None

    def _claimed_by(self, job_id: str) -> str | None:
        value = self.redis.get(self.claim_key(job_id))
        return value.decode() if isinstance(value, bytes) else value


def claim_key(settings: Settings, job_id: str) -> str:
    """The Redis key that says which content a job id belongs to (see Handler._claim)."""
    return f"{settings.broker_namespace}:claim:{job_id}"


def unsafe_key(key: str) -> str | None:
    """Why a key must not become a job (None when it is fine)."""
    try:
        size = len(key.encode())
    except UnicodeEncodeError:  # a lone surrogate, from a JSON "\ud800" escape
        return "not valid UTF-8"
    if not key or size > 1024:
        return "empty or over 1024 bytes"
    if _CONTROL.search(key):
        return "control characters in key"
    if key.startswith("/") or any(seg in (".", "..") for seg in key.split("/")):
        return "'.' or '..' path segment"
    return None
