"""Turn S3 event records into jobs: filter, de-duplicate, write the queued manifest, enqueue.

Every transport (subscription, webhook, SQS, Lambda, sweep) ends here, so the rules live once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dramatiq

from bucketbrush.broker import build_broker, enqueue_job
from bucketbrush.claims import Claims
from bucketbrush.conversations import CHAT_RECIPE, Conversations
from bucketbrush.errors import InvalidSpec, InvalidWebhook
from bucketbrush.jobs import RECIPE_NAME, JobSpec, ObjectRef, TurnRef, WebhookTarget, job_id_for, json_object
from bucketbrush.layout import InputKey, NotAnInput, unsafe_key
from bucketbrush.manifest import ErrorInfo, Manifest, TurnInfo
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from functions.events import S3Record

log = logging.getLogger(__name__)

MAX_SPEC_BYTES = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    """What the handler did with one record."""

    key: str
    action: str  # enqueued | duplicate | ignored | rejected
    job_id: str | None = None
    reason: str = ""


class Handler:
    """Shared by every event source. Safe to call with the same record any number of times.

    ``redis`` holds the job-id claims (any Redis client; the broker's own connection pool in
    production, see ``from_settings``)."""

    def __init__(self, settings: Settings, bucket: Bucket, broker: dramatiq.Broker, redis: Any) -> None:
        self.settings = settings
        self.bucket = bucket
        self.broker = broker
        self.claims = Claims(redis, settings)
        self.conversations = Conversations(bucket, redis)
        self.stats: dict[str, Any] = {"records": 0, "enqueued": 0, "last_event_at": None}

    @classmethod
    def from_settings(cls, settings: Settings, bucket: Bucket | None = None) -> Handler:
        """A handler with its own broker, claiming in the broker's Redis, on ``bucket`` (default:
        a bucket client of its own)."""
        broker = build_broker(settings)
        return cls(settings, bucket or Bucket(settings), broker, broker.client)

    def handle(self, records: Iterable[S3Record]) -> list[Outcome]:
        outcomes = [self.handle_record(r) for r in records]
        if outcomes:  # counters for the event source's heartbeat (`bucketbrush status`)
            self.stats["records"] += len(outcomes)
            self.stats["enqueued"] += sum(o.action == "enqueued" for o in outcomes)
            self.stats["last_event_at"] = time.time()
        return outcomes

    def handle_record(self, record: S3Record) -> Outcome:
        key = record.key
        if not record.is_created:
            return Outcome(key, "ignored", reason=f"event {record.event_name}")
        if record.bucket != self.settings.bucket:
            return Outcome(key, "ignored", reason=f"bucket {record.bucket}")
        try:
            route = self.bucket.layout.parse_input(key)
        except NotAnInput as exc:
            if exc.rejected:
                log.warning("rejected key %r: %s", key, exc.reason)
            return Outcome(key, "rejected" if exc.rejected else "ignored", reason=exc.reason)
        if route.kind == "turn":
            return self._turn(record, route)
        if route.kind == "upload":
            assert route.recipe is not None
            return self._submit(record.ref, route.recipe, input_ref=record.ref, params={},
                                preferred_id=route.job_id, recent=self._recent(record))
        if route.job_id is None:
            # A spec under a name that is no job id: leave a trace where the user looks.
            job_id = job_id_for(record.ref)
            log.warning("job spec %r rejected: %s (failed manifest under derived id %s)", key, route.problem, job_id)
            return self._failed_spec(record, job_id, InvalidSpec(
                f"{route.problem}; this failure is recorded under the id {job_id}, derived from the spec's content"))
        return self._spec(record, route.job_id)

    # -- routes ---------------------------------------------------------------------------

    def _spec(self, record: S3Record, job_id: str) -> Outcome:
        ref = record.ref
        try:
            recipe, input_ref, params, options = self._read_spec(ref)
        except (InvalidSpec, InvalidWebhook) as exc:
            return self._failed_spec(record, job_id, exc)
        return self._submit(ref, recipe, input_ref=input_ref, params=params, preferred_id=job_id,
                            recent=self._recent(record), **options)

    def _turn(self, record: S3Record, route: InputKey) -> Outcome:
        """A chat turn: numbered in its conversation's arrival order, then a job like any other
        (the runner refines the message and picks the recipe, gpu_runner/conversation.py)."""
        assert route.conversation is not None and route.turn is not None
        ref = record.ref
        seq = self.conversations.next_seq(route.conversation, ref.identity)
        turn = TurnRef(conversation=route.conversation, seq=seq, name=route.turn)
        return self._submit(ref, CHAT_RECIPE, input_ref=None, params={}, preferred_id=route.job_id,
                            recent=self._recent(record), turn=turn)

    def _failed_spec(self, record: S3Record, job_id: str, exc: InvalidSpec | InvalidWebhook) -> Outcome:
        """Nothing to run: record the failure where the user will look for it."""
        ref = record.ref
        if not self.claims.claim(job_id, ref.identity):
            return Outcome(record.key, "duplicate", job_id)
        now = time.time()
        self.bucket.write_manifest(Manifest(
            job_id=job_id, status="failed", recipe="", inputs=[ref], error=ErrorInfo.of(exc),
            timings={"queued_at": now, "finished_at": now},
        ))
        return Outcome(record.key, "rejected", job_id, reason=str(exc))

    def _read_spec(self, ref: ObjectRef) -> tuple[str, ObjectRef | None, dict[str, Any], dict[str, Any]]:
        """(recipe, input, params, options: ``time_limit_s``, ``hard_time_limit``, ``webhook``)."""
        if ref.size is not None and ref.size > MAX_SPEC_BYTES:
            raise InvalidSpec(f"job spec is {ref.size} bytes; the limit is {MAX_SPEC_BYTES}")
        body = self.bucket.s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read(MAX_SPEC_BYTES + 1)
        if len(body) > MAX_SPEC_BYTES:
            raise InvalidSpec(f"job spec is over {MAX_SPEC_BYTES} bytes")
        doc = json_object(body, "job spec", InvalidSpec)
        recipe = doc.get("recipe")
        if not isinstance(recipe, str) or not RECIPE_NAME.match(recipe):
            raise InvalidSpec('job spec needs "recipe": a recipe name')
        params = doc.get("params", {})
        if not isinstance(params, dict):
            raise InvalidSpec('"params" must be a JSON object')
        input_ref = None
        if (input_key := doc.get("input")) is not None:
            if not isinstance(input_key, str) or unsafe_key(input_key):
                raise InvalidSpec('"input" must be a key in the bucket')
            input_ref = ObjectRef(bucket=ref.bucket, key=input_key)
        time_limit_s = doc.get("time_limit_s")
        if time_limit_s is not None and (not isinstance(time_limit_s, int) or time_limit_s < 1):
            raise InvalidSpec('"time_limit_s" must be a positive whole number of seconds')
        hard = doc.get("hard_time_limit", False)
        if not isinstance(hard, bool):
            raise InvalidSpec('"hard_time_limit" must be true or false')
        webhook = None
        if doc.get("webhook") is not None:
            webhook = WebhookTarget.parse(doc["webhook"], doc.get("webhook_events"), InvalidWebhook)
        return recipe, input_ref, params, {"time_limit_s": time_limit_s, "hard_time_limit": hard, "webhook": webhook}

    # -- the common path ------------------------------------------------------------------

    def _submit(self, source: ObjectRef, recipe: str, *, input_ref: ObjectRef | None,
                params: dict[str, Any], preferred_id: str | None,
                time_limit_s: int | None = None, hard_time_limit: bool = False, recent: bool = False,
                webhook: WebhookTarget | None = None, turn: TurnRef | None = None) -> Outcome:
        claims, identity = self.claims, source.identity
        job_id = preferred_id if preferred_id and claims.claim(preferred_id, identity) else None
        if preferred_id and job_id is None and claims.holder(preferred_id) == identity:
            return Outcome(source.key, "duplicate", preferred_id)
        if job_id is None:
            # No preferred id, or it already belongs to other content (a re-upload to the
            # same key): the content's own identity names the job.
            job_id = job_id_for(source)
            if not claims.claim(job_id, identity):
                return Outcome(source.key, "duplicate", job_id)
        # A fresh claim on an object created within the claim TTL means no earlier job for this
        # content exists (any earlier one would still hold its claim): skip the manifest GET.
        # Older objects (sweeps, late redeliveries) may have had a claim that expired.
        existing = None if recent else self.bucket.read_manifest(job_id)
        if existing and existing.finished_for(source):
            return Outcome(source.key, "duplicate", job_id, reason="already finished")
        spec = JobSpec(job_id=job_id, recipe=recipe, source=source, input=input_ref, params=params,
                       time_limit_s=time_limit_s, hard_time_limit=hard_time_limit, webhook=webhook, turn=turn)
        try:
            self.bucket.write_manifest(Manifest(
                job_id=job_id, status="queued", recipe=recipe, params=params, inputs=spec.inputs,
                timings={"queued_at": time.time()}, turn=TurnInfo(**turn.model_dump()) if turn else None,
            ))
            enqueue_job(self.broker, self.settings, spec)
        except Exception:
            # Let the transport redeliver: the claim must not block the retry.
            claims.delete(job_id)
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


__all__ = ["MAX_SPEC_BYTES", "Handler", "Outcome", "unsafe_key"]
