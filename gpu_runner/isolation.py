"""A hard time limit: run a recipe in a child process, and kill it at the deadline.

Dramatiq's TimeLimit raises an exception in the worker thread, and Python delivers it only
between bytecodes: a recipe inside one long native call (an OpenCV filter, an ncnn upscale)
runs on to the end of that call (see BENCHMARKS.md, "Time limits"). Here the recipe runs in
a process from a ``forkserver`` (started once per runner, with the recipes imported, so each
job pays a fork and not the imports), and the runner waits on a pipe: at the deadline, or
when the job is cancelled, it kills the process. The image, params and result (PIL images)
travel pickled through the pipe; progress comes back as messages.

Not for recipes that use the runner's diffusion model cache: their models live in the
runner process (``runner.py`` runs those in process and says so in the manifest).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from dramatiq.middleware import TimeLimitExceeded

from bucketbrush.errors import JobCancelled, TimedOut, TransientError
from bucketbrush.settings import Settings
from gpu_runner.recipes.base import JobContext, RecipeParams, RecipeResult

# How often the runner looks at the pipe, the deadline and the cancel flag.
POLL_S = 0.02

_context: Any = None


def _forkserver() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["gpu_runner.isolation", "gpu_runner.recipes", "gpu_runner.runner"])
    return _context


def _child(conn: Connection, recipe_name: str, image: Any, params: RecipeParams, job_id: str,
           settings: Settings) -> None:
    from bucketbrush.store import Bucket
    from gpu_runner.recipes import get_recipe
    from gpu_runner.runner import bucket_loaders

    try:
        load_image, load_bytes = bucket_loaders(Bucket(settings))
        ctx = JobContext(job_id, lambda step, total: conn.send(("progress", step, total)),
                         load_image=load_image, load_bytes=load_bytes, settings=settings)
        conn.send(("result", get_recipe(recipe_name, testing=settings.test_recipes).run(ctx, image, params)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the runner
        try:
            conn.send(("error", exc))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


def run_isolated(recipe_name: str, image: Any, params: RecipeParams, *, job_id: str, settings: Settings,
                 deadline: float, limit_s: int, on_progress: Callable[[int, int], None],
                 cancelled: Callable[[], bool]) -> RecipeResult:
    """``recipe.run`` in a child process, killed at ``deadline`` (``time.monotonic()``) with
    TimedOut, or on cancel with JobCancelled. Errors the recipe raises are raised here."""
    ctx = _forkserver()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(sender, recipe_name, image, params, job_id, settings),
                       name=f"recipe-{job_id}", daemon=True)
    proc.start()
    sender.close()
    try:
        while True:
            if receiver.poll(POLL_S):
                try:
                    kind, *rest = receiver.recv()
                except EOFError:
                    proc.join(5)
                    raise TransientError(f"the recipe's process died (exit code {proc.exitcode})") from None
                if kind == "progress":
                    on_progress(*rest)
                    continue
                if kind == "result":
                    return rest[0]
                raise rest[0]
            if time.monotonic() >= deadline:
                raise TimedOut(f"the job ran past its time limit of {limit_s} s: its recipe's process was killed "
                               "(hard time limit)")
            if cancelled():
                raise JobCancelled("cancelled while running: the recipe's process was killed")
    except TimeLimitExceeded:  # Dramatiq's own limit fired first (it checks once a second)
        raise TimedOut(f"the job ran past its time limit of {limit_s} s: its recipe's process was killed "
                       "(hard time limit)") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        receiver.close()
