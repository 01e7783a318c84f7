"""Job identity and the job spec: the small message that travels through the queue."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

JOB_ID_LEN = 24
_JOB_ID = re.compile(rf"^[0-9a-f]{{{JOB_ID_LEN}}}$")
# Recipe names as they appear in inbox/<recipe>/ folders and job specs.
RECIPE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# Job ids chosen by users for jobs/<job_id>.json specs.
_SPEC_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class ObjectRef(BaseModel):
    """One object in the bucket, pinned to the content that triggered the job."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    bucket: str
    key: str
    etag: str | None = None
    version_id: str | None = None
    size: int | None = None

    @property
    def identity(self) -> str:
        """What makes two events "the same upload": bucket, key and content (the ETag).

        The version id is left out on purpose: transports disagree on it for one upload (an
        S3 event carries it, a filer subscription or a ListObjectsV2 sweep may not), and with
        it turning versioning on would make one upload two jobs. So one upload is one job
        however it is announced, with or without versioning; the same bytes uploaded again to
        the same key are the same job (as without versioning), other bytes are a new one. Only
        a ref without an ETag falls back to its version id. (The empty third field keeps the
        job ids of unversioned objects what they were.)"""
        content = (self.etag or "").strip('"') or (self.version_id or "")
        return "\0".join([self.bucket, self.key, "", content])


WEBHOOK_EVENTS = ("started", "progress", "completed")


class WebhookTarget(BaseModel):
    """A per-job webhook: where to POST the job's events (``completed`` is always sent)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    events: tuple[str, ...] = ("completed",)

    @classmethod
    def parse(cls, url: Any, events: Any, error: type[Exception]) -> WebhookTarget:
        """From a job spec (``events`` a list) or upload metadata (a comma-separated string);
        ``error`` (InvalidWebhook) says what is wrong."""
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise error(f"webhook must be an http(s) URL, not {url!r}")
        if len(url) > 2048:
            raise error("webhook URL is over 2048 characters")
        if events is None:
            events = []
        if isinstance(events, str):
            events = [e.strip() for e in events.split(",") if e.strip()]
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise error("webhook_events must be a list of event names")
        if unknown := sorted(set(events) - set(WEBHOOK_EVENTS)):
            raise error(f"unknown webhook events {unknown}; valid: {', '.join(WEBHOOK_EVENTS)}")
        return cls(url=url, events=tuple(e for e in WEBHOOK_EVENTS if e in events or e == "completed"))


class TurnRef(BaseModel):
    """A chat turn's place in its conversation (bucketbrush/conversations.py): ``seq`` is
    handed out by the handler in arrival order, once per turn object, and the runner runs
    turn ``seq`` only after every earlier one is final."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    conversation: str
    seq: int = Field(ge=1)
    # The turn's file name without ``.json``, or the uploaded file's name.
    name: str


class JobSpec(BaseModel):
    """What the runner needs to do one job. Never carries image bytes."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str
    recipe: str
    # The object whose creation made this job: an upload, or a jobs/<job_id>.json spec.
    source: ObjectRef
    # The image to process (the upload itself, or the spec's "input"); None for recipes
    # that need no input image.
    input: ObjectRef | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # A tighter deadline than the recipe's own limit, if the submitter asked for one.
    time_limit_s: int | None = Field(default=None, ge=1)
    # Run the recipe in a child process killed at the time limit (gpu_runner/isolation.py),
    # instead of Dramatiq's TimeLimit, which only interrupts between Python bytecodes.
    hard_time_limit: bool = False
    enqueued_at: float | None = None
    # The queued manifest's ``timings.queued_at``, when the handler wrote that manifest just
    # before sending this message: the runner then needs no manifest read to start.
    queued_at: float | None = None
    # Where to send this job's events (a job spec's "webhook"); uploads carry theirs in metadata.
    webhook: WebhookTarget | None = None
    # Interactive jobs (presigned uploads, job specs) go ahead of bulk ones (drop folders,
    # replays) on the same runners (bucketbrush/routing.py).
    priority: Literal["interactive", "bulk"] = "interactive"
    # Whose job it is: its keys live under tenants/<tenant>/ (None: the default tenant).
    tenant: str | None = None
    # The job this one re-runs with other params or another model (`bucketbrush replay`).
    replay_of: str | None = None
    # A chat turn: the runner refines its message and picks the recipe, params and input.
    turn: TurnRef | None = None
    # A tenant's turn: the recipes its tenant may run (the handler's tenants file), checked when
    # the runner picks one; None or empty: any.
    allowed_recipes: list[str] | None = None

    @property
    def inputs(self) -> list[ObjectRef]:
        """What the manifest lists as inputs: the source, then the image if it is another object."""
        return [self.source] + ([self.input] if self.input and self.input != self.source else [])


def json_object(raw: str | bytes, what: str, error: type[Exception]) -> dict[str, Any]:
    """``raw`` parsed as a JSON object; ``error`` (an InvalidSpec, InvalidParams...) naming
    ``what`` when it is not JSON or not an object."""
    try:
        doc = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:  # also bad UTF-8 (UnicodeDecodeError) and duplicate names
        raise error(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # nesting deeper than the parser's stack
        raise error(f"{what} is nested too deeply") from exc
    if not isinstance(doc, dict):
        raise error(f"{what} must be a JSON object")
    return doc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are unique: ``{"recipe": "a", "recipe": "b"}`` means two
    things to two parsers, so it is refused rather than read as its last value."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the name {twice!r} appears twice in one object")
    return doc


def job_id_for(ref: ObjectRef) -> str:
    """Deterministic job id from an object's identity: a repeated event maps to the same job."""
    return hashlib.sha256(ref.identity.encode()).hexdigest()[:JOB_ID_LEN]


def new_ticket() -> str:
    """A fresh job id handed out with a presigned upload; the key carries it."""
    return secrets.token_hex(JOB_ID_LEN // 2)


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value) or _SPEC_JOB_ID.match(value))


def is_ticket(value: str) -> bool:
    return bool(_JOB_ID.match(value))


def is_spec_job_id(value: str) -> bool:
    return bool(_SPEC_JOB_ID.match(value))
