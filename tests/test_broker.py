"""The broker is built from settings: the recovery settings reach Dramatiq's RedisBroker."""

from __future__ import annotations

from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT

from bucketbrush.broker import build_broker
from bucketbrush.settings import Settings


def test_heartbeat_timeout_and_maintenance_come_from_settings() -> None:
    # Constructing a RedisBroker opens no connection: no server needed.
    broker = build_broker(Settings(broker_heartbeat_timeout_s=7.5, broker_maintenance_chance=0.25))
    assert broker.heartbeat_timeout == 7500
    assert broker.maintenance_chance == 250_000  # per million calls


def test_defaults_recover_faster_than_dramatiq() -> None:
    broker = build_broker(Settings())
    assert broker.heartbeat_timeout == 10_000 < DEFAULT_HEARTBEAT_TIMEOUT
    assert broker.maintenance_chance == 200_000
