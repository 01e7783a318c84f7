"""Prometheus metrics (prometheus-client) of the runner and the functions host.

The runner serves them on ``BUCKETBRUSH_RUNNER_METRICS_PORT`` (its heartbeat names the URL);
the functions host on its own ``GET /metrics``. Names and labels are listed in
docs/operations.md, "Metrics". Every process keeps its own counts (the default registry, with
prometheus-client's process and platform collectors): Prometheus adds them up across runners.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest, start_http_server

__all__ = ["CONTENT_TYPE_LATEST", "JOBS", "PROCESSING", "QUEUE_WAIT", "STORE_REQUESTS", "STORE_REQUESTS_PER_JOB",
           "HANDLER_EVENTS", "HANDLER_PENDING", "HANDLER_RUNNING", "WEBHOOK_DELIVERIES", "count_outcomes",
           "count_request", "exposition", "observe_job", "serve"]

JOBS = Counter("bucketbrush_jobs", "Jobs a runner ended, by recipe and status (queued: a transient failure left "
               "for a retry; skipped: a repeated delivery of a finished job)", ["recipe", "status"])
QUEUE_WAIT = Histogram(
    "bucketbrush_job_queue_wait_seconds", "From the enqueue to the runner starting the job", ["recipe"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))
PROCESSING = Histogram(
    "bucketbrush_job_processing_seconds", "The recipe's own time (timings.processing_s)", ["recipe"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
STORE_REQUESTS_PER_JOB = Histogram(
    "bucketbrush_job_store_requests", "S3 requests the runner sent for one job (heartbeats not counted)", ["recipe"],
    buckets=(1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30, 50, 100))
STORE_REQUESTS = Counter(
    "bucketbrush_store_requests", "S3 requests sent, by operation and what the key is "
    "(manifest, output, index, cancel, status, input, other)", ["operation", "kind"])
HANDLER_EVENTS = Counter(
    "bucketbrush_handler_events", "Event records the handler took, by outcome (enqueued, duplicate, ignored, "
    "rejected, error)", ["outcome"])
HANDLER_PENDING = Gauge(
    "bucketbrush_handler_records_pending", "Event records the handler accepted and has not finished (waiting for "
    "their key's earlier records or a thread, or being handled); bounded by handler_max_pending")
HANDLER_RUNNING = Gauge(
    "bucketbrush_handler_records_running", "Event records being handled now (at most handler_concurrency)")
WEBHOOK_DELIVERIES = Counter(
    "bucketbrush_webhook_deliveries", "Webhook delivery attempts, by event type and outcome (delivered, retrying, "
    "failed, refused, skipped, disabled)", ["type", "outcome"])


def count_request(operation: str, kind: str) -> None:
    """A ``RequestCounter``'s ``on_request``: the totals."""
    STORE_REQUESTS.labels(operation, kind).inc()


def observe_job(recipe: str, status: str, timings: dict[str, float], requests: dict[tuple[str, str], int]) -> None:
    """One job's end: its status, queue wait and processing time (when it has them), and
    the S3 requests it made (a ``RequestCounter.take()``; heartbeats left out)."""
    JOBS.labels(recipe, status).inc()
    if "queue_wait_s" in timings:
        QUEUE_WAIT.labels(recipe).observe(max(timings["queue_wait_s"], 0.0))
    if "processing_s" in timings:
        PROCESSING.labels(recipe).observe(timings["processing_s"])
    STORE_REQUESTS_PER_JOB.labels(recipe).observe(sum(n for (_, kind), n in requests.items() if kind != "status"))


def count_outcomes(actions: Iterable[str]) -> None:
    for action in actions:
        HANDLER_EVENTS.labels(action).inc()


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` from a daemon thread; the server (``server_port``: the port taken,
    for ``port=0``)."""
    server, _thread = start_http_server(port, addr=host)
    return server


def exposition() -> bytes:
    return generate_latest()
