"""``bucketbrush status``: every part of the stack and its state.

The store and the broker (reachable or not), the queue's depths (ready, waiting to retry,
dead-lettered), the event sources and runners from their heartbeats in the bucket
(``status/sources/``, ``status/runners/``). A heartbeat older than ``heartbeat_expire_s`` is a
process gone for good: ``prune_heartbeats`` deletes it (``status`` and the sweep call it), so a
runner killed long ago is listed as STALE for a while, then no more.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from bucketbrush.manifest import RunnerStatus, SourceStatus
from bucketbrush.routing import all_queues, tenant_queues
from bucketbrush.settings import Settings, mask_url_password
from bucketbrush.store import Bucket

log = logging.getLogger(__name__)


def _heartbeat_view(status: Any, now: float) -> dict[str, Any]:
    return {**status.model_dump(), "age_s": round(status.age_s(now), 1), "stale": not status.is_fresh(now)}


def runner_heartbeats(bucket: Bucket, now: float | None = None) -> list[dict[str, Any]]:
    """Every runner's last heartbeat, with its ``age_s`` and ``stale`` (missed three beats)."""
    now = time.time() if now is None else now
    return [_heartbeat_view(r, now) for r in bucket.runner_statuses()]


def heartbeat_id(key: str) -> str:
    """The runner or source id of a heartbeat key (``status/runners/<id>.json``)."""
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def prune_heartbeats(bucket: Bucket, *, older_than_s: float | None = None, now: float | None = None,
                     beats: list[tuple[str, RunnerStatus | SourceStatus]] | None = None) -> list[str]:
    """Delete the heartbeats (runners and event sources) not rewritten for ``older_than_s``
    (default ``heartbeat_expire_s``; 0: keep all); the ids deleted. ``beats``: (key, heartbeat)
    pairs already read, else both prefixes are read here."""
    older_than_s = bucket.settings.heartbeat_expire_s if older_than_s is None else older_than_s
    if older_than_s <= 0:
        return []
    now = time.time() if now is None else now
    gone = []
    if beats is None:
        beats = [*bucket.heartbeats(bucket.layout.runners, RunnerStatus),
                 *bucket.heartbeats(bucket.layout.sources, SourceStatus)]
    for key, beat in beats:
        if beat.age_s(now) > older_than_s:
            bucket.s3.delete_object(Bucket=bucket.name, Key=key)
            gone.append(heartbeat_id(key))
            log.info("removed the heartbeat %s: not updated for %.0f s", key, beat.age_s(now))
    return gone


def queue_depths(broker: dramatiq.Broker, queue_name: str, namespace: str) -> dict[str, int]:
    """Ready, delayed (waiting for a retry) and dead-lettered messages in Dramatiq's Redis keys."""
    client = broker.client
    base = f"{namespace}:{queue_name}"
    return {
        "ready": client.llen(base),
        "delayed": client.hlen(f"{base}.DQ.msgs"),
        "dead_lettered": client.zcard(f"{base}.XQ"),
    }


def job_queue_depths(broker: dramatiq.Broker, settings: Settings) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(totals over every job queue of ``bucketbrush.routing``, the depths of each)."""
    queues = [*all_queues(settings), *tenant_queues(settings, broker.client)]  # the tenants' too (tenant_queues)
    each = {q: queue_depths(broker, q, settings.broker_namespace) for q in queues}
    totals = {k: sum(d[k] for d in each.values()) for k in ("ready", "delayed", "dead_lettered")}
    return totals, each


def _check(call: Callable[[], Any]) -> tuple[bool, str | None, Any]:
    try:
        return True, None, call()
    except Exception as exc:  # noqa: BLE001 - any failure is "unreachable", with its reason
        return False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300], None


def status_report(bucket: Bucket, broker: dramatiq.Broker, *, prune: bool = True) -> dict[str, Any]:
    """Every part and its state; never raises for a part that is down (it says so)."""
    s = bucket.settings
    store_ok, store_error, _ = _check(lambda: bucket.s3.head_bucket(Bucket=bucket.name))
    broker_ok, broker_error, _ = _check(lambda: broker.client.ping())
    report: dict[str, Any] = {
        "ok": store_ok and broker_ok,
        "bucket": s.bucket,
        "store": {"endpoint": s.s3_endpoint_url or "AWS S3", "bucket": s.bucket, "reachable": store_ok,
                  "error": store_error},
        "broker": {"url": mask_url_password(s.redis_url), "namespace": s.broker_namespace, "reachable": broker_ok,
                   "error": broker_error},
        "queue": None, "queues": {}, "event_sources": [], "runners": [], "pruned": [],
    }
    if broker_ok:  # "queue": the totals over every job queue; "queues": each one
        ok, error, depths = _check(lambda: job_queue_depths(broker, s))
        report["queue"] = {"name": s.queue_name, **depths[0]} if ok else {"name": s.queue_name, "error": error}
        report["queues"] = depths[1] if ok else {}
    if store_ok:
        # One read of each prefix serves both the pruning and the report.
        now = time.time()
        sources = bucket.heartbeats(bucket.layout.sources, SourceStatus)
        runners = bucket.heartbeats(bucket.layout.runners, RunnerStatus)
        if prune:
            report["pruned"] = prune_heartbeats(bucket, now=now, beats=[*runners, *sources])
        kept = [(k, b) for k, b in [*sources, *runners] if heartbeat_id(k) not in report["pruned"]]
        report["event_sources"] = [_heartbeat_view(b, now) for _, b in kept if isinstance(b, SourceStatus)]
        report["runners"] = [_heartbeat_view(b, now) for _, b in kept if isinstance(b, RunnerStatus)]
    return report


class HeartbeatThread:
    """Rewrites ``key`` with ``status()`` every ``interval_s`` in a daemon thread, and deletes
    it on ``stop`` (a process that stops cleanly leaves no heartbeat behind)."""

    def __init__(self, bucket: Bucket, key: str, status: Callable[[], BaseModel], *, interval_s: float) -> None:
        self.bucket = bucket
        self.key = key
        self.status = status
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def beat(self) -> None:
        self.bucket.s3.put_object(Bucket=self.bucket.name, Key=self.key, ContentType="application/json",
                                  Body=self.status().model_dump_json(indent=2).encode())

    def _loop(self) -> None:
        while True:
            try:
                self.beat()
            except (ClientError, BotoCoreError) as exc:
                log.warning("heartbeat failed: %s", exc)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.bucket.s3.delete_object(Bucket=self.bucket.name, Key=self.key)
        except (ClientError, BotoCoreError):
            pass


def process_id() -> str:
    """``<host>-<pid>``: how heartbeats name a process."""
    return f"{socket.gethostname()}-{os.getpid()}"
