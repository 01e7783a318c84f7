"""Fair turns between tenants: each tenant's jobs wait in their own copy of their queue
(``settings.tenant_queues``, ``bucketbrush.routing.tenant_queue``), and a runner consumes the
copies of the queues it serves side by side.

Dramatiq gives each queue its own consumer, which prefetches a couple of messages into the
worker's work queue, and the worker thread takes the message that arrived there first. So a
tenant's burst holds at most its prefetch ahead of another tenant's job, instead of its whole
backlog: turns go round between the tenants that have work. The handler adds each tenant queue
it sends to to a Redis set; this thread declares the ones the worker does not consume yet (a
new tenant's first job waits at most one poll). This is apart from the capability queues
(``bucketbrush.routing``): a tenant's queue is a copy of one of them, served by the runners
that serve the original.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dramatiq import Worker
from dramatiq.common import dq_name

from bucketbrush.routing import base_queue, tenant_queues
from bucketbrush.settings import Settings

log = logging.getLogger(__name__)


class TenantQueues:
    def __init__(self, broker: Any, settings: Settings, worker: Worker, served: set[str], *,
                 interval_s: float = 1.0) -> None:
        self.broker = broker
        self.settings = settings
        self.worker = worker
        # The queues this runner serves: it consumes the tenants' copies of these.
        self.served = set(served)
        self.interval_s = interval_s
        self.consumed: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tenant-queues", daemon=True)

    def sync(self) -> list[str]:
        """Start consuming the tenant queues the handler has sent to; the new ones."""
        names = set(tenant_queues(self.settings, self.broker.client))
        new = sorted(n for n in names - self.consumed if base_queue(n) in self.served)
        for name in new:
            # The job worker consumes only the queues it is told (not the webhook queue): a
            # tenant's queue joins its list, then declaring it starts its consumer.
            if self.worker.consumer_whitelist:
                self.worker.consumer_whitelist.add(name)
            if name in self.broker.get_declared_queues():
                # Declared before the worker listened (this process also sent to it): the
                # events that start a queue's consumers, again.
                self.broker.emit_after("declare_queue", name)
                self.broker.emit_after("declare_delay_queue", dq_name(name))
            else:
                self.broker.declare_queue(name)
            self.consumed.add(name)
            log.info("consuming tenant queue %s", name)
        return new

    def start(self) -> None:
        self.sync()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - Redis hiccups: the next poll tries again
                log.exception("could not read the tenant queues")
