"""The runner's promises, through real runner processes against the session's SeaweedFS and Redis.

Each test works in its own bucket and broker namespace, so the stack's own runner never takes
these jobs and nothing here counts or changes the shared bucket. The runners started here
reach the store through tests/fault_proxy.py, which records every request (so the order of
a runner's writes can be checked) and fails the requests a test picks (a store failing
transiently, by construction).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Middleware

from bucketbrush.broker import build_broker, enqueue_job
from bucketbrush.credentials import ensure_dev_credentials
from bucketbrush.jobs import JobSpec, ObjectRef, job_id_for
from bucketbrush.management import cancel_job
from bucketbrush.manifest import Manifest, RunnerStatus
from bucketbrush.routing import queue_for
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket, s3_client
from functions.events import S3Record
from functions.handler import Handler
from functions.reaper import fail_dead_running
from functions.sweep import manifest_times
from infra import procs
from infra.bucket import apply_bucket
from tests.fault_proxy import FaultProxy
from tests.helpers import check_outputs, png_bytes, wait_final

pytestmark = pytest.mark.e2e


@dataclass
class Corner:
    """One test's own bucket and namespace on the shared servers, and a runner's settings."""

    settings: Settings  # what the test's clients use (straight to the store)
    bucket: Bucket
    logs: Path

    def runner_env(self, s3_endpoint_url: str | None = None, **settings: object) -> dict[str, str]:
        s = self.settings
        env = {
            "BUCKETBRUSH_S3_ENDPOINT_URL": s3_endpoint_url or s.s3_endpoint_url or "",
            "BUCKETBRUSH_S3_ACCESS_KEY": s.s3_access_key or "",
            "BUCKETBRUSH_S3_SECRET_KEY": s.s3_secret_key.get_secret_value(),
            "BUCKETBRUSH_REDIS_URL": s.redis_url, "BUCKETBRUSH_BUCKET": s.bucket,
            "BUCKETBRUSH_BROKER_NAMESPACE": s.broker_namespace, "BUCKETBRUSH_STATE_DIR": str(s.state_dir),
            "BUCKETBRUSH_TEST_RECIPES": "true", "BUCKETBRUSH_WEBHOOK_WORKER_THREADS": "0",
            "BUCKETBRUSH_MAX_RETRIES": "2", "PYTHONUNBUFFERED": "1",
        }
        return env | {f"BUCKETBRUSH_{k.upper()}": str(v) for k, v in settings.items()}

    def input(self, name: str) -> ObjectRef:
        key = f"inbox/test-slow/{name}.png"
        put = self.bucket.s3.put_object(Bucket=self.bucket.name, Key=key, Body=png_bytes(), ContentType="image/png")
        return ObjectRef(bucket=self.bucket.name, key=key, etag=put["ETag"].strip('"'))

    def enqueue(self, recipe: str, name: str, namespace: str | None = None, **params: object) -> JobSpec:
        """A job on an input of its own, sent straight to the broker (no event source here)."""
        ref = self.input(name)
        spec = JobSpec(job_id=job_id_for(ref), recipe=recipe, source=ref, input=ref, params=params)
        settings = self.settings.model_copy(update={"broker_namespace": namespace or self.settings.broker_namespace})
        enqueue_job(build_broker(settings), settings, spec)
        return spec

    def outputs(self, job_id: str) -> list[str]:
        listed = self.bucket.s3.list_objects_v2(Bucket=self.bucket.name, Prefix=f"outputs/{job_id}/")
        return [o["Key"] for o in listed.get("Contents", [])]


def new_corner(settings: Settings, logs: Path) -> Corner:
    name = f"bbrun-{uuid.uuid4().hex[:10]}"
    own = settings.model_copy(update={"bucket": name, "broker_namespace": name, "state_dir": logs})
    apply_bucket(s3_client(own), own)
    ensure_dev_credentials(logs)  # its runners sign outputs with a development signer of its own
    return Corner(own, Bucket(own), logs)


@dataclass
class Runner:
    popen: object
    proc: procs.Proc

    @property
    def log(self) -> str:
        return Path(self.proc.log).read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert time.monotonic() < deadline, f"{text!r} not in the runner's log:\n{self.log[-3000:]}"
            time.sleep(0.1)
        return self.log


@contextlib.contextmanager
def runner(corner: Corner, name: str, env: dict[str, str]) -> Iterator[Runner]:
    """A real runner process (``bucketbrush runner``), stopped (by PID) when the block ends."""
    ready = corner.logs / f"{name}.ready"
    cmd = [sys.executable, "-m", "bucketbrush.cli", "runner", "--ready-file", str(ready)]
    popen, proc = procs.spawn(name, cmd, corner.logs, env)
    try:
        procs.wait_until(name, ready.exists, 120, popen, Path(proc.log))
        yield Runner(popen, proc)
    finally:
        procs.terminate(proc, 30)


def wait_status(bucket: Bucket, job_id: str, status: str, timeout: float = 60) -> Manifest:
    deadline = time.monotonic() + timeout
    while (manifest := bucket.read_manifest(job_id)) is None or manifest.status != status:
        assert time.monotonic() < deadline, f"job {job_id} not {status} after {timeout}s: {manifest}"
        time.sleep(0.05)
    return manifest


@pytest.fixture(scope="module")
def corner(stack, settings, tmp_path_factory) -> Corner:
    return new_corner(settings, tmp_path_factory.mktemp("runner-processes"))


@pytest.fixture(scope="module")
def proxy(corner) -> Iterator[FaultProxy]:
    with FaultProxy(corner.settings.s3_endpoint_url) as p:
        yield p


@pytest.fixture(scope="module")
def proxied_runner(corner, proxy) -> Iterator[Runner]:
    """The module's runner: it reaches the store through the proxy, retries twice."""
    with runner(corner, "runner", corner.runner_env(proxy.url)) as r:
        yield r


@pytest.fixture
def faults(proxy) -> Iterator[FaultProxy]:
    yield proxy
    proxy.fail = lambda method, path, body: False


# -- outputs, retries, duplicates -------------------------------------------------------------

def test_outputs_are_in_the_store_before_the_final_manifest(corner, proxy, proxied_runner):
    spec = corner.enqueue("test-slow", "order", seconds=0, steps=1, outputs=4)
    # A subscriber polling the manifest: the moment it reads `succeeded`, every output is there.
    manifest = wait_status(corner.bucket, spec.job_id, "succeeded")
    assert len(check_outputs(corner.bucket, manifest)) == 4
    # By construction, from the store's side: each output PUT had completed before the PUT
    # of the succeeded manifest began.
    prefix = f"/{corner.bucket.name}/"
    puts = proxy.seen("PUT", prefix + f"outputs/{spec.job_id}/")
    assert sorted(p.path.removeprefix(prefix) for p in puts) == sorted(o.key for o in manifest.outputs)
    final = [r for r in proxy.seen("PUT", prefix + corner.bucket.manifest_key(spec.job_id))
             if json.loads(r.body)["status"] == "succeeded"]
    assert len(final) == 1 and all(p.status == 200 for p in puts)
    assert max(p.ended for p in puts) < final[0].started


def test_outputs_of_a_failed_attempt_are_removed(corner, faults, proxied_runner):
    # Every output is in the store; then the store refuses the `succeeded` manifest (once:
    # until the job's `queued` manifest for its retry has been written).
    spec = corner.enqueue("test-slow", "final-write-fails", seconds=0, steps=1, outputs=2)
    key = f"/{corner.bucket.name}/" + corner.bucket.manifest_key(spec.job_id)

    def refuse_success_once(method: str, path: str, body: bytes) -> bool:
        if method != "PUT" or path != key or b'"succeeded"' not in body:
            return False
        return not [r for r in faults.seen("PUT", key) if json.loads(r.body)["status"] == "queued"]

    faults.fail = refuse_success_once
    manifest = wait_final(corner.bucket, spec.job_id, timeout=90)
    assert manifest.status == "succeeded" and manifest.attempts == 2, manifest
    assert len(check_outputs(corner.bucket, manifest)) == 2
    # The first attempt: both outputs written, its final manifest refused, both outputs removed
    # before its `queued` manifest (retryable, no outputs) was written.
    prefix = f"/{corner.bucket.name}/outputs/{spec.job_id}/"
    puts, deletes = faults.seen("PUT", prefix), faults.seen("DELETE", prefix)
    assert len(puts) == 4 and all(r.status == 200 for r in puts)
    assert sorted(r.path for r in deletes) == sorted(r.path for r in puts[:2])
    refused = [r for r in faults.seen("PUT", key) if r.faulted]
    [queued] = [r for r in faults.seen("PUT", key) if json.loads(r.body)["status"] == "queued"]
    assert refused and max(r.ended for r in puts[:2]) < refused[0].started
    assert max(r.ended for r in deletes) < queued.started < puts[2].started
    retry = json.loads(queued.body)
    assert retry["outputs"] == [] and retry["error"]["code"] == "transient_error" and retry["error"]["retryable"]


def test_an_unexpected_error_after_the_first_outputs_removes_them(corner, proxy, proxied_runner):
    # test-fail-late: its last output cannot be encoded (a Pillow error, not a JobError), after
    # the runner has written the others.
    spec = corner.enqueue("test-fail-late", "fail-late", outputs=3)
    manifest = wait_final(corner.bucket, spec.job_id, timeout=90)
    assert manifest.status == "failed" and manifest.error.code == "internal_error", manifest.error
    assert "cannot write mode CMYK as PNG" in manifest.error.message
    # Retried like a store error (it may be one in disguise), then final and not retryable.
    assert manifest.error.retryable is False and manifest.outputs == [] and manifest.attempts == 3
    prefix = f"/{corner.bucket.name}/outputs/{spec.job_id}/"
    written = proxy.seen("PUT", prefix)
    # Each of the three attempts wrote two outputs, then removed them.
    assert sorted(r.path.rsplit("/", 1)[1] for r in written) == ["first-2.png"] * 3 + ["first.png"] * 3
    assert all(r.status == 200 for r in written)
    assert len(proxy.seen("DELETE", prefix)) == 6
    assert corner.outputs(spec.job_id) == []


def test_transient_store_errors_are_retried_with_backoff_then_fail_retryable(corner, faults, proxied_runner):
    spec = corner.enqueue("test-slow", "transient", seconds=0, steps=1, outputs=2)
    second = f"/{corner.bucket.name}/outputs/{spec.job_id}/slow-2.png"
    faults.fail = lambda method, path, body: method == "PUT" and path == second
    manifest = wait_final(corner.bucket, spec.job_id, timeout=90)
    assert manifest.status == "failed" and manifest.error.code == "transient_error", manifest.error
    assert manifest.error.retryable is True and manifest.attempts == 3  # max_retries=2
    assert "SlowDown" in manifest.error.message and manifest.outputs == []
    # Between attempts the job was `queued`, retryable, and the store saw the first output
    # written once per attempt, each attempt later than the last by Dramatiq's backoff
    # (1-2 s after the first failure, 2-4 s after the second).
    key = f"/{corner.bucket.name}/" + corner.bucket.manifest_key(spec.job_id)
    states = [json.loads(r.body) for r in faults.seen("PUT", key)]
    queued = [m for m in states if m["status"] == "queued"]
    assert [m["attempts"] for m in queued] == [1, 2] and all(m["error"]["retryable"] for m in queued)
    firsts = [r.started for r in faults.seen("PUT", second.replace("slow-2.png", "slow.png"))]
    assert len(firsts) == 3
    assert firsts[1] - firsts[0] >= 1.0 and firsts[2] - firsts[1] >= 2.0
    assert all(r.faulted for r in faults.seen("PUT", second))
    assert corner.outputs(spec.job_id) == []  # the first output of each attempt was removed
    proxied_runner.wait_log("Retries exceeded for message")


def test_a_delivery_whose_manifest_is_final_is_skipped(corner, proxy, proxied_runner):
    spec = corner.enqueue("test-slow", "twice", seconds=0, steps=1)
    # The same message again (at-least-once delivery); one runner thread takes them in order.
    enqueue_job(build_broker(corner.settings), corner.settings, spec)
    log = proxied_runner.wait_log(f"job {spec.job_id} already succeeded; skipping duplicate delivery")
    manifest = wait_final(corner.bucket, spec.job_id)
    assert manifest.status == "succeeded" and manifest.attempts == 1
    assert log.count(f"job {spec.job_id} succeeded") == 1
    assert len(proxy.seen("PUT", f"/{corner.bucket.name}/outputs/{spec.job_id}/")) == 1
    assert corner.bucket.read_manifest(spec.job_id) == manifest  # not written again


def test_a_redelivered_handler_message_is_skipped_by_its_done_marker(corner, proxy, proxied_runner):
    """The handler's message carries the queued manifest's stamp, so its first delivery reads
    no manifest. Dramatiq delivering that same message again (a runner died before its ack)
    is told apart by the done marker in Redis: the runner reads the manifest and skips it."""
    sent: list[dramatiq.Message] = []

    class Sent(Middleware):
        def after_enqueue(self, broker, message, delay):  # noqa: ANN001, ANN201 - Dramatiq's hook
            sent.append(message)

    broker = build_broker(corner.settings)
    broker.add_middleware(Sent())
    handler = Handler(corner.settings, corner.bucket, broker, redis.Redis.from_url(corner.settings.redis_url))
    key = "inbox/test-slow/redelivered.png"
    put = corner.bucket.s3.put_object(Bucket=corner.bucket.name, Key=key, Body=png_bytes(), ContentType="image/png",
                                      Metadata={"seconds": "0", "steps": "1"})
    ref = ObjectRef(bucket=corner.bucket.name, key=key, etag=put["ETag"].strip('"'))
    outcome = handler.handle_record(S3Record.created("test", ref))
    assert outcome.action == "enqueued"
    [message] = sent
    assert message.args[0]["queued_at"] is not None  # the stamp: no manifest read on first delivery
    manifest = wait_final(corner.bucket, outcome.job_id)
    assert manifest.status == "succeeded"
    broker.enqueue(message)  # the very same message (same id) once more
    log = proxied_runner.wait_log(f"job {outcome.job_id} already succeeded; skipping duplicate delivery")
    assert log.count(f"job {outcome.job_id} succeeded") == 1
    assert len(proxy.seen("PUT", f"/{corner.bucket.name}/outputs/{outcome.job_id}/")) == 1
    assert corner.bucket.read_manifest(outcome.job_id) == manifest  # not written again


# -- stopping -------------------------------------------------------------------------------

def test_sigterm_lets_the_current_job_finish(corner):
    namespace = f"{corner.settings.broker_namespace}-term"
    with runner(corner, "runner-term", corner.runner_env(BROKER_NAMESPACE=namespace)) as r:
        # test-slow: 8 s by construction; the stop arrives while it runs.
        spec = corner.enqueue("test-slow", "sigterm", namespace=namespace, seconds=8, steps=80)
        wait_status(corner.bucket, spec.job_id, "running")
        r.popen.send_signal(signal.SIGTERM)
        stopped_at = time.time()
        assert r.popen.wait(60) == 0, r.log[-3000:]
    assert "runner stopping" in r.log
    manifest = corner.bucket.read_manifest(spec.job_id)
    assert manifest.status == "succeeded", manifest
    assert manifest.timings["finished_at"] > stopped_at
    # Its message was acknowledged: nothing of this namespace is left in Redis to redeliver.
    client = redis.Redis.from_url(corner.settings.redis_url)
    assert client.hlen(f"{namespace}:{queue_for(corner.settings, 'test-slow')}.msgs") == 0
    assert not [k for k in client.scan_iter(f"{namespace}:__acks__.*.*") if client.scard(k)]  # unacked sets


def test_the_default_time_limit_from_settings(corner):
    # job_time_limit_s, set where jobs are enqueued (Dramatiq's TimeLimit reads it from the
    # message) and where they run (the manifest's message), as one deployment's settings are.
    namespace = f"{corner.settings.broker_namespace}-limit"
    with runner(corner, "runner-limit", corner.runner_env(BROKER_NAMESPACE=namespace, JOB_TIME_LIMIT_S=2)):
        limited = corner.settings.model_copy(update={"job_time_limit_s": 2})
        spec = Corner(limited, corner.bucket, corner.logs).enqueue("test-slow", "default-limit", namespace=namespace,
                                                                   seconds=60, steps=600)
        manifest = wait_final(corner.bucket, spec.job_id, timeout=90)
    assert manifest.status == "failed" and manifest.error.code == "timed_out", manifest.error
    assert "time limit of 2 s" in manifest.error.message and manifest.attempts == 1
    # Cut short: a one-minute job (an upper bound with a wide margin, not a timing test).
    assert manifest.timings["finished_at"] - manifest.timings["started_at"] < 30


# -- the reaper -----------------------------------------------------------------------------

def test_reaper_spares_jobs_on_live_runners_and_fails_those_of_dead_ones(corner):
    beat = {"HEARTBEAT_INTERVAL_S": 1}
    live_ns, dead_ns = (f"{corner.settings.broker_namespace}-{n}" for n in ("live", "dead"))
    with runner(corner, "runner-live", corner.runner_env(BROKER_NAMESPACE=live_ns, **beat)) as live, \
            runner(corner, "runner-dead", corner.runner_env(BROKER_NAMESPACE=dead_ns, **beat)) as dead:
        # Both slow by construction; the live one is cancelled at the end.
        live_job = corner.enqueue("test-slow", "reaper-live", namespace=live_ns, seconds=120, steps=1200)
        dead_job = corner.enqueue("test-slow", "reaper-dead", namespace=dead_ns, seconds=120, steps=1200)
        pids = {live.popen.pid: live_job.job_id, dead.popen.pid: dead_job.job_id}

        def beats() -> dict[int, RunnerStatus]:
            return {r.pid: r for r in corner.bucket.runner_statuses() if r.pid in pids}

        # Each runner has said, in its heartbeat, which job it is on.
        wait_for(lambda: all(b.current_job == pids[pid] for pid, b in beats().items()) and len(beats()) == 2)
        # And each job's running manifest is written (the monitor's first write, one progress
        # interval in: a shuffled run under load killed the runner before it).
        for job in (live_job, dead_job):
            wait_status(corner.bucket, job.job_id, "running")
        dead.popen.send_signal(signal.SIGKILL)  # dies mid-job: no final manifest, no more beats
        dead.popen.wait(10)
        wait_for(lambda: not beats()[dead.popen.pid].is_fresh() and beats()[live.popen.pid].is_fresh())
        # Both jobs are past their deadline for a reaper that thinks test-slow has 1 s.
        strict = corner.settings.model_copy(update={"recipe_time_limits_s": {"test-slow": 1}})
        failed = fail_dead_running(strict, corner.bucket, manifest_times(corner.bucket), now=time.time(),
                                   margin_s=0)
        assert failed == 1
        dead_manifest = corner.bucket.read_manifest(dead_job.job_id)
        assert dead_manifest.status == "failed" and dead_manifest.error.code == "timed_out"
        assert dead_manifest.error.retryable is True
        assert corner.bucket.read_manifest(live_job.job_id).status == "running"
        # The live runner still owns its job: it ends it (cancelled on request), not the reaper.
        cancel_job(corner.bucket, live_job.job_id)
        assert wait_final(corner.bucket, live_job.job_id).status == "cancelled"


def wait_for(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# -- the event source's periodic sweep ----------------------------------------------------------

def test_the_event_source_runs_the_periodic_sweep(stack, settings, tmp_path):
    corner = new_corner(settings, tmp_path)
    ref = corner.input("unannounced")
    # A cursor from the future (as if restored from a later backup): the subscription skips
    # every event up to then, so only the sweep can find the input.
    cursor = tmp_path / "cursor.txt"
    cursor.write_text(f"{time.time_ns() + 3600 * 10**9}\n")
    ready = tmp_path / "events.ready"
    env = corner.runner_env(SWEEP_INTERVAL_S=1, SWEEP_GRACE_S=0)
    cmd = [sys.executable, "-m", "bucketbrush.cli", "events", "seaweedfs", "--filer", stack.read_state().filer,
           "--cursor", str(cursor), "--ready-file", str(ready)]
    popen, proc = procs.spawn("events", cmd, tmp_path, env)
    try:
        procs.wait_until("events", ready.exists, 120, popen, Path(proc.log))
        job_id = job_id_for(ref)
        line = f"sweep recovered {ref.key}: job {job_id}"
        wait_for(lambda: line in Path(proc.log).read_text(errors="replace"))
        assert corner.bucket.read_manifest(job_id).status == "queued"  # the handler's, via the sweep
    finally:
        procs.terminate(proc, 30)


# -- conditional manifest writes -----------------------------------------------------------------

def test_seaweedfs_honours_if_match_so_the_reaper_never_overwrites_a_result(corner, proxy):
    """The reaper writes its failed manifest with If-Match on the ETag it read. SeaweedFS 4.48
    checks it (412 PreconditionFailed), so a runner that finished in between wins."""
    job_id = "ifmatch" + uuid.uuid4().hex[:17]
    running = Manifest(job_id=job_id, status="running", recipe="test-slow")
    corner.bucket.write_manifest(running)
    seen, etag = corner.bucket.read_manifest_with_etag(job_id)  # what the reaper read
    # Meanwhile the runner finishes the job.
    corner.bucket.write_manifest(seen.model_copy(update={"status": "succeeded"}))
    # The reaper's write, through the recording proxy: sent conditional, refused by the store.
    via_proxy = corner.settings.model_copy(update={"s3_endpoint_url": proxy.url})
    reaper_view = Bucket(via_proxy)
    assert reaper_view.write_manifest(seen.model_copy(update={"status": "failed"}), if_match=etag) is False
    [put] = proxy.seen("PUT", f"/{corner.bucket.name}/{corner.bucket.manifest_key(job_id)}")
    assert put.status == 412
    assert corner.bucket.read_manifest(job_id).status == "succeeded"
    # With the current ETag the same write goes through.
    _, current = corner.bucket.read_manifest_with_etag(job_id)
    assert reaper_view.write_manifest(seen.model_copy(update={"status": "failed"}), if_match=current) is True
    assert corner.bucket.read_manifest(job_id).status == "failed"


def test_a_store_without_conditional_puts_gets_a_plain_write(corner, proxy):
    """Where a store answers NotImplemented to a conditional PUT, the write is sent again
    plain (docs/architecture.md): last writer wins there, so the reaper's write replaces a
    result written meanwhile; the race is only narrowed (the margin, the heartbeat check)."""
    job_id = "noifmatch" + uuid.uuid4().hex[:15]
    corner.bucket.write_manifest(Manifest(job_id=job_id, status="running", recipe="test-slow"))
    seen, etag = corner.bucket.read_manifest_with_etag(job_id)
    corner.bucket.write_manifest(seen.model_copy(update={"status": "succeeded"}))
    reaper_view = Bucket(corner.settings.model_copy(update={"s3_endpoint_url": proxy.url}))
    proxy.conditional_puts = False
    try:
        assert reaper_view.write_manifest(seen.model_copy(update={"status": "failed"}), if_match=etag) is True
    finally:
        proxy.conditional_puts = True
    puts = proxy.seen("PUT", f"/{corner.bucket.name}/{corner.bucket.manifest_key(job_id)}")
    assert [p.status for p in puts] == [501, 200]  # refused as conditional, then written plain
    assert corner.bucket.read_manifest(job_id).status == "failed"
