"""Which queue a job goes to: one rule, shared by the handler that enqueues, the runner that
consumes, the dead-letter and status views, and the Kubernetes autoscaler's triggers.

Each recipe declares what it needs (:data:`RECIPE_NEEDS`): ``cpu`` (cheap image work that a
GPU would only idle on), ``gpu`` (diffusion) or ``any`` (runs well on either). The table lives
here, in the core, because the handler routes without importing the runner;
``gpu_runner.recipes.Recipe.needs`` reads it, and a test checks that every recipe has a line.
``recipe_capabilities`` (a setting) re-maps a recipe, e.g. a test recipe to ``gpu``.

Inside a capability, interactive jobs (presigned uploads, job specs) go ahead of bulk ones
(drop-folder batches, dead-letter replays): Dramatiq's Redis broker has no message priority
(``broker_priority`` is RabbitMQ's), so each class has its own queue, and a runner that serves
both declares the bulk queue's actor with a lower priority, so that among the messages it has
already fetched an interactive one runs first.

Queue ``<queue_name>-<capability>`` holds interactive jobs, ``<queue_name>-<capability>-bulk``
bulk ones; Dramatiq keeps a queue's ready message ids in the Redis list
``<broker_namespace>:<queue>`` and its delayed retries in ``<broker_namespace>:<queue>.DQ``.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import Any, Literal, get_args

from bucketbrush.settings import Settings

Capability = Literal["cpu", "gpu", "any"]
Priority = Literal["interactive", "bulk"]
CAPABILITIES: tuple[Capability, ...] = get_args(Capability)
PRIORITIES: tuple[Priority, ...] = get_args(Priority)

RUN_JOB_ACTOR = "bucketbrush.run_job"
# The same function under another name: the worker orders fetched messages by actor priority.
RUN_BULK_JOB_ACTOR = "bucketbrush.run_job_bulk"
ACTORS: dict[Priority, str] = {"interactive": RUN_JOB_ACTOR, "bulk": RUN_BULK_JOB_ACTOR}

RECIPE_NEEDS: MappingProxyType[str, Capability] = MappingProxyType({
    "filter": "cpu", "annotate": "cpu", "upscale": "cpu",  # OpenCV, LiteRT, Real-ESRGAN ncnn
    "remove-bg": "any",  # a small segmentation model: fine on a CPU, faster on a GPU
    "txt2img": "gpu", "img2img": "gpu", "sketch": "gpu", "stylize": "gpu", "inpaint": "gpu",
    "layers": "gpu", "video": "gpu",  # diffusion (video stylizes every frame)
    # tests only (recipes/testing.py)
    "test-slow": "any", "test-slow-limited": "any", "test-fail-late": "any", "test-crash": "any",
})


def needs(settings: Settings, recipe: str) -> Capability:
    """What ``recipe`` needs (``any`` for a name no table knows: the runner then fails it
    with ``unknown_recipe``, whichever runner takes it)."""
    return settings.recipe_capabilities.get(recipe) or RECIPE_NEEDS.get(recipe, "any")


def queue_name(settings: Settings, capability: Capability, priority: Priority = "interactive") -> str:
    name = f"{settings.queue_name}-{capability}"
    return f"{name}-bulk" if priority == "bulk" else name


def queue_for(settings: Settings, recipe: str, priority: Priority = "interactive", tenant: str | None = None) -> str:
    """The queue a job of ``recipe`` goes to (a tenant's own copy of it with ``tenant_queues``)."""
    return tenant_queue(settings, queue_name(settings, needs(settings, recipe), priority), tenant)


# -- fairness between tenants (gpu_runner/tenant_queues.py) -------------------------------------

TENANT_QUEUE = "-tenant-"


def tenant_queue(settings: Settings, queue: str, tenant: str | None) -> str:
    """With ``tenant_queues``, a tenant's jobs wait in their own copy of ``queue``
    (``<queue>-tenant-<tenant>``), which runners serving ``queue`` consume beside it."""
    return f"{queue}{TENANT_QUEUE}{tenant}" if tenant and settings.tenant_queues else queue


def base_queue(queue: str) -> str:
    """The queue a tenant's queue is a copy of (``queue`` itself for any other)."""
    return queue.split(TENANT_QUEUE, 1)[0]


def tenant_queues_key(settings: Settings) -> str:
    """The Redis set of the tenants' queues jobs were sent to: runners consume them from there."""
    return f"{settings.broker_namespace}:tenant-queues"


def tenant_queues(settings: Settings, redis: Any) -> list[str]:
    """The tenants' queues jobs were sent to (for views over every queue: dead letters, status)."""
    return sorted(n.decode() if isinstance(n, bytes) else n for n in redis.smembers(tenant_queues_key(settings)))


def served_capabilities(serve: Iterable[str]) -> list[Capability]:
    """The capabilities a runner started with ``serve`` consumes: what it names, and ``any``
    always (an ``any`` job runs on whichever runner is free). Raises ValueError for a name that
    is no capability."""
    names = [s.strip() for s in serve if s.strip()]
    unknown = [n for n in names if n not in CAPABILITIES]
    if unknown:
        raise ValueError(f"unknown capability {', '.join(unknown)}; use {', '.join(CAPABILITIES)}")
    return [c for c in CAPABILITIES if c in names or c == "any"]


def served_queues(settings: Settings, serve: Iterable[str]) -> list[tuple[str, Priority]]:
    """(queue, priority) for every queue a runner serving ``serve`` consumes. A runner that
    serves every capability also drains ``queue_name`` itself, the single queue of earlier
    versions, so messages sent before an upgrade still run."""
    caps = served_capabilities(serve)
    queues = [(queue_name(settings, c, p), p) for c in caps for p in PRIORITIES]
    return queues + [(settings.queue_name, "bulk")] if len(caps) == len(CAPABILITIES) else queues


def all_queues(settings: Settings) -> list[str]:
    """Every job queue, for views over all of them (dead letters, status)."""
    return [queue_name(settings, c, p) for c in CAPABILITIES for p in PRIORITIES]


def redis_key(settings: Settings, queue: str) -> str:
    """The Redis list of ``queue``'s ready message ids (what an autoscaler measures)."""
    return f"{settings.broker_namespace}:{queue}"
