"""Fault injection on a private local stack, and the count of what a fault cost.

Every scenario submits a burst of uploads through the bucket (the event source turns them into
jobs), breaks something mid-burst (kills or restarts a real process), waits a bounded time,
and reports (:class:`FaultReport`): jobs submitted, jobs with a final manifest, jobs lost (no
final manifest in time), jobs whose outputs were written twice (the bucket is versioned, so a
second PUT of an output leaves a second version) and the time from the repair to the last
final manifest. tests/faults/ asserts on the reports; bench/faults.py prints them as the
RELIABILITY.md table.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bucketbrush.gallery import enable_versioning
from bucketbrush.manifest import Manifest
from bucketbrush.samples import landscape
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from infra import procs
from infra.local import LocalStack
from tests.helpers import drop, png_bytes

# The fault stack: short heartbeats (a dead runner shows within seconds), no periodic sweep
# (scenarios run it when they mean to), a small death limit for the poison job.
FAULT_SETTINGS: dict[str, Any] = {
    "local_redis": "always", "bucket": "bbfault", "test_recipes": True, "heartbeat_interval_s": 1,
    "sweep_interval_s": 0, "max_runner_deaths": 2, "job_time_limit_s": 120,
    # Dramatiq gives a dead runner's messages back after this (a setting once issue 13 lands).
    "broker_heartbeat_timeout_s": 5,
}


@contextmanager
def fault_stack(state_dir: Path, *, runners: int = 2, **overrides: Any) -> Iterator[LocalStack]:
    """A private stack (own Redis, SeaweedFS, event source, ``runners`` runners), versioned."""
    # Only while it starts: the tests beside it use the session stack's state dir (its
    # children get theirs explicitly; clients here take explicit settings).
    stack = LocalStack(Settings(state_dir=state_dir, **(FAULT_SETTINGS | overrides)))
    before = os.environ.get("BUCKETBRUSH_STATE_DIR")
    os.environ["BUCKETBRUSH_STATE_DIR"] = str(state_dir)
    try:
        try:
            stack.up(runners=runners)
        finally:
            if before is None:
                os.environ.pop("BUCKETBRUSH_STATE_DIR", None)
            else:
                os.environ["BUCKETBRUSH_STATE_DIR"] = before
        enable_versioning(Bucket(stack.settings_for_clients()))
        yield stack
    finally:
        stack.down()


@dataclass
class FaultReport:
    scenario: str
    submitted: int
    final: int
    lost: int
    written_twice: int
    recover_s: float
    statuses: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    notes: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)  # what the tests check beyond the counts

    HEADER = "| scenario | submitted | final | lost | written twice | time to recover (s) | outcomes |"

    def row(self) -> str:
        outcomes = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        if self.codes:
            outcomes += " (" + ", ".join(f"{c}: {n}" for c, n in sorted(self.codes.items())) + ")"
        if self.notes:
            outcomes += f"; {self.notes}"
        return (f"| {self.scenario} | {self.submitted} | {self.final} | {self.lost} | {self.written_twice} "
                f"| {self.recover_s:.1f} | {outcomes} |")


# -- submitting and counting ------------------------------------------------------------------

def burst(bucket: Bucket, n: int, *, recipe: str = "test-slow", seconds: float = 0.3,
          tag: str | None = None) -> list[str]:
    """``n`` uploads of distinct content into ``inbox/<recipe>/``; their job ids."""
    tag = tag or uuid.uuid4().hex[:8]
    meta = {"seconds": str(seconds), "steps": "3"} if recipe.startswith("test-slow") else {}
    base = landscape(24, 16)
    ids = []
    for i in range(n):
        image = base.copy()
        image.putpixel((0, 0), (i % 256, i // 256 % 256, 7))  # distinct bytes: distinct jobs
        ids.append(drop(bucket, f"inbox/{recipe}/{tag}/{i:04d}.png", png_bytes(image), Metadata=meta))
    return ids


def manifests(bucket: Bucket, job_ids: list[str]) -> dict[str, Manifest | None]:
    return {j: bucket.read_manifest(j) for j in job_ids}


def wait_all_final(bucket: Bucket, job_ids: list[str], timeout: float) -> dict[str, Manifest | None]:
    """Poll until every job has a final manifest or ``timeout`` passes; the last reading."""
    deadline = time.monotonic() + timeout
    pending = set(job_ids)
    seen: dict[str, Manifest | None] = dict.fromkeys(job_ids)
    while pending and time.monotonic() < deadline:
        for j in list(pending):
            try:
                seen[j] = m = bucket.read_manifest(j)
            except (ClientError, BotoCoreError):
                continue  # the store is still coming back: ask again
            if m is not None and m.is_final:
                pending.discard(j)
        if pending:
            time.sleep(0.2)
    return seen


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def written_twice(bucket: Bucket, job_ids: list[str]) -> int:
    """Jobs with an output key holding more than one version (written by two runs)."""
    twice = 0
    for job_id in job_ids:
        prefix = bucket.output_key(job_id, "")
        versions = Counter()
        for page in bucket.s3.get_paginator("list_object_versions").paginate(Bucket=bucket.name, Prefix=prefix):
            versions.update(v["Key"] for v in page.get("Versions", []))
        twice += any(n > 1 for n in versions.values())
    return twice


def report(scenario: str, bucket: Bucket, job_ids: list[str], seen: dict[str, Manifest | None],
           repaired_at: float, notes: str = "") -> FaultReport:
    final = [m for m in seen.values() if m is not None and m.is_final]
    last = max((m.updated_at for m in final), default=repaired_at)
    return FaultReport(
        scenario=scenario, submitted=len(job_ids), final=len(final), lost=len(job_ids) - len(final),
        written_twice=written_twice(bucket, job_ids), recover_s=max(0.0, last - repaired_at),
        statuses=Counter(m.status if m else "none" for m in seen.values()),
        codes=Counter(m.error.code for m in final if m.error), notes=notes,
    )


def runs_logged(stack: LocalStack, job_id: str) -> int:
    """How many times any runner process began ``job_id`` (their logs; a run that
    found the job finished, or running elsewhere, is not a run)."""
    count = 0
    for log in (stack.logs).glob("runner-*.log"):
        count += log.read_text(errors="replace").count(f"job {job_id} succeeded")
    return count


# -- breaking things --------------------------------------------------------------------------

def kill(stack: LocalStack, name: str) -> procs.Proc:
    """SIGKILL one recorded process (no cleanup, as a crash or the OOM killer would)."""
    state = stack.read_state()
    proc = state.process(name)
    assert proc is not None and proc.alive(), f"{name} is not running"
    os.kill(proc.pid, signal.SIGKILL)
    wait_for(f"{name} to die", lambda: not proc.alive() or procs._is_zombie(proc.pid), 10)
    procs._reap(proc.pid)
    return proc


def restart_redis_empty(stack: LocalStack) -> str:
    """Kill the stack's Redis and start a new, empty one on the same port (it keeps no data)."""
    state = stack.read_state()
    old = kill(stack, "redis")
    (stack.state_dir / "redis" / "dump.rdb").unlink(missing_ok=True)  # left by a redis_outage
    port = int(state.redis_url.rsplit(":", 1)[1].split("/")[0])
    # Clients reconnecting to the dead port may hold it for a moment (refused, closing).
    wait_for(f"port {port} free", lambda: procs.port_free(port, reuse=True), 15)
    proc, url = procs.start_redis(stack.state_dir / "redis", stack.logs, port=port)
    state.processes[state.processes.index(old)] = proc  # recorded first: `down` stops it whatever follows
    stack._write_state(state)
    assert url == state.redis_url, f"redis came back on {url}, not {state.redis_url}"
    return url


def restart_server(stack: LocalStack, name: str, *, down_s: float = 0.0, env: dict[str, str] | None = None) -> None:
    """Kill a server process and start it again with the same command after ``down_s``."""
    state = stack.read_state()
    old = kill(stack, name)
    time.sleep(down_s)  # the outage itself: nothing to wait for
    popen, proc = procs.spawn(name, old.cmd, stack.logs, env)
    state.processes[state.processes.index(old)] = proc
    stack._write_state(state)


@contextmanager
def supervised(stack: LocalStack, names: list[str]) -> Iterator[Counter]:
    """Start again any of ``names`` (runners) that dies, as a process supervisor (compose's
    ``restart: always``, systemd) would; yields the count of restarts per name."""
    import threading

    restarts: Counter = Counter()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.2):
            state = stack.read_state()
            for name in names:
                proc = state.process(name) if state else None
                # A child that exited stays a zombie (same PID, same start time) until reaped.
                if proc is not None and (not proc.alive() or procs._is_zombie(proc.pid)):
                    procs._reap(proc.pid)
                    stack.restart_process(name)
                    restarts[name] += 1

    thread = threading.Thread(target=loop, name="supervisor", daemon=True)
    thread.start()
    try:
        yield restarts
    finally:
        stop.set()
        thread.join(150)


def current_job_of(bucket: Bucket, pid: int) -> str | None:
    """The job the runner process ``pid`` says (heartbeat) it is running."""
    for status in bucket.runner_statuses():
        if status.pid == pid and status.is_fresh():
            return status.current_job
    return None


def kill_runner_mid_job(stack: LocalStack, bucket: Bucket, name: str, spare: set[str],
                        timeout: float = 60) -> str:
    """SIGKILL runner ``name`` while it runs a job not in ``spare`` (killed before); that job."""
    def busy() -> str | None:
        state = stack.read_state()
        proc = state.process(name) if state else None
        if proc is None or not proc.alive():
            return None
        job = current_job_of(bucket, proc.pid)
        if job and job not in spare:
            m = bucket.read_manifest(job)
            if m is not None and m.status == "running":
                return job
        return None

    job = wait_for(f"{name} mid-job", busy, timeout)
    kill(stack, name)
    return job


def redelivery_s(settings: Settings) -> float:
    """How long the broker takes to give a dead runner's message back: its heartbeat timeout
    (Dramatiq's 60 s unless a setting says otherwise), plus a margin for its maintenance."""
    return float(getattr(settings, "broker_heartbeat_timeout_s", 60)) + 30


def redis_outage(stack: LocalStack, down_s: float) -> None:
    """Redis unavailable for ``down_s`` with its data intact: snapshot, kill, and after the
    outage the same server again (it loads the snapshot; the stack's Redis saves none itself)."""
    import redis

    state = stack.read_state()
    redis.Redis.from_url(state.redis_url).save()
    restart_server(stack, "redis", down_s=down_s)
    wait_for("redis back", lambda: procs.redis_answers(state.redis_url), 30)


def restart_seaweedfs(stack: LocalStack, down_s: float = 0.0) -> None:
    """SIGKILL SeaweedFS and start it again on the same ports and data (after ``down_s``)."""
    state = stack.read_state()
    restart_server(stack, "seaweedfs", down_s=down_s,
                   env={"AWS_ACCESS_KEY_ID": state.s3_access_key, "AWS_SECRET_ACCESS_KEY": state.s3_secret_key})
    s3 = Bucket(stack.settings_for_clients()).s3
    wait_for("seaweedfs back", lambda: _answers(s3, stack.settings.bucket), 90, interval=0.5)


def _answers(s3: Any, bucket: str) -> bool:
    """The store serves objects again (its S3 port may answer before its volumes do)."""
    try:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="manifests/", MaxKeys=1).get("Contents", [])
        for obj in listed:
            s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return True
    except Exception:  # noqa: BLE001 - anything means "not yet"
        return False


class FlakyProxy:
    """A TCP proxy on loopback in front of a server: adds ``latency_s`` before forwarding each
    chunk of a reply, and cuts the connection of every ``cut_every``-th request chunk (the
    client sees its connection closed with no reply). Counts request chunks and cuts."""

    def __init__(self, target_port: int, *, latency_s: float = 0.0, cut_every: int = 0) -> None:
        import socket
        import threading

        self.target_port, self.latency_s, self.cut_every = target_port, latency_s, cut_every
        self.requests = self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="proxy").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: Any, dst: Any, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests:
                    with self._lock:
                        self.requests += 1
                        cut = bool(self.cut_every) and self.requests % self.cut_every == 0
                        self.cuts += cut
                    if cut:  # drop both ends before the request reaches the server
                        break
                elif self.latency_s:
                    time.sleep(self.latency_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass


@contextmanager
def proxied_runner(stack: LocalStack, s3_url: str) -> Iterator[procs.Proc]:
    """The stack's runners stopped, and one runner whose store is ``s3_url`` (a proxy) instead."""
    import sys

    state = stack.read_state()
    runners = [p.name for p in state.processes if p.name.startswith("runner-")]
    for name in runners:
        stack.stop_process(name)
    ready = stack.state_dir / "runner-proxied.ready"
    ready.unlink(missing_ok=True)
    env = stack._child_env(state) | {"BUCKETBRUSH_S3_ENDPOINT_URL": s3_url}
    popen, proc = procs.spawn("runner-proxied", [sys.executable, "-m", "bucketbrush.cli", "runner", "--ready-file",
                                                 str(ready)], stack.logs, env)
    try:
        procs.wait_until("runner-proxied", ready.exists, 120, popen, Path(proc.log))
        yield proc
    finally:
        procs.terminate(proc, 30)
        for name in runners:
            stack.restart_process(name)
