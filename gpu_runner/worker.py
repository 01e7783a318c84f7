"""The runner process: one Dramatiq worker thread per process (one process per GPU)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from dramatiq import Worker

from bucketbrush import metrics
from bucketbrush.broker import build_broker
from bucketbrush.claims import Claims
from bucketbrush.quotas import Quotas
from bucketbrush.routing import served_queues
from bucketbrush.runlocks import RunLocks
from bucketbrush.settings import Settings, mask_url_password
from bucketbrush.store import Bucket, RequestCounter
from bucketbrush.webhooks import Deliverer, Notifier, declare_webhook_actor
from gpu_runner.actors import declare_actors
from gpu_runner.batching import Batcher, ComputeSlot
from gpu_runner.conversation import TurnRunner
from gpu_runner.heartbeat import Heartbeat
from gpu_runner.refine import get_refiner
from gpu_runner.runner import JobRunner

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, ready_file: Path | None = None) -> None:
    """Consume jobs until SIGTERM or SIGINT; finishes the current job before exiting."""
    broker = build_broker(settings)
    bucket = Bucket(settings)
    models = None
    if settings.models_file:
        from gpu_runner.pipelines import ModelCache

        models = ModelCache.from_settings(settings)
        models.preload(settings.preload_models)
    requests = RequestCounter(settings, on_request=metrics.count_request)
    requests.attach(bucket.s3)
    # Cross-job micro-batching (gpu_runner/batching.py): one worker thread per job a call may
    # take; one job computes at a time all the same (the slot).
    slot = ComputeSlot()
    batcher = None
    if models is not None and settings.diffusion_batch_max > 1:
        batcher = Batcher(slot, settings.diffusion_batch_max, settings.diffusion_batch_wait_ms / 1000)
    runner = JobRunner(bucket, models, Notifier(settings, broker), claims=Claims(broker.client, settings),
                       requests=requests, quotas=Quotas(broker.client, settings), batcher=batcher)
    metrics_url = None
    if settings.runner_metrics_port is not None:
        server = metrics.serve(settings.runner_metrics_port, settings.runner_metrics_host)
        metrics_url = f"http://{settings.runner_metrics_host}:{server.server_port}/metrics"
        log.info("runner metrics at %s", metrics_url)
    # The refiner of chat turns, kept for the process (a local model loads on the first turn).
    declare_actors(broker, settings, runner, RunLocks(broker.client, settings),
                   TurnRunner(runner, broker, get_refiner(settings=settings)), slot=slot)
    # Webhook deliveries: their own actor, queue and threads, so they never hold up a job.
    deliveries = None
    if settings.webhook_worker_threads:
        declare_webhook_actor(broker, settings, Deliverer(settings, bucket, broker.client))
    queues = [q for q, _ in served_queues(settings, settings.runner_serve)]
    for queue in queues:  # a runner may start before any job was sent to its queues
        broker.declare_queue(queue)
    heartbeat = Heartbeat(bucket, runner.stats, interval_s=settings.heartbeat_interval_s, info=runner.info,
                          loaded_models=lambda: models.loaded if models else [], queues=queues,
                          metrics_url=metrics_url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # What Dramatiq's own CLI does in a worker process; TimeLimit starts its timer thread here.
    broker.emit_after("process_boot")
    threads = settings.diffusion_batch_max if batcher else 1
    worker = Worker(broker, queues=set(queues), worker_threads=threads, worker_timeout=settings.runner_poll_ms)
    worker.start()
    tenant_queues = None
    if settings.tenant_queues:
        from gpu_runner.tenant_queues import TenantQueues

        tenant_queues = TenantQueues(broker, settings, worker, set(queues))
        tenant_queues.start()
    if settings.webhook_worker_threads:
        deliveries = Worker(broker, queues={settings.webhook_queue_name},
                            worker_threads=settings.webhook_worker_threads, worker_timeout=settings.runner_poll_ms)
        deliveries.start()
    heartbeat.start()
    log.info("runner consuming queues %s on %s with %d worker thread(s)%s", ", ".join(queues),
             mask_url_password(settings.redis_url), threads,
             f"; diffusion micro-batching up to {batcher.max_images} images, {settings.diffusion_batch_wait_ms} ms wait"
             if batcher else "")
    if ready_file:
        ready_file.write_text("ready\n")
    stop.wait()
    log.info("runner stopping")
    if tenant_queues:
        tenant_queues.stop()
    worker.stop(timeout=600_000)
    if deliveries:
        deliveries.stop(timeout=int(settings.webhook_timeout_s * 1000) + 5_000)
    heartbeat.stop()
    broker.close()
