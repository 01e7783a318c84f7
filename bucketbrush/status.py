"""``bucketbrush status``: runner heartbeats (from the bucket) and queue depths (from Redis)."""

from __future__ import annotations

import time
from typing import Any

import dramatiq

from bucketbrush.store import Bucket


def runner_heartbeats(bucket: Bucket, now: float | None = None) -> list[dict[str, Any]]:
    """Every runner's last heartbeat, with its ``age_s`` and ``stale`` (missed three beats)."""
    now = time.time() if now is None else now
    return [{**r.model_dump(), "age_s": round(r.age_s(now), 1), "stale": not r.is_fresh(now)}
            for r in bucket.runner_statuses()]


def queue_depths(broker: dramatiq.Broker, queue_name: str, namespace: str) -> dict[str, int]:
    """Ready, delayed (waiting for a retry) and dead-lettered messages in Dramatiq's Redis keys."""
    client = broker.client
    base = f"{namespace}:{queue_name}"
    return {
        "ready": client.llen(base),
        "delayed": client.hlen(f"{base}.DQ.msgs"),
        "dead_lettered": client.zcard(f"{base}.XQ"),
    }


def status_report(bucket: Bucket, broker: dramatiq.Broker) -> dict[str, Any]:
    s = bucket.settings
    return {
        "bucket": s.bucket,
        "queue": {"name": s.queue_name, **queue_depths(broker, s.queue_name, s.broker_namespace)},
        "runners": runner_heartbeats(bucket),
    }
