"""The broker is built from settings: the recovery settings reach Dramatiq's RedisBroker; a
consumer whose worker is busy waits without waking."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT

from bucketbrush.broker import build_broker
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
