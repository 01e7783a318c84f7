"""The broker is built from settings: the recovery settings reach Dramatiq's RedisBroker, idle
consumers wake on enqueue, and a consumer whose worker is busy waits without waking."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT

from bucketbrush.broker import build_broker, enqueue_job, wake_key
from bucketbrush.jobs import JobSpec, ObjectRef
from bucketbrush.routing import RUN_JOB_ACTOR, queue_for
from bucketbrush.settings import Settings
from infra.procs import start_redis, terminate


def test_heartbeat_timeout_and_maintenance_come_from_settings() -> None:
    # Constructing a RedisBroker opens no connection: no server needed.
    broker = build_broker(Settings(broker_heartbeat_timeout_s=7.5, broker_maintenance_chance=0.25))
    assert broker.heartbeat_timeout == 7500
    assert broker.maintenance_chance == 250_000  # per million calls


def test_defaults_recover_faster_than_dramatiq() -> None:
    broker = build_broker(Settings())
    assert broker.heartbeat_timeout == 10_000 < DEFAULT_HEARTBEAT_TIMEOUT
    assert broker.maintenance_chance == 200_000


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    proc, url = start_redis(tmp_path, tmp_path, name="private-redis")
    try:
        yield url
    finally:
        terminate(proc, 10)


def wakeups(native_id: int) -> int:
    """How often the thread has gone to sleep and woken (its voluntary context switches)."""
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


def test_a_busy_consumer_sleeps_until_its_worker_acks(private_redis: str) -> None:
    """While its message is being processed, a consumer must neither poll nor wake (its
    threads share the GIL and the cores with the job), and must wake when the worker acks."""
    broker = build_broker(Settings(redis_url=private_redis, broker_namespace="bb-busy"))
    broker.declare_queue("q")
    broker.enqueue(dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}))
    # A worker timeout far longer than the test: only the ack can end the wait.
    consumer = broker.consume("q", prefetch=2, timeout=600_000)
    message = next(consumer)
    assert message is not None and consumer.outstanding_message_count == 1
    seen: dict[str, object] = {}
    waiting = threading.Event()

    def poll() -> None:
        seen["tid"] = threading.get_native_id()
        waiting.set()
        seen["next"] = next(consumer)  # the queue is empty and the worker is busy

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    waiting.wait()
    tid = int(seen["tid"])  # type: ignore[call-overload]
    time.sleep(0.3)  # past the empty fetch and into the wait
    before = wakeups(tid)
    time.sleep(1.0)
    # The 5 ms check loop this replaced woke ~200 times in this second.
    assert wakeups(tid) - before <= 5
    assert thread.is_alive()
    consumer.ack(message)
    thread.join(60)
    assert not thread.is_alive() and seen["next"] is None
    consumer.close()
    broker.close()


@pytest.mark.e2e
def test_an_enqueue_wakes_the_consumer_blocked_on_the_wake_list(tmp_path) -> None:
    """docs/architecture.md: idle runners block on the queue's wake list, which every enqueue
    pushes a token onto, instead of sleeping between polls. On a Redis of its own, so that
    every client in its CLIENT LIST is this test's."""
    proc, url = start_redis(tmp_path, tmp_path, name="wake-redis")
    own = Settings(redis_url=url, queue_name="wake")
    queue = queue_for(own, "filter")
    wake = wake_key(own.broker_namespace, queue)
    broker = build_broker(own)
    ran = threading.Event()
    dramatiq.actor(lambda spec: ran.set(), broker=broker, actor_name=RUN_JOB_ACTOR, queue_name=queue)
    ref = ObjectRef(bucket="b", key="inbox/filter/a.png", etag="e")
    try:
        # No consumer yet: the enqueue leaves its token on the queue's wake list.
        enqueue_job(broker, own, JobSpec(job_id="before", recipe="filter", source=ref, input=ref))
        assert broker.client.llen(wake) == 1
        broker.client.delete(wake, f"{own.broker_namespace}:{queue}", f"{own.broker_namespace}:{queue}.msgs")
        worker = Worker(broker, queues={queue}, worker_threads=1, worker_timeout=1_000)
        worker.start()
        try:
            # Idle: both its consumers (the queue's and its delay queue's) are seen blocked in
            # BLPOP; a plain Dramatiq consumer sleeps between polls instead.
            deadline = time.monotonic() + 30
            while sum(c["cmd"] == "blpop" for c in broker.client.client_list()) < 2:
                assert time.monotonic() < deadline, f"no consumer blocked: {broker.client.client_list()}"
                time.sleep(0.05)
            enqueue_job(broker, own, JobSpec(job_id="woken", recipe="filter", source=ref, input=ref))
            assert ran.wait(30), "the job never ran"
            # Its token was taken at once: a blocked consumer's BLPOP is what pops the wake list.
            assert broker.client.llen(wake) == 0
        finally:
            worker.stop()
    finally:
        broker.close()
        terminate(proc, 10)


@pytest.mark.e2e
def test_an_idle_wait_longer_than_the_socket_timeout_does_not_break_the_consumer(tmp_path) -> None:
    """An idle consumer's BLPOP returns before the Redis client's socket timeout, whatever
    ``runner_poll_ms`` says (with a 5 s redis-py default, a poll above it raised TimeoutError in
    every idle consumer and Dramatiq restarted them)."""
    from bucketbrush.broker import _WakeConsumer

    proc, url = start_redis(tmp_path, tmp_path, name="timeout-redis")
    own = Settings(redis_url=f"{url}?socket_timeout=0.5", queue_name="idle")
    broker = build_broker(own)
    try:
        consumer = _WakeConsumer(broker, queue_for(own, "filter"), prefetch=1, timeout=3_000)
        assert consumer.block_s < 0.5
        # Nothing queued: each step is an idle wait that must end with no message and no error.
        assert [next(consumer) for _ in range(3)] == [None, None, None]
    finally:
        broker.close()
        terminate(proc, 10)


def blpops(client) -> int:
    """BLPOP calls this Redis has served (INFO commandstats)."""
    return int(client.info("commandstats").get("cmdstat_blpop", {}).get("calls", 0))


@pytest.mark.e2e
def test_idle_consumers_of_a_busy_process_poll_once_a_second(tmp_path) -> None:
    """While one consumer of the process has a message out (a job computes), the others block
    on their wake lists for ``runner_busy_poll_ms`` (1 s), not the 100 ms worker timeout (16 consumers polling
    every 100 ms during a job made it ~10% slower); an enqueue still wakes them at once, and once
    the message is acked they poll every worker timeout again. On a Redis of its own, so every
    BLPOP it counts is this test's."""
    proc, url = start_redis(tmp_path, tmp_path, name="busy-redis")
    broker = build_broker(Settings(redis_url=url, broker_namespace="bb-idle"))
    busy_block_s = Settings().runner_busy_poll_ms / 1000
    for q in ("busy", "idle"):
        broker.declare_queue(q)
    broker.enqueue(dramatiq.Message(queue_name="busy", actor_name="a", args=(), kwargs={}, options={}))
    busy, idle = broker.consume("busy", prefetch=1, timeout=100), broker.consume("idle", prefetch=1, timeout=100)
    delayed = broker.consume("idle.DQ", prefetch=1, timeout=100)
    stop, got = threading.Event(), []

    def consume() -> None:  # as Dramatiq's consumer thread does
        while not stop.is_set():
            if (m := next(idle)) is not None:
                got.append(m)
                idle.ack(m)

    thread = threading.Thread(target=consume, daemon=True)
    try:
        message = next(busy)
        assert message is not None and busy.outstanding_message_count == 1
        # A delay queue's held message waits, it does not compute: it makes no process busy.
        broker.enqueue(dramatiq.Message(queue_name="idle", actor_name="a", args=(), kwargs={},
                                        options={"eta": int(time.time() * 1000) + 600_000}), delay=600_000)
        assert next(delayed) is not None and delayed.outstanding_message_count == 1
        assert idle._idle_block_s() == busy_block_s == 1.0
        thread.start()
        time.sleep(0.3)  # into its first wait
        before = blpops(broker.client)
        time.sleep(3.0)
        during = blpops(broker.client) - before
        assert 1 <= during <= 5, during  # 3 s at 1 s per BLPOP (at the worker timeout: 15-30)
        # An enqueue's token wakes it at once, busy or not.
        t0 = time.monotonic()
        broker.enqueue(dramatiq.Message(queue_name="idle", actor_name="a", args=(), kwargs={}, options={}))
        deadline = t0 + 30
        while not got:
            assert time.monotonic() < deadline, "the idle consumer never took the message"
            time.sleep(0.01)
        assert time.monotonic() - t0 < busy_block_s / 2
        # The job is done: the idle consumer polls every worker timeout again.
        busy.ack(message)
        assert idle._idle_block_s() == 0.1
        time.sleep(busy_block_s + 0.3)  # past the wait that began while it was busy
        before = blpops(broker.client)
        time.sleep(3.0)
        # 100 ms BLPOPs, which Redis times out at its 10 Hz clock: 15-30 of them.
        assert blpops(broker.client) - before >= 10, blpops(broker.client) - before
    finally:
        stop.set()
        thread.join(10)
        for c in (busy, idle, delayed):
            c.close()
        broker.close()
        terminate(proc, 10)
