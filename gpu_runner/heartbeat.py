"""Each runner publishes its state at ``status/runners/<runner_id>.json`` in the bucket, so any
app can see who is working on what with a plain GET; ``bucketbrush status`` reads them."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

from bucketbrush.manifest import RunnerStatus
from bucketbrush.status import HeartbeatThread, process_id
from bucketbrush.store import Bucket


def gpu_info() -> dict[str, Any] | None:
    """GPU name and memory, when torch is already loaded and sees one (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    return {"name": props.name, "memory_total": total, "memory_free": free}


class Heartbeat:
    """Publishes ``stats`` (the runner's counters) and ``info`` (its device) every ``interval_s``."""

    def __init__(self, bucket: Bucket, stats: dict[str, Any], *, interval_s: float,
                 info: dict[str, Any] | None = None, loaded_models: Any = lambda: [],
                 queues: list[str] | None = None,
                 metrics_url: str | None = None) -> None:
        self.metrics_url = metrics_url
        self.bucket = bucket
        self.stats = stats
        self.info = info or {}
        self.interval_s = interval_s
        self.loaded_models = loaded_models
        self.queues = queues or [bucket.settings.queue_name]
        self.runner_id = process_id()
        self.key = bucket.layout.heartbeat_key(self.runner_id)
        self.started_at = time.time()
        self._thread = HeartbeatThread(bucket, self.key, self.status, interval_s=interval_s)

    def status(self) -> RunnerStatus:
        return RunnerStatus(
            runner_id=self.runner_id, host=socket.gethostname(), pid=os.getpid(),
            queue=",".join(self.queues), device=self.info.get("device", "cpu"),
            visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            device_name=self.info.get("device_name"), gpu=gpu_info(),
            loaded_models=list(self.loaded_models()), jobs_done=self.stats["jobs_done"],
            jobs_failed=self.stats["jobs_failed"], current_job=self.stats["current_job"],
            started_at=self.started_at, updated_at=time.time(), interval_s=self.interval_s,
            metrics_url=self.metrics_url,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()
