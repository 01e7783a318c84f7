"""The runner process: one Dramatiq worker thread per process (one process per GPU)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from dramatiq import Worker

from bucketbrush.broker import build_broker
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from bucketbrush.webhooks import Deliverer, Notifier, declare_webhook_actor
from gpu_runner.actors import declare_actors
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
    runner = JobRunner(bucket, models, Notifier(settings, broker))
    # The refiner of chat turns, kept for the process (a local model loads on the first turn).
    declare_actors(broker, settings, runner, TurnRunner(runner, broker, get_refiner(settings=settings)))
    # Webhook deliveries: their own actor, queue and threads, so they never hold up a job.
    deliveries = None
    if settings.webhook_worker_threads:
        declare_webhook_actor(broker, settings, Deliverer(settings, bucket, broker.client))
    heartbeat = Heartbeat(bucket, runner.stats, interval_s=settings.heartbeat_interval_s, info=runner.info,
                          loaded_models=lambda: models.loaded if models else [])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # What Dramatiq's own CLI does in a worker process; TimeLimit starts its timer thread here.
    broker.emit_after("process_boot")
    worker = Worker(broker, queues={settings.queue_name}, worker_threads=1, worker_timeout=settings.runner_poll_ms)
    worker.start()
    if settings.webhook_worker_threads:
        deliveries = Worker(broker, queues={settings.webhook_queue_name},
                            worker_threads=settings.webhook_worker_threads, worker_timeout=settings.runner_poll_ms)
        deliveries.start()
    heartbeat.start()
    log.info("runner consuming queue %r on %s", settings.queue_name, settings.redis_url)
    if ready_file:
        ready_file.write_text("ready\n")
    stop.wait()
    log.info("runner stopping")
    worker.stop(timeout=600_000)
    if deliveries:
        deliveries.stop(timeout=int(settings.webhook_timeout_s * 1000) + 5_000)
    heartbeat.stop()
    broker.close()
