"""A private local stack for one benchmark run, the percentile the tables report, and a timer."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.manifest import Manifest
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from infra.local import LocalStack


@contextmanager
def private_stack(state_dir: Path | None = None, runners: int = 1, **settings: Any) -> Iterator[LocalStack]:
    """SeaweedFS, a private Redis, the event source and ``runners`` runners in a temporary state dir."""
    with tempfile.TemporaryDirectory() as tmp:
        state = state_dir or Path(tmp)
        # Commands in this process must find this stack, not a developer's own.
        os.environ["BUCKETBRUSH_STATE_DIR"] = str(state)
        stack = LocalStack(Settings(state_dir=state, local_redis="always", bucket="bench", **settings))
        stack.up(runners=runners)
        try:
            yield stack
        finally:
            stack.down()


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method), or the value itself for a single sample."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and p90 milliseconds of ``repeat`` calls of ``fn``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=10)[-1]


def upload_and_wait(bucket: Bucket, key: str, body: bytes, **metadata: str) -> tuple[float, Manifest]:
    """PUT ``body`` at ``key`` (a drop-folder upload) and wait for its job's final manifest:
    (the wall time just before the PUT, the manifest), which must say ``succeeded``."""
    t0 = time.time()
    etag = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=body, Metadata=metadata)["ETag"].strip('"')
    job_id = job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=etag))
    while (m := bucket.read_manifest(job_id)) is None or not m.is_final:
        time.sleep(0.05)  # the stamps are exact; polling hard would load the CPU under test
    assert m.status == "succeeded", m.error
    return t0, m
