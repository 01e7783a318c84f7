"""The functions host's bounded, per-key ordered pool, through the real host process.

A private local stack (no runner) and ``bucketbrush serve-functions`` as its own process,
with ``handler_concurrency`` 3 and ``handler_max_pending`` 5. The stack's SeaweedFS is paused
(SIGSTOP), so every record hangs in its queued-manifest PUT and the host's own gauges show
what is running and what waits: distinct keys are handled at once, a second event for a key
waits for the first even with a thread free, and past the bound the host answers 503 with
Retry-After at once, without growing its thread count.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from infra.local import LocalStack
from tests.helpers import EVENTS, metric_samples, metric_value

pytestmark = pytest.mark.e2e

TOKEN = "tok-pool-8e1d2c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONCURRENCY, PENDING = 3, 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(Settings(state_dir=tmp_path_factory.mktemp("http-pool"), local_redis="always",
                                bucket="pool"))
    stack.up(runners=0)
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def host(stack: LocalStack) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of ``bucketbrush serve-functions`` on the private stack."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {
        "BUCKETBRUSH_STATE_DIR": str(stack.state_dir), "BUCKETBRUSH_BUCKET": "pool",
        "BUCKETBRUSH_FUNCTIONS_TOKEN": TOKEN, "BUCKETBRUSH_HANDLER_CONCURRENCY": str(CONCURRENCY),
        "BUCKETBRUSH_HANDLER_MAX_PENDING": str(PENDING),
    }
    log = (stack.logs / "functions.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bucketbrush.cli", "serve-functions", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (stack.logs / "functions.log").read_text()
            assert time.monotonic() < deadline, "the functions host did not answer"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def event(key: str) -> tuple[dict, str]:
    """A plain S3 event for an upload at ``key`` (a fresh ETag: a new object version), and its job id."""
    ref = ObjectRef(bucket="pool", key=key, etag=secrets.token_hex(16), size=1000)
    doc = json.loads((EVENTS / "minio" / "put_documented.json").read_text())
    record = doc["Records"][0]
    record.update(eventSource="aws:s3", eventName="ObjectCreated:Put", awsRegion="us-east-1")
    record["s3"]["bucket"].update(name="pool", arn="arn:aws:s3:::pool")
    record["s3"]["object"].update(key=key, eTag=ref.etag, size=1000)
    record["s3"]["object"].pop("versionId", None)
    return {"Records": [record]}, job_id_for(ref)


def gauges(url: str) -> tuple[float, float]:
    samples = metric_samples(httpx.get(f"{url}/metrics", timeout=10).text)
    return (metric_value(samples, "bucketbrush_handler_records_running"),
            metric_value(samples, "bucketbrush_handler_records_pending"))


def wait_gauges(url: str, running: int, pending: int) -> None:
    deadline = time.monotonic() + 30
    while (seen := gauges(url)) != (running, pending):
        assert time.monotonic() < deadline, f"running, pending = {seen}; expected {(running, pending)}"
        time.sleep(0.05)


def threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def test_concurrent_ordered_and_bounded(stack: LocalStack, host: tuple[str, int]) -> None:
    url, pid = host
    weed = stack.read_state().process("seaweedfs")
    posts = ThreadPoolExecutor(16)

    def post(doc: dict) -> Future[httpx.Response]:
        return posts.submit(httpx.post, f"{url}/events/s3", json=doc, headers=AUTH, timeout=90)

    jobs = {}
    os.kill(weed.pid, signal.SIGSTOP)  # every record now hangs in its queued-manifest PUT
    try:
        first, jobs["a1"] = event("inbox/filter/pool/a.png")
        replies = [post(first)]
        wait_gauges(url, running=1, pending=1)
        second, jobs["a2"] = event("inbox/filter/pool/a.png")  # the same key again
        other, jobs["b"] = event("inbox/filter/pool/b.png")
        replies += [post(second), post(other)]
        # b runs beside a1; a2 waits for a1 although a thread is free.
        wait_gauges(url, running=2, pending=3)
        third, jobs["c"] = event("inbox/filter/pool/c.png")
        replies.append(post(third))
        wait_gauges(url, running=CONCURRENCY, pending=4)  # three keys handled at once
        fourth, jobs["d"] = event("inbox/filter/pool/d.png")
        replies.append(post(fourth))
        wait_gauges(url, running=CONCURRENCY, pending=PENDING)  # d waits for a thread
        before = threads(pid)
        # Past the bound: 503 with Retry-After, at once (the store is still paused).
        refused = [post(event(f"inbox/filter/pool/over-{i}.png")[0]) for i in range(20)]
        for reply in refused:
            response = reply.result(timeout=30)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
        assert threads(pid) <= before
        assert gauges(url) == (CONCURRENCY, PENDING)
    finally:
        os.kill(weed.pid, signal.SIGCONT)
    for reply in replies:
        response = reply.result(timeout=90)
        assert response.status_code == 200, response.text
        assert response.json()["outcomes"][0]["action"] == "enqueued"
    wait_gauges(url, running=0, pending=0)
    bucket = Bucket(stack.settings_for_clients())
    queued = {name: bucket.read_manifest(job_id).timings["queued_at"] for name, job_id in jobs.items()}
    # Handled in the order they came (a2 waited while a1 held its key, above).
    assert queued["a1"] < queued["a2"]
    posts.shutdown()
