"""The event source as a long-running service: a source (SeaweedFS subscription, SQS poller)
feeding the handler until SIGTERM or SIGINT, with the periodic reconciling sweep beside it.

``bucketbrush events seaweedfs|sqs`` run these; the local stack starts the first.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from bucketbrush.manifest import SourceStatus
from bucketbrush.settings import Settings
from bucketbrush.status import HeartbeatThread, process_id
from bucketbrush.store import Bucket
from functions.handler import Handler


class EventSource(Protocol):
    def run(self, stop: threading.Event, *, on_ready: Any = None) -> None: ...


def seaweedfs_source(settings: Settings, *, filer: str, cursor: Path | None = None,
                     handler: Handler | None = None) -> EventSource:
    """Follow the SeaweedFS filer's metadata log, with its cursor in the state dir by default."""
    from functions.sources.seaweedfs import Cursor, FilerSubscription

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    where = cursor or settings.state_dir / f"cursor-{settings.bucket}.txt"
    handler = handler or Handler.from_settings(settings)
    return FilerSubscription(filer=filer, bucket=settings.bucket, cursor=Cursor(where),
                             handle=handler.handle, submit=handler.submit)


def sqs_source(settings: Settings, *, queue_url: str, endpoint_url: str | None = None,
               handler: Handler | None = None) -> EventSource:
    """Long-poll an SQS queue fed by S3 (or S3 -> SNS) notifications."""
    from functions.sources.sqs import SqsPoller, sqs_client

    sqs = sqs_client(settings, endpoint_url or settings.sqs_endpoint_url)
    handler = handler or Handler.from_settings(settings)
    return SqsPoller(sqs, queue_url, handler.handle, submit=handler.submit,
                     wait_time_s=settings.sqs_wait_time_s, visibility_timeout_s=settings.sqs_visibility_timeout_s)


def run_event_source(settings: Settings, source: EventSource, *, ready_file: Path | None = None,
                     kind: str = "events", handler: Handler | None = None) -> None:
    """Run ``source`` until SIGTERM/SIGINT, with the periodic sweep beside it and a heartbeat
    at ``status/sources/<host>-<pid>.json`` (``handler``: the source's, for its counters)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    start_periodic_sweep(settings, stop)
    heartbeat = source_heartbeat(settings, kind, handler)
    heartbeat.start()
    try:
        source.run(stop, on_ready=(lambda: ready_file.write_text("ready\n")) if ready_file else None)
    finally:
        heartbeat.stop()


def source_heartbeat(settings: Settings, kind: str, handler: Handler | None) -> HeartbeatThread:
    bucket = Bucket(settings)
    source_id, started_at = process_id(), time.time()
    stats = handler.stats if handler else {}

    def status() -> SourceStatus:
        return SourceStatus(
            source_id=source_id, kind=kind, host=socket.gethostname(), pid=os.getpid(),
            records=stats.get("records", 0), enqueued=stats.get("enqueued", 0),
            last_event_at=stats.get("last_event_at"), started_at=started_at, updated_at=time.time(),
            interval_s=settings.heartbeat_interval_s)

    return HeartbeatThread(bucket, bucket.layout.source_heartbeat_key(source_id), status,
                           interval_s=settings.heartbeat_interval_s)


def start_periodic_sweep(settings: Settings, stop: threading.Event) -> threading.Thread | None:
    """The reconciling sweep in a thread of this process (``sweep_interval_s`` 0: off)."""
    if settings.sweep_interval_s <= 0:
        return None
    from functions.sweep import run_periodic

    # Its own handler (broker, S3 client): the source's thread keeps the other.
    thread = threading.Thread(
        target=run_periodic, args=(settings, Handler.from_settings(settings), stop), name="sweep", daemon=True,
        kwargs={"interval_s": settings.sweep_interval_s, "grace_s": settings.sweep_grace_s})
    thread.start()
    return thread
