"""Turn S3 event records into jobs: filter, de-duplicate, write the queued manifest, enqueue.

Every transport (subscription, webhook, SQS, Lambda, sweep) ends here, so the rules live once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dramatiq
from botocore.exceptions import ClientError

from bucketbrush import metrics
from bucketbrush.broker import build_broker, enqueue_job
from bucketbrush.claims import Claims
from bucketbrush.conversations import CHAT_RECIPE, Conversations
from bucketbrush.errors import (
    InputMissing,
    InvalidKey,
    InvalidSpec,
    InvalidWebhook,
    JobError,
    OutsideTenant,
    QuotaExceeded,
)
from bucketbrush.jobs import RECIPE_NAME, JobSpec, ObjectRef, TurnRef, WebhookTarget, is_job_id, job_id_for, json_object
from bucketbrush.layout import InputKey, NotAnInput, unsafe_key
from bucketbrush.manifest import ErrorInfo, Manifest, TurnInfo
from bucketbrush.quotas import Quotas
from bucketbrush.routing import Priority
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket, is_not_found
from bucketbrush.tenants import TenantsFile
from functions.events import S3Record
from functions.pool import KeyedPool

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
        # Tenants' limits (the tenants file) and their counters in Redis.
        self.tenants = TenantsFile.from_settings(settings)
        self.quotas = Quotas(redis, settings)
        # Index writes beside manifest writes, one per record being handled.
        self._io = ThreadPoolExecutor(max_workers=settings.handler_concurrency, thread_name_prefix="handler-io")
        # Records are handled here, in parallel across keys, in order for one key.
        self.pool = KeyedPool(settings.handler_concurrency, name="handler")
        self.stats: dict[str, Any] = {"records": 0, "enqueued": 0, "last_event_at": None}
        self._stats_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, bucket: Bucket | None = None) -> Handler:
        """A handler with its own broker, claiming in the broker's Redis, on ``bucket`` (default:
        a bucket client of its own)."""
        broker = build_broker(settings)
        return cls(settings, bucket or Bucket(settings), broker, broker.client)

    def handle(self, records: Iterable[S3Record]) -> list[Outcome]:
        """Handle ``records`` (in parallel, in order per key) and wait for all of them. A
        failure is raised once every record is done (the transport redelivers the batch; the
        records that went through are duplicates then)."""
        futures = [self.submit(r) for r in records]
        wait(futures)
        return [f.result() for f in futures]

    def submit(self, record: S3Record) -> Future[Outcome]:
        """Handle ``record`` on the pool, after any earlier record for the same key (for a chat
        turn: for the same conversation, since turns are numbered in the order their events
        came); blocks while the pool is full (``handler_concurrency`` x 4 records in flight)."""
        future = self.pool.submit(self._order_key(record.key), self.handle_record, record)
        future.add_done_callback(self._count)
        return future

    def _order_key(self, key: str) -> str:
        try:
            route = self.bucket.layout.parse_input(key)
        except NotAnInput:
            return key
        return f"conversation {route.tenant or ''}/{route.conversation}" if route.kind == "turn" else key

    def _count(self, future: Future[Outcome]) -> None:
        """Counters for the metrics and the event source's heartbeat (`bucketbrush status`)."""
        if future.exception() is not None:
            metrics.count_outcomes(["error"])
            return
        outcome = future.result()
        metrics.count_outcomes([outcome.action])
        with self._stats_lock:
            self.stats["records"] += 1
            self.stats["enqueued"] += outcome.action == "enqueued"
            self.stats["last_event_at"] = time.time()

    def handle_record(self, record: S3Record) -> Outcome:
        key = record.key
        if not record.is_created:
            return Outcome(key, "ignored", reason=f"event {record.event_name}")
        if record.bucket != self.settings.bucket:
            return Outcome(key, "ignored", reason=f"bucket {record.bucket}")
        try:
            route = self.bucket.layout.parse_input(key)
        except NotAnInput as exc:
            if not exc.rejected:
                return Outcome(key, "ignored", reason=exc.reason)
            log.warning("rejected key %r: %s", key, exc.reason)
            layout = self.bucket.layout.root
            if key.startswith((layout.inbox, layout.jobs)):
                # An upload the user waits for: leave a failed manifest where they look.
                job_id = job_id_for(record.ref)
                return self._failed(record.ref, job_id, None, InvalidKey(
                    f"the key breaks a rule: {exc.reason}; this failure is recorded under the id {job_id}, "
                    "derived from the upload's identity"))
            return Outcome(key, "rejected", reason=exc.reason)
        tenant = route.tenant
        if route.kind == "turn":
            return self._turn(record, route)
        if route.kind == "upload":
            assert route.recipe is not None
            # A presigned upload's key names its job (an app waits for it); a drop-folder
            # file's does not (a batch): it goes behind interactive work (bucketbrush/routing.py).
            return self._submit(record.ref, route.recipe, input_ref=record.ref, params={},
                                preferred_id=route.job_id, recent=self._recent(record),
                                priority="interactive" if route.job_id else "bulk", tenant=tenant)
        if route.job_id is None:
            # A spec under a name that is no job id: leave a trace where the user looks.
            job_id = job_id_for(record.ref)
            log.warning("job spec %r rejected: %s (failed manifest under derived id %s)", key, route.problem, job_id)
            return self._failed(record.ref, job_id, tenant, InvalidSpec(
                f"{route.problem}; this failure is recorded under the id {job_id}, derived from the spec's content"))
        return self._spec(record, route.job_id, tenant)

    # -- routes ---------------------------------------------------------------------------

    def _spec(self, record: S3Record, job_id: str, tenant: str | None) -> Outcome:
        ref = record.ref
        try:
            recipe, input_ref, params, options = self._read_spec(ref, tenant)
        except (InvalidSpec, InvalidWebhook, OutsideTenant) as exc:
            return self._failed(ref, job_id, tenant, exc)
        return self._submit(ref, recipe, input_ref=input_ref, params=params, preferred_id=job_id,
                            recent=self._recent(record), tenant=tenant, **options)

    def _turn(self, record: S3Record, route: InputKey) -> Outcome:
        """A chat turn: numbered in its conversation's arrival order, then a job like any other
        (the runner refines the message and picks the recipe, gpu_runner/conversation.py)."""
        ref = record.ref
        return self._submit(ref, CHAT_RECIPE, input_ref=None, params={}, preferred_id=route.job_id,
                            recent=self._recent(record), tenant=route.tenant, **self._turn_options(route, ref))

    def _turn_options(self, route: InputKey, source: ObjectRef) -> dict[str, Any]:
        """A turn's place in its conversation (the tenant's: numbers and manifest are per
        tenant), and for a tenant's turn the recipes its tenant may run (the runner picks one)."""
        assert route.conversation is not None and route.turn is not None
        seq = self.conversations.for_tenant(route.tenant).next_seq(route.conversation, source.identity)
        options: dict[str, Any] = {"turn": TurnRef(conversation=route.conversation, seq=seq, name=route.turn)}
        if route.tenant is not None:
            options["allowed_recipes"] = self.tenants.limits(self.settings, route.tenant).recipes or None
        return options

    def _failed(self, ref: ObjectRef, job_id: str, tenant: str | None, exc: JobError, *,
                recipe: str = "", claimed: bool = False) -> Outcome:
        """Nothing to run: record the failure where the user will look for it."""
        if not claimed and not self.claims.for_tenant(tenant).claim(job_id, ref.identity):
            return Outcome(ref.key, "duplicate", job_id)
        now = time.time()
        self.bucket.for_tenant(tenant).write_manifest(Manifest(
            job_id=job_id, status="failed", recipe=recipe, inputs=[ref], error=ErrorInfo.of(exc),
            timings={"queued_at": now, "finished_at": now}, tenant=tenant,
        ))
        return Outcome(ref.key, "rejected", job_id, reason=str(exc))

    def requeue(self, job_id: str, source: ObjectRef) -> Outcome:
        """Enqueue ``job_id`` again, rebuilt from its source object (an upload or a job spec)
        as its first event did, whatever its claim says. For the sweep, when the broker lost
        the job's message (Redis restarted empty): the caller holds a lock so that only one
        sweeper requeues it. The manifest is left as it is (``queued``; or ``running``, which
        tells the runner that a runner died in this job); quotas were counted the first time."""
        try:
            route = self.bucket.layout.parse_input(source.key)
        except NotAnInput as exc:
            return Outcome(source.key, "rejected", job_id, reason=exc.reason)
        tenant = route.tenant
        recipe, input_ref, params = route.recipe or "", source, {}
        options: dict[str, Any] = {"priority": "interactive" if route.job_id else "bulk"}
        if route.kind == "turn" and route.conversation and route.turn:
            # The same number as its first event (one per turn object), so it keeps its place.
            recipe, input_ref = CHAT_RECIPE, None
            options = {"priority": "interactive", **self._turn_options(route, source)}
        elif route.kind != "upload":
            try:
                recipe, input_ref, params, options = self._read_spec(source, tenant)
            except (InvalidSpec, InvalidWebhook, OutsideTenant) as exc:
                return self._failed(source, job_id, tenant, exc, claimed=True)
            except ClientError as exc:
                if not is_not_found(exc):
                    raise
                return self._failed(source, job_id, tenant, InputMissing(f"the job spec {source.key!r} is gone"),
                                    claimed=True)
        # No queued_at: the runner then reads the stored manifest (the job may have finished).
        spec = JobSpec(job_id=job_id, recipe=recipe, source=source, input=input_ref, params=params, tenant=tenant,
                       **options)
        self.claims.for_tenant(tenant).take(job_id, source.identity)
        enqueue_job(self.broker, self.settings, spec)
        log.warning("requeued job %s (%s): the broker had lost its message", job_id, recipe)
        return Outcome(source.key, "enqueued", job_id, reason="requeued")

    def _read_spec(self, ref: ObjectRef, tenant: str | None = None
                   ) -> tuple[str, ObjectRef | None, dict[str, Any], dict[str, Any]]:
        """(recipe, input, params, options: ``time_limit_s``, ``hard_time_limit``, ``webhook``,
        ``priority``, ``replay_of``). A tenant's spec may only name an input of its own."""
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
            layout = self.bucket.layout.for_tenant(tenant)
            if layout.owns(input_key) and not input_key.startswith((layout.inbox, layout.outputs)):
                raise InvalidSpec(f'"input" must be an upload ({layout.inbox}) or an output ({layout.outputs}), '
                                  f"not {input_key!r}")
            if not layout.owns(input_key):
                whose = f"tenant {tenant!r}" if tenant else "the default tenant"
                where = f"under {layout.space}" if tenant else f"outside {layout.tenants}"
                raise OutsideTenant(f'"input" {input_key!r} is not a key of {whose}: a job may only read keys {where}')
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
        priority = doc.get("priority", "interactive")
        if priority not in ("interactive", "bulk"):
            raise InvalidSpec('"priority" must be "interactive" or "bulk"')
        replay_of = doc.get("replay_of")
        if replay_of is not None and (not isinstance(replay_of, str) or not is_job_id(replay_of)):
            raise InvalidSpec('"replay_of" must be a job id')
        return recipe, input_ref, params, {"time_limit_s": time_limit_s, "hard_time_limit": hard, "webhook": webhook,
                                           "priority": priority, "replay_of": replay_of}

    # -- the common path ------------------------------------------------------------------

    def _submit(self, source: ObjectRef, recipe: str, *, input_ref: ObjectRef | None,
                params: dict[str, Any], preferred_id: str | None,
                time_limit_s: int | None = None, hard_time_limit: bool = False, recent: bool = False,
                webhook: WebhookTarget | None = None, priority: Priority = "interactive",
                tenant: str | None = None, replay_of: str | None = None,
                turn: TurnRef | None = None, allowed_recipes: list[str] | None = None) -> Outcome:
        claims, identity, bucket = self.claims.for_tenant(tenant), source.identity, self.bucket.for_tenant(tenant)
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
        existing = None if recent else bucket.read_manifest(job_id)
        if existing and existing.finished_for(source):
            return Outcome(source.key, "duplicate", job_id, reason="already finished")
        queued_at = time.time()
        spec = JobSpec(job_id=job_id, recipe=recipe, source=source, input=input_ref, params=params,
                       time_limit_s=time_limit_s, hard_time_limit=hard_time_limit, webhook=webhook,
                       priority=priority, tenant=tenant, replay_of=replay_of, queued_at=queued_at, turn=turn,
                       allowed_recipes=allowed_recipes)
        if tenant is not None:
            limits = self.tenants.limits(self.settings, tenant)
            if turn is not None:  # its recipe is the runner's choice, checked there (allowed_recipes)
                limits = limits.model_copy(update={"recipes": []})
            try:
                self.quotas.admit(tenant, job_id, recipe=recipe, limits=limits,
                                  size=self._input_size(spec) if limits.input_bytes_per_day else 0)
            except QuotaExceeded as exc:
                log.warning("job %s of tenant %s refused: %s", job_id, tenant, exc)
                return self._failed(source, job_id, tenant, exc, recipe=recipe, claimed=True)
        queued = Manifest(job_id=job_id, status="queued", recipe=recipe, params=params, inputs=spec.inputs,
                          timings={"queued_at": queued_at}, tenant=tenant, replay_of=replay_of,
                          turn=TurnInfo(**turn.model_dump()) if turn else None)
        try:
            # The manifest and its job index entry side by side: one round trip, not two.
            indexed = self._io.submit(bucket.index_manifest, queued.model_copy())
            try:
                bucket.write_manifest(queued, index=False)
            finally:
                wait([indexed])
            indexed.result()
            enqueue_job(self.broker, self.settings, spec)
        except Exception:
            # Let the transport redeliver: the claim (and the quota slot) must not block the retry.
            claims.delete(job_id)
            if tenant is not None:
                self.quotas.release(tenant, job_id)
            raise
        log.info("enqueued job %s (%s) for %s", job_id, recipe, source.key)
        return Outcome(source.key, "enqueued", job_id)

    def _input_size(self, spec: JobSpec) -> int:
        """The input's bytes, for the input_bytes_per_day quota (a HEAD only for a spec's input)."""
        if spec.input is None:
            return 0
        if spec.input.size is not None:
            return spec.input.size
        try:
            return int(self.bucket.s3.head_object(Bucket=spec.input.bucket, Key=spec.input.key)["ContentLength"])
        except Exception:  # noqa: BLE001 - a missing input fails in the runner, with its own code
            return 0

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
