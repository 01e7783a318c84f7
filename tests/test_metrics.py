"""Prometheus metrics, scraped from the session stack's real runner process (its heartbeat
names its /metrics URL); the functions host's /metrics is tested in tests/test_http.py."""

from __future__ import annotations

import time
import uuid

import httpx

from bucketbrush.samples import landscape
from bucketbrush.store import Bucket
from tests.helpers import drop, metric_samples, metric_value, png_bytes, wait_final


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return metric_samples(httpx.get(url, timeout=10).raise_for_status().text)


def total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def runner_metrics_url(bucket: Bucket) -> str:
    urls = [s.metrics_url for s in bucket.runner_statuses() if s.is_fresh() and s.metrics_url]
    assert len(urls) == 1, f"one runner with metrics expected: {bucket.runner_statuses()}"
    return urls[0]


def test_runner_counts_jobs_timings_store_requests_and_webhooks(bucket: Bucket):
    url = runner_metrics_url(bucket)
    before = scrape(url)
    # A per-job webhook to a closed loopback port: the delivery is attempted and refused.
    job_id = drop(bucket, f"inbox/filter/metrics/{uuid.uuid4().hex}.png", png_bytes(landscape(32, 24)),
                  Metadata={"style": "sepia", "webhook": "http://127.0.0.1:9/hook"})
    assert wait_final(bucket, job_id).status == "succeeded"
    deadline = time.monotonic() + 30
    while (after := scrape(url)) and total(after, "bucketbrush_webhook_deliveries_total") == \
            total(before, "bucketbrush_webhook_deliveries_total"):
        assert time.monotonic() < deadline, "no webhook delivery attempt was counted"
        time.sleep(0.2)

    def grew(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert grew("bucketbrush_jobs_total", recipe="filter", status="succeeded") >= 1
    assert grew("bucketbrush_job_queue_wait_seconds_count", recipe="filter") >= 1
    assert grew("bucketbrush_job_processing_seconds_count", recipe="filter") >= 1
    assert grew("bucketbrush_job_store_requests_count", recipe="filter") >= 1
    # A one-output job with no progress writes: at most 6 requests from the runner
    # (cancel check, input, output, final manifest, its index entry, the old entry's removal).
    assert grew("bucketbrush_job_store_requests_bucket", recipe="filter", le="6.0") >= 1
    assert grew("bucketbrush_store_requests_total", operation="PutObject", kind="output") >= 1
    assert grew("bucketbrush_store_requests_total", operation="GetObject", kind="input") >= 1
    # Heartbeats are counted in the totals, never in a job's requests.
    assert metric_value(after, "bucketbrush_store_requests_total", operation="PutObject", kind="status") >= 1
