"""Conversations: chat turns that each become a job, run in order and chain their pictures.

A turn is ``conversations/<conversation_id>/<turn>.json`` holding ``{"message": ..., "image":
optional key, "params": optional overrides}``, or an image uploaded to
``inbox/chat/<conversation_id>/<file>`` whose ``x-amz-meta-message`` carries the message
(bucketbrush/layout.py). The handler numbers a conversation's turns in arrival order (``seq``,
once per turn object, in Redis: ``next_seq``) and enqueues each as a job. The runner
(gpu_runner/conversation.py) runs turn ``n`` only once turns ``1..n-1`` are final, and records
every finished turn in ``manifests/conversations/<conversation_id>.json`` (``record``: under a
per-conversation Redis lock, with a conditional PUT).

The conversation's picture is a stack replayed from its turns (``image_stack``): a turn pushes
the picture it brought (even when it failed, unless that picture was the problem) and, when it
succeeded, its output; ``undo`` pops; ``chat`` renders nothing. A failed or cancelled turn adds
no output, so the next turn edits the last good picture: a failure never breaks the chain.
"""

from __future__ import annotations

import json
import mimetypes
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dramatiq
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from bucketbrush.errors import (
    ConversationNotFound,
    EmptyInput,
    InputTooLarge,
    InvalidParams,
    InvalidState,
    TransientError,
    WaitTimedOut,
)
from bucketbrush.jobs import ObjectRef, is_spec_job_id, job_id_for
from bucketbrush.manifest import FINAL_STATUSES, ErrorInfo, Manifest, Status
from bucketbrush.presign import safe_filename
from bucketbrush.store import Bucket, is_not_found

SCHEMA_VERSION = 1
# The recipe name a turn's job has until the runner picks the real one (and keeps when the
# turn renders nothing: chat, undo). No recipe has this name, so a turn goes to the ``any``
# queues (bucketbrush/routing.py): whichever runner is free takes it (one without diffusion
# models fails a diffusion turn with model_unavailable).
CHAT_RECIPE = "chat"
# A failed turn's own picture still counts, unless the failure was about it.
BAD_PICTURE_CODES = frozenset({"input_missing", "invalid_image", "empty_input", "image_too_large",
                               "input_too_large", "image_too_small"})

# One number per turn object, in arrival order; a repeated event gets the number it had.
# ARGV: identity, floor ("" when unknown), ttl. Returns -1 when the counter is gone and no
# floor was given (the caller reads the conversation's highest recorded turn and asks again).
_NEXT_SEQ = """
local seq = redis.call('hget', KEYS[1], ARGV[1])
if seq then redis.call('expire', KEYS[1], ARGV[3]) return tonumber(seq) end
if redis.call('hexists', KEYS[1], '#next') == 0 then
  if ARGV[2] == '' then return -1 end
  redis.call('hset', KEYS[1], '#next', ARGV[2])
end
seq = redis.call('hincrby', KEYS[1], '#next', 1)
redis.call('hset', KEYS[1], ARGV[1], seq)
redis.call('expire', KEYS[1], ARGV[3])
return seq
"""


class TurnRecord(BaseModel):
    """One finished turn as the conversation manifest lists it."""

    model_config = ConfigDict(extra="ignore")

    seq: int
    name: str
    job_id: str
    status: Status
    message: str = ""
    intent: str | None = None
    recipe: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    prompt: str = ""
    refiner: str | None = None
    answer: str | None = None
    # The picture the turn brought (an upload, or the turn file's "image"), the one the recipe
    # ran on, its outputs (``output``: the first image, which the next turn works on).
    given: str | None = None
    input: str | None = None
    outputs: list[str] = Field(default_factory=list)
    output: str | None = None
    # The conversation's picture after this turn.
    image: str | None = None
    error: ErrorInfo | None = None
    warnings: list[str] = Field(default_factory=list)
    deferred: int = 0
    finished_at: float | None = None

    @classmethod
    def of(cls, manifest: Manifest) -> TurnRecord:
        """The record of a turn's final job manifest."""
        turn = manifest.turn
        assert turn is not None, "not a turn's manifest"
        images = [o.key for o in manifest.outputs if o.content_type.startswith("image/")]
        return cls(
            seq=turn.seq, name=turn.name, job_id=manifest.job_id, status=manifest.status, message=turn.message,
            intent=turn.intent, recipe=manifest.recipe, params=manifest.params, prompt=turn.prompt,
            refiner=turn.refiner, answer=turn.answer, given=turn.given,
            input=turn.input,
            outputs=[o.key for o in manifest.outputs], output=images[0] if images else None,
            error=manifest.error, warnings=manifest.warnings, deferred=turn.deferred,
            finished_at=manifest.timings.get("finished_at"),
        )


def image_stack(turns: list[TurnRecord]) -> list[str]:
    """The conversation's pictures, oldest first, after ``turns``; the last is the current one."""
    stack: list[str] = []
    for turn in sorted(turns, key=lambda t: t.seq):
        if turn.given and not (turn.error and turn.error.code in BAD_PICTURE_CODES):
            stack.append(turn.given)
        if turn.status != "succeeded":
            continue
        if turn.intent == "undo":
            if len(stack) > 1:
                stack.pop()
        elif turn.output:
            stack.append(turn.output)
    return stack


class Conversation(BaseModel):
    """``manifests/conversations/<conversation_id>.json``: every finished turn, in order."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    conversation_id: str
    turns: list[TurnRecord] = Field(default_factory=list)
    # The current picture (what the next turn works on); None before any.
    image: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    def upsert(self, record: TurnRecord) -> None:
        """Put ``record`` in its place (replacing an earlier record of the same turn) and
        replay the pictures."""
        self.turns = sorted([t for t in self.turns if t.seq != record.seq] + [record], key=lambda t: t.seq)
        for i, turn in enumerate(self.turns):
            stack = image_stack(self.turns[:i + 1])
            turn.image = stack[-1] if stack else None
        self.image = self.turns[-1].image if self.turns else None

    def stack_before(self, seq: int) -> list[str]:
        """The pictures turn ``seq`` starts from."""
        return image_stack([t for t in self.turns if t.seq < seq])

    def waiting_for(self, seq: int) -> list[int]:
        """The earlier turns that are not final yet (or not recorded yet): turn ``seq`` runs
        once this is empty."""
        final = {t.seq for t in self.turns if t.status in FINAL_STATUSES}
        return [n for n in range(1, seq) if n not in final]

    @property
    def last_seq(self) -> int:
        return max((t.seq for t in self.turns), default=0)


class Conversations:
    """A bucket's conversation manifests and their Redis state (turn numbers, the lock), as the
    bucket view's tenant sees them: a tenant's manifests are under ``tenants/<tenant>/`` and its
    Redis keys carry its name, so two tenants' conversations with the same id are two."""

    def __init__(self, bucket: Bucket, redis: Any) -> None:
        self.bucket = bucket
        self.redis = redis
        settings = bucket.settings
        self.namespace = settings.broker_namespace
        # The numbers must outlive the conversation's manifest, which lives this long past its
        # last write (a continued conversation must not start again at 1).
        self.ttl_s = max(settings.dedupe_ttl_s, settings.manifests_retention_days * 86400)

    def for_tenant(self, tenant: str | None) -> Conversations:
        """The conversations of ``tenant`` (None: the default tenant's)."""
        return self if tenant == self.bucket.tenant else Conversations(self.bucket.for_tenant(tenant), self.redis)

    def _redis_key(self, conversation: str, what: str) -> str:
        # Neither a tenant name nor a conversation id has a '/': no tenant's key is another's.
        scope = f"{self.bucket.tenant}/" if self.bucket.tenant else ""
        return f"{self.namespace}:conversation:{scope}{conversation}:{what}"

    def read(self, conversation: str) -> tuple[Conversation | None, str | None]:
        """The manifest and its ETag; (None, None) when there is none."""
        key = self.bucket.layout.conversation_manifest_key(conversation)
        try:
            obj = self.bucket.s3.get_object(Bucket=self.bucket.name, Key=key)
        except ClientError as exc:
            if is_not_found(exc):
                return None, None
            raise
        return Conversation.model_validate(json.loads(obj["Body"].read())), obj.get("ETag")

    def get(self, conversation: str) -> Conversation:
        found, _ = self.read(conversation)
        if found is None:
            raise ConversationNotFound(f"no conversation {conversation!r} (no "
                                       f"{self.bucket.layout.conversation_manifest_key(conversation)})")
        return found

    def next_seq(self, conversation: str, identity: str) -> int:
        """The turn number of the turn object ``identity`` (the same on every repeated event)."""
        key = self._redis_key(conversation, "seq")
        seq = int(self.redis.eval(_NEXT_SEQ, 1, key, identity, "", self.ttl_s))
        if seq < 0:  # the counter expired or Redis was emptied: go on after the recorded turns
            found, _ = self.read(conversation)
            seq = int(self.redis.eval(_NEXT_SEQ, 1, key, identity, found.last_seq if found else 0, self.ttl_s))
        return seq

    def record(self, manifest: Manifest, *, attempts: int = 5) -> Conversation:
        """Add a turn's final job manifest to its conversation's manifest. One writer at a time
        per conversation (a Redis lock), and a conditional PUT (If-Match, or If-None-Match for
        the first turn) against writers that hold no lock."""
        assert manifest.turn is not None
        conversation = manifest.turn.conversation
        key = self.bucket.layout.conversation_manifest_key(conversation)
        with self.redis.lock(self._redis_key(conversation, "lock"), timeout=60, blocking_timeout=60):
            for _ in range(attempts):
                found, etag = self.read(conversation)
                doc = found or Conversation(conversation_id=conversation)
                doc.upsert(TurnRecord.of(manifest))
                doc.updated_at = time.time()
                if self.bucket.put_json(key, doc.model_dump_json(indent=2).encode(), if_match=etag,
                                        if_none_match=etag is None):
                    return doc
        raise TransientError(f"could not record turn {manifest.turn.seq} of conversation {conversation}: "
                             "its manifest kept changing")

    def forget(self, conversation: str) -> None:
        """Drop the conversation's Redis state (its turn numbers)."""
        self.redis.delete(self._redis_key(conversation, "seq"))


def list_conversations(bucket: Bucket) -> list[str]:
    """Every conversation id with a manifest."""
    found = []
    for page in bucket.s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket.name, Prefix=bucket.layout.conversation_manifests):
        found += [c for obj in page.get("Contents", []) if (c := bucket.layout.conversation_of_manifest(obj["Key"]))]
    return found


def conversation_files(bucket: Bucket, conversation: str) -> list[str]:
    """The turn files and chat uploads of a conversation (its inputs)."""
    keys = []
    paginator = bucket.s3.get_paginator("list_objects_v2")
    for prefix in (bucket.layout.turns_of(conversation), bucket.layout.chat_upload_prefix(conversation)):
        for page in paginator.paginate(Bucket=bucket.name, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def turn_jobs(bucket: Bucket, conversation: str) -> list[Manifest]:
    """The job manifests of a conversation's turns, all final (InvalidState when one is not:
    a delete must not pull the pictures from under a running turn)."""
    doc = Conversations(bucket, None).get(conversation)
    manifests = [m for t in doc.turns if (m := bucket.read_manifest(t.job_id)) is not None]
    if busy := [m.job_id for m in manifests if not m.is_final]:
        raise InvalidState(f"conversation {conversation} has turns still running ({', '.join(busy)}): "
                           "cancel them first")
    return manifests


def delete_conversation(bucket: Bucket, broker: dramatiq.Broker, conversation: str) -> list[str]:
    """Delete a conversation for good: every turn's job (inputs, outputs, manifest), its turn
    files and uploads, its manifest, and its turn numbers. Refused while a turn is not final."""
    from bucketbrush.management import delete_job

    manifests = turn_jobs(bucket, conversation)
    deleted = [key for m in manifests for key in delete_job(bucket, broker, m.job_id)]
    rest = [k for k in conversation_files(bucket, conversation) if k not in deleted]
    rest.append(bucket.layout.conversation_manifest_key(conversation))
    for key in rest:
        bucket.s3.delete_object(Bucket=bucket.name, Key=key)
    Conversations(bucket, broker.client).forget(conversation)
    return deleted + rest


# -- the sending side (bucketbrush chat) ---------------------------------------------------

class SentTurn(BaseModel):
    """A turn put into the bucket: where, and the job it makes (its id, from the content)."""

    conversation: str
    key: str
    job_id: str


def new_conversation_id() -> str:
    return secrets.token_hex(8)


def check_conversation_id(conversation: str) -> str:
    """``conversation`` when it is a valid id; else InvalidParams."""
    if not is_spec_job_id(conversation):
        raise InvalidParams(f"bad conversation id {conversation!r}: letters, digits, '_' and '-', up to 64, "
                            "starting with a letter or digit")
    return conversation


def send_turn(bucket: Bucket, message: str, *, conversation: str | None = None,
              image: Path | bytes | None = None, filename: str | None = None,
              params: dict[str, Any] | None = None, recipe: str | None = None) -> SentTurn:
    """Put one turn (a new conversation when ``conversation`` is None); ``image`` is a path or
    bytes (``filename`` names bytes; default ``image.png``).

    - An image alone: uploaded to ``inbox/chat/<conversation>/`` with the message in its
      metadata (URL-encoded).
    - Otherwise ``conversations/<conversation>/<turn>.json`` with the message, ``params``
      (overrides of what the intent chose) and ``recipe`` (a recipe named outright); an image
      goes first next to it, ``conversations/<conversation>/<turn>-<file>`` (not a turn: only
      ``.json`` files are), and the turn file names it as its ``image``.
    """
    conversation = check_conversation_id(conversation or new_conversation_id())
    turn = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{secrets.token_hex(3)}"
    data: bytes | None = None
    if image is not None:
        data, filename = (image, filename or "image.png") if isinstance(image, bytes) else (
            image.read_bytes(), filename or image.name)
        if not data:
            raise EmptyInput(f"{filename} is empty (0 bytes)")
        limit = bucket.settings.max_upload_bytes
        if len(data) > limit:
            raise InputTooLarge(f"{filename} is {len(data)} bytes; uploads are limited to {limit}")
        filename = safe_filename(filename)
    content_type = mimetypes.guess_type(filename or "")[0] or "application/octet-stream"
    if data is not None and params is None and recipe is None:
        key = f"{bucket.layout.chat_upload_prefix(conversation)}{turn}-{filename}"
        put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=data, Metadata={"message": quote(message)},
                                   ContentType=content_type)
    else:
        doc: dict[str, Any] = {"message": message}
        if data is not None:
            picture = f"{bucket.layout.turns_of(conversation)}{turn}-{filename}"
            bucket.s3.put_object(Bucket=bucket.name, Key=picture, Body=data, ContentType=content_type)
            doc["image"] = picture
        if params:
            doc["params"] = params
        if recipe is not None:
            doc["recipe"] = recipe
        key = bucket.layout.turn_key(conversation, turn)
        put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=json.dumps(doc).encode(),
                                   ContentType="application/json")
    ref = ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'))
    return SentTurn(conversation=conversation, key=key, job_id=job_id_for(ref))


def wait_recorded(bucket: Bucket, manifest: Manifest, *, timeout: float = 30) -> Conversation:
    """The conversation once it lists the (final) turn of ``manifest``: the runner records a
    turn right after its job's final manifest."""
    assert manifest.turn is not None
    store, deadline = Conversations(bucket, None), time.monotonic() + timeout
    while True:
        found, _ = store.read(manifest.turn.conversation)
        if found is not None and any(t.job_id == manifest.job_id for t in found.turns):
            return found
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"conversation {manifest.turn.conversation} does not list job {manifest.job_id} "
                               f"after {timeout:.0f}s")
        time.sleep(0.2)
