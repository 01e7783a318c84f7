"""Cross-job micro-batching: jobs that can share one denoising call run as one call.

With ``diffusion_batch_max`` > 1 the runner's worker runs that many threads (gpu_runner/worker.py).
Each thread runs its own job through the normal runner path (its own manifest, outputs,
retries and Dramatiq time limit), but only one of them computes at a time: the
:class:`ComputeSlot`, taken by the actor before the job starts. A ``txt2img`` or ``img2img``
job without ControlNet hands its prepared call to the :class:`Batcher` and gives up the slot;
the batcher's own thread waits up to ``diffusion_batch_wait_ms`` after the first request for
others with the same key (model, task, size, steps, scheduler, guidance, strength, dtype,
prompt encoding), then runs one pipeline call (under the slot) with every job's prompts and
per-image generators, and hands each job back its images.

Reproducibility: each image keeps its own ``torch.Generator`` seeded as a lone run would,
but a batched kernel is not bitwise equal to an unbatched one (oneDNN, cuDNN: ~1e-5 apart),
so a batched image is within a pixel level or so of its lone counterpart, not byte-identical.

Failure and cancel: an exception in the shared call fails every job in it the same way a
lone call would (the same exception type, so the same error code). A job cancelled during the
call ends ``cancelled`` at the next step and its images are dropped; the call is aborted only
when every job in it is gone. A job whose own time limit fires while it waits gets
TimeLimitExceeded in its thread as usual, and the batch drops it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# How often a waiting job thread wakes, so Dramatiq's TimeLimit (an exception raised between
# Python bytecodes) can reach it.
_POLL_S = 0.1


class ComputeSlot:
    """One job computes at a time in a runner process, however many worker threads it has.

    The actor holds it for the whole job (``held``); a job that handed its work to the batcher
    gives it up (``give_up``), and the batcher's thread holds it for the shared call (``use``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextmanager
    def held(self, on_wait: Callable[[], None] | None = None,
             on_waited: Callable[[float], None] | None = None) -> Iterator[None]:
        """Hold the slot for a block. When another job holds it: ``on_wait()`` before waiting
        (the actor pauses the job's time limit, so no TimeLimitExceeded can land between taking
        the lock and recording it), ``on_waited(seconds)`` once it is this job's."""
        waited = None
        if not self._lock.acquire(blocking=False):
            if on_wait:
                on_wait()
            started = time.monotonic()
            self._lock.acquire()
            waited = time.monotonic() - started
        self._local.held = True
        try:
            if waited is not None and on_waited:
                on_waited(waited)
            yield
        finally:
            self.give_up()

    def give_up(self) -> None:
        """Let other jobs compute for the rest of this thread's job (a no-op if not held)."""
        if getattr(self._local, "held", False):
            self._local.held = False
            self._lock.release()

    @property
    def held_here(self) -> bool:
        return bool(getattr(self._local, "held", False))

    @contextmanager
    def use(self) -> Iterator[None]:
        with self._lock:
            yield


@dataclass(eq=False)
class Request:
    """One job's share of a call, as ``generate`` prepared it."""

    job_id: str
    key: tuple[Any, ...]
    pipe: Any
    make_scheduler: Callable[[], Any]
    guard: Callable[[], AbstractContextManager[None]]
    call: dict[str, Any]  # the kwargs every request with this key shares
    prompt: dict[str, Any]  # prompt/negative_prompt texts, or compel's embeddings
    seeds: list[int]
    progress: Callable[[int, int], None]
    cancelled: Callable[[], bool]
    image: Any = None  # img2img: the job's init image (already resized)
    # Filled in by the batcher.
    images: list[Any] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)
    batch: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    submitted: float = 0.0
    submitted_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, error: BaseException | None = None) -> bool:
        """Mark done (once): False if it already was (cancelled, abandoned, failed)."""
        with self._lock:
            if self.done.is_set():
                return False
            self.error = error
            self.done.set()
            return True


class _AllGone(Exception):
    """Raised in the step callback: every job of the call was cancelled or abandoned."""


class Batcher:
    """Groups compatible requests into one pipeline call (module docstring)."""

    def __init__(self, slot: ComputeSlot, max_images: int, wait_s: float) -> None:
        self.slot = slot
        self.max_images = max_images
        self.wait_s = wait_s
        self._cond = threading.Condition()
        self._pending: list[Request] = []
        self._thread: threading.Thread | None = None

    def submit(self, request: Request) -> Request:
        """Queue ``request``, give up the caller's compute slot, and wait for its images.
        Raises what the shared call raised (or JobCancelled)."""
        request.submitted, request.submitted_at = time.monotonic(), time.time()
        with self._cond:
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="diffusion-batcher", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        self.slot.give_up()
        try:
            while not request.done.wait(_POLL_S):
                pass
        except BaseException as exc:  # TimeLimitExceeded (Dramatiq), or the worker stopping
            if request.finish(exc):
                with self._cond:
                    if request in self._pending:
                        self._pending.remove(request)
                log.info("job %s left its batch: %s", request.job_id, type(exc).__name__)
            raise
        if request.error is not None:
            raise _own_copy(request.error)
        return request

    # -- the batcher's thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch, closed = self._next_batch()
            try:
                self._run(batch, closed)
            except BaseException as exc:  # noqa: BLE001 - never let the thread die with jobs waiting
                log.exception("diffusion batch failed outside the call")
                for request in batch:
                    request.finish(exc)

    def _next_batch(self) -> tuple[list[Request], str]:
        """The oldest request and the compatible ones that came within the wait (FIFO)."""
        with self._cond:
            while True:
                while not self._pending:
                    self._cond.wait()
                first = self._pending[0]
                deadline = first.submitted + self.wait_s
                while True:
                    batch = self._fill(first)
                    full = sum(len(r.seeds) for r in batch) >= self.max_images
                    left = deadline - time.monotonic()
                    if full or left <= 0 or first not in self._pending:
                        break
                    self._cond.wait(left)
                if first not in self._pending:  # its job left while it waited
                    continue
                for request in batch:
                    self._pending.remove(request)
                return batch, "full" if full else "waited"

    def _fill(self, first: Request) -> list[Request]:
        batch, images = [first], len(first.seeds)
        for request in self._pending:
            if request is first or request.key != first.key:
                continue
            if images + len(request.seeds) > self.max_images:
                break
            batch.append(request)
            images += len(request.seeds)
        return batch

    def _run(self, batch: list[Request], closed: str) -> None:
        import torch

        from bucketbrush.errors import JobCancelled

        first = batch[0]
        info = {"id": uuid.uuid4().hex[:12], "jobs": len(batch), "images": sum(len(r.seeds) for r in batch),
                "closed": closed, "max_images": self.max_images, "wait_ms": round(self.wait_s * 1000)}

        def on_step_end(p: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            for request in batch:
                if request.done.is_set():
                    continue
                request.progress(step + 1, p.num_timesteps)
                if request.cancelled():
                    request.finish(JobCancelled("cancelled by the user"))
            if all(r.done.is_set() for r in batch):
                # Raised inside the step loop: no further UNet step or VAE decode runs.
                raise _AllGone
            return callback_kwargs

        with self.slot.use():
            started, started_at = time.monotonic(), time.time()
            if all(r.done.is_set() for r in batch):
                return
            try:
                with first.guard():
                    pipe = first.pipe
                    pipe.scheduler = first.make_scheduler()
                    kwargs = {**first.call, **_prompts(batch)}
                    if first.image is not None:
                        kwargs["image"] = [r.image for r in batch for _ in r.seeds]
                    generators = [torch.Generator("cpu").manual_seed(s) for r in batch for s in r.seeds]
                    out = pipe(**kwargs, num_images_per_prompt=1, generator=generators,
                               callback_on_step_end=on_step_end)
            except _AllGone:
                log.info("batch %s aborted: all %d jobs cancelled", info["id"], len(batch))
                return
            except BaseException as exc:  # noqa: BLE001 - each job fails with it, as a lone call would
                for request in batch:
                    request.finish(exc)
                return
            call_s = time.monotonic() - started
        flagged = list(getattr(out, "nsfw_content_detected", None) or [False] * len(out.images))
        at = 0
        for request in batch:
            n = len(request.seeds)
            request.images, request.flagged = out.images[at:at + n], flagged[at:at + n]
            at += n
            request.batch = {**info, "submitted_at": request.submitted_at, "started_at": started_at,
                             "waited_s": round(started - request.submitted, 4), "call_s": round(call_s, 4)}
            request.finish()
        log.info("batch %s: %d jobs, %d images, %.2f s", info["id"], len(batch), info["images"], call_s)


def _prompts(batch: list[Request]) -> dict[str, Any]:
    """The call's prompt arguments: one entry (text or embedding row) per image."""
    if "prompt" in batch[0].prompt:
        return {name: [r.prompt[name] for r in batch for _ in r.seeds] for name in ("prompt", "negative_prompt")}
    import torch

    return {name: torch.cat([r.prompt[name].repeat(len(r.seeds), *[1] * (r.prompt[name].dim() - 1))
                             for r in batch])
            for name in batch[0].prompt}


def prompt_key(kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """What two jobs' prompt arguments must share to be concatenated: texts always can;
    compel's embeddings when their shapes (past the batch dimension) agree."""
    if "prompt" in kwargs:
        return ("text",)
    return ("embeds", *sorted((name, tuple(t.shape[1:])) for name, t in kwargs.items()))


def _own_copy(exc: BaseException) -> BaseException:
    """The shared call's exception, one object per job thread (each raise adds its traceback)."""
    try:
        return copy.copy(exc)
    except Exception:  # noqa: BLE001
        return exc
