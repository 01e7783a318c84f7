"""functions/pool.py: the handler's pool runs different keys in parallel and one key in order."""

from __future__ import annotations

import threading

from functions.pool import KeyedPool


def test_one_key_runs_in_submission_order_while_other_keys_run_beside_it():
    pool = KeyedPool(4)
    release = threading.Event()
    ran: list[str] = []

    def task(name: str, gate: threading.Event | None = None) -> str:
        if gate is not None:
            assert gate.wait(10), "never released"
        ran.append(name)
        return name

    first = pool.submit("a", task, "a1", release)  # holds key a until released
    second = pool.submit("a", task, "a2")
    other = pool.submit("b", task, "b1")
    # Key b is not held up by key a: it finishes while a1 still waits (and a2 has not run).
    assert other.result(10) == "b1"
    assert ran == ["b1"] and not first.done() and not second.done()
    release.set()
    assert [first.result(10), second.result(10)] == ["a1", "a2"]
    assert ran == ["b1", "a1", "a2"]
    pool.shutdown()


def test_a_failed_task_does_not_stop_the_next_one_of_its_key():
    pool = KeyedPool(2)

    def boom() -> None:
        raise RuntimeError("store down")

    failed = pool.submit("k", boom)
    after = pool.submit("k", lambda: "ok")
    assert isinstance(failed.exception(10), RuntimeError)
    assert after.result(10) == "ok"
    pool.shutdown()
