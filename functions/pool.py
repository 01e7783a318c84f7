"""A bounded thread pool that keeps per-key order: the handler's concurrency.

Tasks with different keys run in parallel on up to ``workers`` threads; tasks with the same
key run one after another, in the order they were submitted (two events for one object are
handled as they came). ``submit`` blocks while ``bound`` tasks are queued or running, so a
fast event stream cannot outrun the store without limit (back-pressure); with ``block=False``
it raises ``PoolFull`` instead (the HTTP host answers 503 then, and the sender retries).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class PoolFull(Exception):
    """``bound`` tasks are already queued or running."""


class KeyedPool:
    def __init__(self, workers: int, *, bound: int | None = None, name: str = "keyed") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.bound = bound or workers * 4
        self._slots = threading.BoundedSemaphore(self.bound)
        self._lock = threading.Lock()
        self._tails: dict[str, Future[Any]] = {}

    def submit(self, key: str, fn: Callable[..., T], *args: Any, block: bool = True) -> Future[T]:
        """Run ``fn(*args)`` after every task submitted earlier with ``key``; its future.
        Waits for a free slot, or (``block=False``) raises PoolFull when there is none."""
        if not self._slots.acquire(blocking=block):
            raise PoolFull(f"{self.bound} tasks are queued or running")
        result: Future[T] = Future()
        with self._lock:
            before = self._tails.get(key)
            self._tails[key] = result

        def run() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - the caller gets it from the future
                result.set_exception(exc)
            finally:
                self._slots.release()
                with self._lock:
                    if self._tails.get(key) is result:
                        del self._tails[key]

        if before is None:
            self._pool.submit(run)
        else:  # after the key's previous task, whatever its outcome (now, if it is done)
            before.add_done_callback(lambda _: self._pool.submit(run))
        return result

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
