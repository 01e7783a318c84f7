"""``bucketbrush status``: runner heartbeats (from the bucket) and queue depths (from Redis)."""

from __future__ import annotations

import json
import time
from typing import Any

import dramatiq

from bucketbrush.store import Bucket


def runner_heartbeats(bucket: Bucket) -> list[dict[str, Any]]:
    """Every runner's last heartbeat, with ``stale`` set when it missed three beats."""
    prefix = f"{bucket.settings.status_prefix}runners/"
    runners = []
    for obj in bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix=prefix).get("Contents", []):
        try:
            doc = json.loads(bucket.s3.get_object(Bucket=bucket.name, Key=obj["Key"])["Body"].read())
        except ValueError:
            continue
        age = time.time() - doc.get("updated_at", 0)
        doc["age_s"] = round(age, 1)
        doc["stale"] = age > 3 * doc.get("interval_s", 10)
        runners.append(doc)
    return runners


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
