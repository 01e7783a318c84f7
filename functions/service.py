"""The event source as a long-running service: a source (SeaweedFS subscription, SQS poller)
feeding the handler until SIGTERM or SIGINT, with the periodic reconciling sweep beside it.

``bucketbrush events seaweedfs|sqs`` run these; the local stack starts the first.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Protocol

from bucketbrush.settings import Settings
from functions.handler import Handler


class EventSource(Protocol):
    def run(self, stop: threading.Event, *, on_ready: Any = None) -> None: ...


def seaweedfs_source(settings: Settings, *, filer: str, cursor: Path | None = None) -> EventSource:
    """Follow the SeaweedFS filer's metadata log, with its cursor in the state dir by default."""
    from functions.sources.seaweedfs import Cursor, FilerSubscription

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    where = cursor or settings.state_dir / f"cursor-{settings.bucket}.txt"
    return FilerSubscription(filer=filer, bucket=settings.bucket, cursor=Cursor(where),
                             handle=Handler.from_settings(settings).handle)


def sqs_source(settings: Settings, *, queue_url: str, endpoint_url: str | None = None) -> EventSource:
    """Long-poll an SQS queue fed by S3 (or S3 -> SNS) notifications."""
    from functions.sources.sqs import SqsPoller, sqs_client

    sqs = sqs_client(settings, endpoint_url or settings.sqs_endpoint_url)
    return SqsPoller(sqs, queue_url, Handler.from_settings(settings).handle,
                     wait_time_s=settings.sqs_wait_time_s, visibility_timeout_s=settings.sqs_visibility_timeout_s)


def run_event_source(settings: Settings, source: EventSource, *, ready_file: Path | None = None) -> None:
    """Run ``source`` until SIGTERM/SIGINT, with the periodic sweep beside it."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    start_periodic_sweep(settings, stop)
    source.run(stop, on_ready=(lambda: ready_file.write_text("ready\n")) if ready_file else None)


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
