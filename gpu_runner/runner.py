"""Run one job: load the input, run the recipe, write outputs, then the final manifest."""

from __future__ import annotations

import copy
import hashlib
import logging
import platform
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from dramatiq.middleware import TimeLimitExceeded

from bucketbrush import __version__, metrics
from bucketbrush.conversations import CHAT_RECIPE
from bucketbrush.credentials import xmp_packet
from bucketbrush.errors import (
    BucketbrushError,
    EmptyInput,
    InputMissing,
    InputTooLarge,
    InvalidParams,
    InvalidWebhook,
    JobCancelled,
    JobError,
    OutsideTenant,
    RunnerDied,
    TimedOut,
    TransientError,
)
from bucketbrush.jobs import JobSpec, ObjectRef, WebhookTarget, json_object
from bucketbrush.layout import NotAnInput
from bucketbrush.manifest import ErrorInfo, Manifest, Output, Progress, TurnInfo
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket, RequestCounter, is_not_found
from gpu_runner.images import decode_image, encode_image
from gpu_runner.isolation import run_isolated
from gpu_runner.monitor import JobMonitor
from gpu_runner.provenance import OutputSigner, Parent, made_by
from gpu_runner.recipes import MODEL_CACHE_RECIPES, check_params, get_recipe
from gpu_runner.recipes.base import JobContext, Recipe, RecipeParams, RecipeResult

if TYPE_CHECKING:
    from bucketbrush.claims import Claims
    from bucketbrush.quotas import Quotas
    from bucketbrush.webhooks import Event, Notifier
    from gpu_runner.batching import Batcher
    from gpu_runner.pipelines import ModelCache

log = logging.getLogger(__name__)

# Progress writes and cancel checks: at most this often (gpu_runner/monitor.py).
PROGRESS_INTERVAL_S = 0.5


def runner_info(settings: Settings) -> dict[str, Any]:
    """Who ran a job, for its manifest: host, the device this runner computes on, versions.
    The device comes from torch when diffusion is configured (or torch is already loaded)."""
    import sys

    import cv2
    import dramatiq
    import PIL

    from gpu_runner.devices import describe_device

    use_torch = bool(settings.models_file) or "torch" in sys.modules
    device, device_name = describe_device(settings.diffusion_device, use_torch=use_torch)
    return {
        "host": socket.gethostname(),
        "device": device,
        "device_name": device_name,
        "versions": {
            "bucketbrush": __version__,
            "python": platform.python_version(),
            "pillow": PIL.__version__,
            "opencv": cv2.__version__,
            "dramatiq": dramatiq.__version__,
        },
    }


class JobRunner:
    """Executes job specs against the bucket. One instance per worker process."""

    def __init__(self, bucket: Bucket, models: ModelCache | None = None, notifier: Notifier | None = None,
                 claims: Claims | None = None, requests: RequestCounter | None = None,
                 quotas: Quotas | None = None, batcher: Batcher | None = None) -> None:
        self.bucket = bucket
        # Cross-job micro-batching of diffusion calls (gpu_runner/batching.py); None: off.
        self.batcher = batcher
        # Counts the S3 requests of ``bucket``'s client, for the per-job metric.
        self.requests = requests
        # Done markers in Redis (None: every delivery reads the stored manifest first).
        self.claims = claims
        # Tenants' counters: a job's end frees its max_concurrent slot (None: no tenants' limits).
        self.quotas = quotas
        # The cancel check overlaps the input's read.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-io")
        # Enqueues webhook deliveries (bucketbrush/webhooks.py); None: no webhooks.
        self.notifier = notifier
        self.settings = bucket.settings
        # Diffusion pipelines, loaded once per process (None: no models file configured).
        self.models = models
        self.info = runner_info(self.settings)
        # Content Credentials on every output (None: off). Raises ConfigError when they are on
        # but cannot be made: a runner that would ship unsigned outputs does not start.
        self.signer = OutputSigner.from_settings(self.settings)
        # Read by the heartbeat thread.
        self.stats: dict[str, Any] = {"jobs_done": 0, "jobs_failed": 0, "current_job": None}

    def run(self, spec: JobSpec, *, attempt: int = 1, last_attempt: bool = True,
            delivery: str | None = None, interrupted: int = 0,
            prepare: Callable[[Manifest], JobSpec] | None = None) -> Manifest:
        """Run ``spec`` once. JobErrors end in a failed manifest and are re-raised (never
        retried); other errors (the store's, or unexpected ones: ``internal_error``) leave the
        job queued for a retry, or failed on the last one. Either way the outputs written
        before the failure are removed. A tenant's job reads and writes only under its
        tenant's prefix. ``delivery``: the id of the message that carries it (for the done marker).
        ``interrupted``: runs of this job whose runner died in them (bucketbrush/runlocks.py);
        at ``max_runner_deaths`` the job fails with ``runner_died`` instead of running.

        ``prepare`` (a chat turn, gpu_runner/conversation.py) runs once the job has started and
        returns the spec to run instead (its recipe, params and input); its errors fail the job
        like the recipe's. A spec whose recipe is ``chat`` renders nothing."""
        if spec.tenant is not None and self.bucket.tenant != spec.tenant:
            tenant_runner = copy.copy(self)  # shares stats, models, notifier, claims and counters
            tenant_runner.bucket = self.bucket.for_tenant(spec.tenant)
            return tenant_runner.run(spec, attempt=attempt, last_attempt=last_attempt, delivery=delivery,
                                     interrupted=interrupted, prepare=prepare)
        if self.requests:
            self.requests.take()  # from here on, this job's requests
        # A run after a runner died in the job reads the manifest: that runner may have
        # finished it and died before its ack.
        existing = self._stored(spec, attempt, delivery if not interrupted else None)
        if existing and existing.finished_for(spec.source):
            log.info("job %s already %s; skipping duplicate delivery", spec.job_id, existing.status)
            self._observe(spec, "skipped", {})
            if spec.tenant is not None and self.quotas is not None:
                self.quotas.release(spec.tenant, spec.job_id)
            return existing
        if existing:
            timings = dict(existing.timings)
        else:
            timings = {"queued_at": spec.queued_at} if spec.queued_at else {}
        manifest = Manifest(
            job_id=spec.job_id, status="running", recipe=spec.recipe, params=spec.params,
            inputs=spec.inputs, timings=timings, runner=self.info, attempts=attempt,
            tenant=spec.tenant, replay_of=spec.replay_of,
            interrupted=interrupted, turn=TurnInfo(**spec.turn.model_dump()) if spec.turn else None,
        )
        manifest.timings["started_at"] = time.time()
        if spec.enqueued_at:
            manifest.timings["queue_wait_s"] = manifest.timings["started_at"] - spec.enqueued_at
        self.stats["current_job"] = spec.job_id
        result: Manifest | None = None
        try:
            result = self._run(spec, manifest, last_attempt, prepare)
        except JobError:
            self._mark_done(spec, delivery)
            raise
        except BucketbrushError:
            if last_attempt:
                self._mark_done(spec, delivery)
            raise
        finally:
            self.stats["current_job"] = None
            ended = result or manifest  # the succeeded manifest is a copy (_succeeded)
            if ended.is_final and spec.tenant is not None and self.quotas is not None:
                self.quotas.release(spec.tenant, spec.job_id)
            self._observe(spec, ended.status, ended.timings)
        self._mark_done(spec, delivery)
        return result

    def _observe(self, spec: JobSpec, status: str, timings: dict[str, float]) -> None:
        """The job's metrics (bucketbrush/metrics.py): never a reason for a job to fail."""
        try:
            metrics.observe_job(spec.recipe, status, timings, self.requests.take() if self.requests else {})
        except Exception:  # noqa: BLE001
            log.warning("job %s: could not record its metrics", spec.job_id, exc_info=True)

    def _stored(self, spec: JobSpec, attempt: int, delivery: str | None) -> Manifest | None:
        """The job's stored manifest, when this delivery needs it. The first delivery of a
        handler's message (it carries the queued manifest's stamp) needs none, unless the same
        message already finished the job (Dramatiq redelivers, e.g. after a runner died before
        its ack): the done marker in Redis says so for the price of a Redis GET, not an S3 GET."""
        fresh = attempt == 1 and spec.queued_at is not None and delivery is not None and self.claims is not None
        if fresh and self.claims.done_by(spec.job_id) != delivery:
            return None
        return self.bucket.read_manifest(spec.job_id)

    def _mark_done(self, spec: JobSpec, delivery: str | None) -> None:
        if self.claims is None or delivery is None:
            return
        try:
            self.claims.mark_done(spec.job_id, delivery)
        except Exception:  # noqa: BLE001 - a lost marker costs one S3 read on a redelivery
            log.warning("job %s: could not record the done marker", spec.job_id, exc_info=True)

    def _run(self, spec: JobSpec, manifest: Manifest, last_attempt: bool,
             prepare: Callable[[Manifest], JobSpec] | None = None) -> Manifest:
        written: list[str] = []
        # Other objects the recipe read (a mask, keypoints), by key: inputTo ingredients.
        loaded: dict[str, bytes] = {}
        limit = self.settings.time_limit_s(spec.recipe, spec.time_limit_s)
        deadline = time.monotonic() + limit
        # The job's own webhook: from its spec, else from the upload's metadata (below).
        target = spec.webhook
        try:
            if manifest.interrupted >= self.settings.max_runner_deaths:
                # A job that kills its runner (memory, a native crash) would kill every next one.
                raise RunnerDied(
                    f"the runner died {manifest.interrupted} times while running this job (killed, out of "
                    f"memory or crashed); it is not run again (max_runner_deaths = {self.settings.max_runner_deaths})")
            if prepare is not None:
                if self.bucket.exists(self.bucket.cancel_key(spec.job_id)):
                    raise JobCancelled("cancelled before it started")
                spec = prepare(manifest)
                manifest.recipe, manifest.params, manifest.inputs = spec.recipe, spec.params, spec.inputs
                limit = self.settings.time_limit_s(spec.recipe, spec.time_limit_s)
                deadline = time.monotonic() + limit
            if spec.recipe == CHAT_RECIPE:  # a chat turn with nothing to render (chat, undo)
                self._emit("started", manifest, target)
                result = RecipeResult(artifacts=[], details={"image": spec.input.key} if spec.input else {})
            else:
                result, target = self._run_recipe(spec, manifest, deadline, limit, target, written, loaded)
            # Written strictly after every output: a subscriber that sees `succeeded` can GET
            # them all. If this write fails, the outputs go too (below).
            done = self._succeeded(manifest, result)
            self.bucket.write_manifest(done)
        except TimeLimitExceeded as exc:
            self._discard(written)
            return self._finish_failed(manifest, TimedOut(f"the job ran past its time limit of {limit} s"),
                                       final=True, cause=exc, target=target)
        except BucketbrushError as exc:
            self._discard(written)
            final = isinstance(exc, JobError) or last_attempt
            return self._finish_failed(manifest, exc, final=final, target=target)
        except (ClientError, BotoCoreError) as exc:
            self._discard(written)
            error = TransientError(f"storage error: {exc}")
            return self._finish_failed(manifest, error, final=last_attempt, cause=exc, target=target)
        except Exception as exc:  # a bug, or a library failing in a way no recipe expected
            log.exception("job %s: unexpected error", spec.job_id)
            self._discard(written)
            error = BucketbrushError(f"unexpected error: {type(exc).__name__}: {exc}")
            return self._finish_failed(manifest, error, final=last_attempt, cause=exc, target=target)
        self._emit("completed", done, target)
        self.stats["jobs_done"] += 1
        log.info("job %s succeeded: %d outputs", spec.job_id, len(done.outputs))
        return done

    def _succeeded(self, manifest: Manifest, result: RecipeResult) -> Manifest:
        """The final manifest of a job whose outputs are all written (a copy: should writing
        it fail, ``manifest`` is what the failure is recorded on)."""
        done = manifest.model_copy(deep=True)
        self._record_result(done, result)
        done.status = "succeeded"
        total = done.progress.total or 1
        done.progress = Progress(step=total, total=total, fraction=1.0)
        done.timings["finished_at"] = time.time()
        if days := self.settings.outputs_retention_days:
            done.outputs_expire_at = done.timings["finished_at"] + days * 86400
        # Links for apps that hold no credentials (the manifest itself is read through the
        # presigned GET their presign reply carried).
        for out in done.outputs:
            out.url = self.bucket.presigned_get(out.key)
        done.urls_expire_at = done.timings["finished_at"] + self.settings.presign_expires_s
        return done

    # -- steps ----------------------------------------------------------------------------

    def _run_recipe(self, spec: JobSpec, manifest: Manifest, deadline: float, limit: int,
                    target: WebhookTarget | None, written: list[str],
                    loaded: dict[str, bytes]) -> tuple[RecipeResult, WebhookTarget | None]:
        """Load the input, run the recipe (in a killable child under a hard time limit), write
        the outputs (their keys go to ``written`` as they are written). Also returns the job's
        webhook: ``target``, else the one in the upload's metadata."""
        recipe = get_recipe(spec.recipe, testing=self.settings.test_recipes)
        image, metadata, parent = self._start(spec, recipe)
        if target is None and "webhook" in metadata:
            target = WebhookTarget.parse(metadata["webhook"], metadata.get("webhook-events"), InvalidWebhook)
        self._emit("started", manifest, target)
        # A chat turn's params come from its refinement only (its upload's metadata carries the message).
        params = resolve_params(recipe, spec.params, {} if spec.turn else metadata,
                                single_fields=not self._presigned(spec))
        manifest.params = params.model_dump(mode="json")
        with JobMonitor(self.bucket, manifest, interval_s=PROGRESS_INTERVAL_S,
                        on_write=lambda m: self._emit("progress", m, target)) as monitor:
            started = time.perf_counter()
            if self._hard_limit(spec, manifest):
                result = run_isolated(spec.recipe, image, params, job_id=spec.job_id, settings=self.settings,
                                      deadline=deadline, limit_s=limit, on_progress=monitor.progress,
                                      cancelled=monitor.cancelled)
            else:
                result = recipe.run(self._context(manifest, monitor, loaded), image, params)
            manifest.timings["processing_s"] = time.perf_counter() - started
        manifest.outputs = self._write_outputs(spec, result, params, written, parent, loaded)
        return result, target

    def _start(self, spec: JobSpec, recipe: Recipe) -> tuple[Any, dict[str, str], Parent | None]:
        """Look for a cancel request while the input is read and decoded: two round trips,
        one wait. The running manifest is the monitor's first write (gpu_runner/monitor.py),
        once the job has run one progress interval: a job shorter than that goes from
        ``queued`` to its final manifest, one manifest PUT and two index writes fewer."""
        cancelled = self._io.submit(self.bucket.exists, self.bucket.cancel_key(spec.job_id))
        try:
            loaded = (self._load_input(spec.input, recipe.input_kind) if recipe.needs_input
                      else (None, {}, None))
        finally:
            wait([cancelled])
        if cancelled.result():
            raise JobCancelled("cancelled before it started")
        return loaded

    def _hard_limit(self, spec: JobSpec, manifest: Manifest) -> bool:
        """Whether to run the recipe in a killable child process (gpu_runner/isolation.py)."""
        if not (spec.hard_time_limit or spec.recipe in self.settings.hard_time_limit_recipes):
            return False
        if spec.recipe in MODEL_CACHE_RECIPES:
            manifest.warnings.append(f"no hard time limit for {spec.recipe}: its models live in the runner process; "
                                     "the time limit is Dramatiq's (checked between Python bytecodes)")
            return False
        return True

    def _load_input(self, ref: ObjectRef | None, kind: str = "image") -> tuple[Any, dict[str, str], Parent | None]:
        """The input as the recipe takes it (a decoded image, or the raw bytes), its metadata,
        and (when signing) the outputs' parent ingredient."""
        if ref is None:
            raise InvalidParams(f"this recipe needs an input {'image' if kind == 'image' else 'file'}")
        obj = get_input(self.bucket, ref)
        if obj.get("ContentLength", 0) == 0:
            raise EmptyInput("the upload is empty (0 bytes)")
        data = obj["Body"].read()
        parent = self.signer.parent(data, obj.get("ContentType"), ref.key) if self.signer else None
        if kind == "bytes":
            return data, obj.get("Metadata", {}), parent
        return decode_image(data, max_pixels=self.settings.max_image_pixels), obj.get("Metadata", {}), parent

    def _context(self, manifest: Manifest, monitor: JobMonitor, loaded: dict[str, bytes]) -> JobContext:
        load_image, load_bytes = bucket_loaders(self.bucket, loaded if self.signer else None)
        return JobContext(manifest.job_id, monitor.progress, load_image=load_image, load_bytes=load_bytes,
                          cancelled=monitor.cancelled, models=self.models, settings=self.settings,
                          batcher=self.batcher)

    def _write_outputs(self, spec: JobSpec, result: RecipeResult, params: RecipeParams,
                       written: list[str], parent: Parent | None, loaded: dict[str, bytes] | None = None,
                       ) -> list[Output]:
        """Encode, sign (when content credentials are on) and PUT each output in turn. A failure
        (signing_failed included) leaves the ones already written in ``written``: the caller
        removes them, as for any failed attempt."""
        made = made_by(spec.recipe, params, result) if self.signer else None
        others = [OutputSigner.parent(data, None, key) for key, data in (loaded or {}).items()]
        xmp = xmp_packet(made.source_type) if made and made.source_type else None
        outputs = []
        for artifact in result.artifacts:
            if artifact.image is not None:
                data, content_type = encode_image(artifact.image, params.format, params.quality, xmp=xmp,
                                                  png_level=self.settings.png_compress_level)
                extension, width, height = params.format, artifact.image.width, artifact.image.height
            else:  # already encoded (e.g. a video): written as it is
                data, content_type, extension = artifact.data, artifact.content_type, artifact.extension
                width, height = artifact.width, artifact.height
            key = self.bucket.output_key(spec.job_id, f"{artifact.name}.{extension}")
            credentials = None
            if self.signer and made:
                data, credentials = self.signer.sign(
                    data, content_type, title=f"{artifact.name}.{extension}", job_id=spec.job_id,
                    recipe=spec.recipe, params=params, result=result, made=made, parent=parent,
                    input_key=spec.input.key if spec.input else None, others=others)
            self.bucket.s3.put_object(Bucket=self.bucket.name, Key=key, Body=data, ContentType=content_type)
            written.append(key)
            outputs.append(Output(
                key=key, content_type=content_type, width=width, height=height,
                bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), content_credentials=credentials,
            ))
        return outputs

    def _record_result(self, manifest: Manifest, result: RecipeResult) -> None:
        manifest.model = result.model
        manifest.seeds = result.seeds
        manifest.warnings = [*manifest.warnings, *result.warnings]
        manifest.details = result.details

    def _presigned(self, spec: JobSpec) -> bool:
        """Whether the job's upload came through a presigned POST (its key carries a ticket)."""
        try:
            key = self.bucket.layout.parse_input(spec.source.key)
        except NotAnInput:
            return False
        return key.kind == "upload" and key.job_id is not None

    def _emit(self, event: Event, manifest: Manifest, target: WebhookTarget | None) -> None:
        if self.notifier:
            self.notifier.emit(event, manifest, target)

    def _discard(self, keys: list[str]) -> None:
        """Remove outputs of a failed attempt, so nothing half-written is left behind."""
        for key in keys:
            try:
                self.bucket.s3.delete_object(Bucket=self.bucket.name, Key=key)
            except (ClientError, BotoCoreError):
                log.warning("could not remove partial output %s", key)

    def _finish_failed(self, manifest: Manifest, exc: BucketbrushError, *, final: bool,
                       cause: BaseException | None = None, target: WebhookTarget | None = None) -> Manifest:
        """Record the failure, then raise: JobErrors are in the actor's ``throws`` (never
        retried); anything else is retried by Dramatiq until ``last_attempt``."""
        manifest.outputs = []
        # While retries remain: retryable. After the last: the error's own word (a store that
        # kept failing may be back later, so `jobs retry` can try again; bad input cannot).
        manifest.error = ErrorInfo.of(exc, retryable=exc.retryable if final else True)
        if isinstance(exc, JobCancelled):
            manifest.status = "cancelled"
        else:
            manifest.status = "failed" if final else "queued"
        manifest.timings["finished_at" if final else "retry_at"] = time.time()
        try:
            self.bucket.write_manifest(manifest)
        except (ClientError, BotoCoreError):
            log.exception("could not write the manifest of job %s", manifest.job_id)
        if final:
            self._emit("completed", manifest, target)
            self.stats["jobs_failed"] += 1
        log.warning("job %s %s: %s: %s", manifest.job_id, manifest.status, exc.code, exc.message)
        raise exc from cause


def get_input(bucket: Bucket, ref: ObjectRef) -> dict[str, Any]:
    """GET an input object, refusing ones over the upload size limit, and keys outside the
    bucket view's tenant (a tenant's params may name keys: masks, poses)."""
    if not bucket.layout.owns(ref.key):
        whose = f"tenant {bucket.tenant!r}" if bucket.tenant else "the default tenant"
        raise OutsideTenant(f"the key {ref.key!r} is not one of {whose}'s")
    kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
    if ref.version_id:
        kwargs["VersionId"] = ref.version_id
    try:
        obj = bucket.s3.get_object(**kwargs)
    except ClientError as exc:
        if is_not_found(exc):
            raise InputMissing(f"the input {ref.key!r} does not exist") from exc
        raise
    size, limit = obj.get("ContentLength", 0), bucket.settings.max_upload_bytes
    if size > limit:
        obj["Body"].close()
        raise InputTooLarge(f"the input {ref.key!r} is {size:,} bytes; the limit is {limit:,}")
    return obj


def bucket_loaders(bucket: Bucket, loaded: dict[str, bytes] | None = None,
                   ) -> tuple[Callable[[str], Any], Callable[[str], bytes]]:
    """(load_image, load_bytes) for a JobContext: other objects of the bucket, under the same
    size and pixel guards as the input. ``loaded`` collects what was read, by key (the
    outputs' Content Credentials name them as ingredients)."""
    def load_bytes(key: str) -> bytes:
        data = get_input(bucket, ObjectRef(bucket=bucket.name, key=key))["Body"].read()
        if loaded is not None:
            loaded[key] = data
        return data

    def load_image(key: str) -> Any:
        return decode_image(load_bytes(key), max_pixels=bucket.settings.max_image_pixels)

    return load_image, load_bytes


def resolve_params(recipe: Recipe, spec_params: dict[str, Any], metadata: dict[str, str], *,
                   single_fields: bool = True) -> RecipeParams:
    """The recipe's params from upload metadata overlaid by the job spec's params.

    Metadata: the ``x-amz-meta-params`` JSON object, then single ``x-amz-meta-<name>`` fields
    for params the JSON does not set (the JSON wins: a presigned POST signs it). For presigned
    uploads (``single_fields=False``) only the signed JSON counts, so a store that does not
    refuse extra form fields still cannot be used to slip params past the signature."""
    fields = recipe.params.model_fields
    merged: dict[str, Any] = {}
    if single_fields:
        # Single metadata fields only count when they name a param (apps add their own metadata).
        merged.update({k: v for k, v in metadata.items() if k in fields})
    if raw := metadata.get("params"):
        merged.update(json_object(raw, "x-amz-meta-params", InvalidParams))
    merged.update(spec_params)
    return check_params(recipe, merged)
