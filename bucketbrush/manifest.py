"""The manifest at ``manifests/<job_id>.json``: the job's public record.

Outputs are written before the final manifest, so a reader that sees a final status can
trust every key listed in it.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bucketbrush.errors import BucketbrushError
from bucketbrush.jobs import ObjectRef, TurnRef

SCHEMA_VERSION = 1
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class OutputCredentials(BaseModel):
    """An output's Content Credentials (C2PA), as the runner read them back after signing:
    ``signer`` is the signing certificate's common name, ``validation_state`` c2pa's verdict
    (``Trusted``, ``Valid`` or ``Invalid``). ``signed`` false comes with ``reason`` (e.g. a JSON
    output, a format C2PA cannot carry)."""

    model_config = ConfigDict(extra="ignore")

    signed: bool
    signer: str | None = None
    validation_state: str | None = None
    digital_source_type: str | None = None
    reason: str | None = None


class Output(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: str
    content_type: str
    width: int | None = None
    height: int | None = None
    bytes: int
    sha256: str
    # A presigned GET for the output, valid until the manifest's ``urls_expire_at``: apps
    # without credentials download through it (renew: ``bucketbrush presign-get JOB``,
    # ``GET /manifest-url?job_id=JOB``).
    url: str | None = None
    # Absent when content credentials are off (``BUCKETBRUSH_CONTENT_CREDENTIALS=off``).
    content_credentials: OutputCredentials | None = None


class Progress(BaseModel):
    model_config = ConfigDict(extra="ignore")

    step: int = 0
    total: int = 0
    fraction: float = 0.0


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str
    message: str
    retryable: bool = False

    @classmethod
    def of(cls, error: BucketbrushError, *, retryable: bool | None = None) -> ErrorInfo:
        """The manifest's record of ``error``: its stable code, message and retryability."""
        return cls(code=error.code, message=error.message,
                   retryable=error.retryable if retryable is None else retryable)


class TurnInfo(TurnRef):
    """What a chat turn's job manifest says about the turn: the message, what the refiner made
    of it, ``given``: the picture the turn brought, if any, and ``input``: the picture the turn
    worked on (for ``undo``: the one the conversation went back to)."""

    message: str = ""
    intent: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    refiner: str | None = None
    answer: str | None = None
    given: str | None = None
    input: str | None = None
    # How often the turn was put back because the turn before it was not final yet.
    deferred: int = 0


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    job_id: str
    status: Status
    recipe: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: list[ObjectRef] = Field(default_factory=list)
    outputs: list[Output] = Field(default_factory=list)
    model: dict[str, Any] | None = None
    seeds: list[int] = Field(default_factory=list)
    progress: Progress = Field(default_factory=Progress)
    # Wall-clock stamps (epoch seconds) and durations (seconds).
    timings: dict[str, float] = Field(default_factory=dict)
    runner: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    warnings: list[str] = Field(default_factory=list)
    # Facts the recipe worked out (e.g. the strength "auto" resolved to, depth layer ranges).
    details: dict[str, Any] = Field(default_factory=dict)
    # When the lifecycle rule for outputs/ removes the outputs (epoch seconds), if one is set.
    outputs_expire_at: float | None = None
    # When the presigned ``outputs[].url`` links stop working (epoch seconds).
    urls_expire_at: float | None = None
    attempts: int = 0
    # Deliveries whose runner died in the job (killed, out of memory) before finishing it.
    interrupted: int = 0
    updated_at: float = Field(default_factory=time.time)
    # Whose job it is (None: the default tenant); the manifest lives under tenants/<tenant>/.
    tenant: str | None = None
    # The job this one re-ran (`bucketbrush replay`), with its report's id.
    replay_of: str | None = None
    # A chat turn's job (bucketbrush/conversations.py); None for every other job.
    turn: TurnInfo | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def finished_for(self, source: ObjectRef) -> bool:
        """Final, and made from exactly this content (a repeated delivery needs no new run)."""
        return self.is_final and bool(self.inputs) and self.inputs[0].identity == source.identity


# A runner's heartbeat is stale after this many missed beats: it is presumed dead.
STALE_AFTER_BEATS = 3


class Beat(BaseModel):
    """What every heartbeat has: a process on a host, when it started and last beat."""

    model_config = ConfigDict(extra="ignore")

    host: str
    pid: int
    started_at: float
    updated_at: float
    interval_s: float = 10

    def age_s(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.updated_at

    def is_fresh(self, now: float | None = None) -> bool:
        """Beat within the last STALE_AFTER_BEATS intervals: the process is alive."""
        return self.age_s(now) < STALE_AFTER_BEATS * self.interval_s


class RunnerStatus(Beat):
    """A runner's heartbeat at ``status/runners/<runner_id>.json``: who works on what."""

    runner_id: str
    queue: str  # the queues it consumes, comma-separated (bucketbrush/routing.py)
    device: str = "cpu"  # cpu | cuda:N | mps
    device_name: str | None = None  # e.g. the GPU's or the CPU's model name
    gpu: dict[str, Any] | None = None  # name and memory, when a CUDA device is in use
    loaded_models: list[str] = Field(default_factory=list)
    jobs_done: int = 0
    jobs_failed: int = 0
    current_job: str | None = None
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES: the device a per-device runner is pinned to
    # Its Prometheus metrics (runner_metrics_port), when it serves them.
    metrics_url: str | None = None


class SourceStatus(Beat):
    """An event source's heartbeat at ``status/sources/<source_id>.json``: what it has fed the
    handler (``bucketbrush status`` shows it beside the runners)."""

    source_id: str
    kind: str  # seaweedfs | sqs | ...
    records: int = 0  # event records handled
    enqueued: int = 0  # jobs they made
    last_event_at: float | None = None
