"""A chat turn on the runner (bucketbrush/conversations.py has the layout and the manifest).

``TurnRunner.run``: wait until the turns before this one are final (the message goes back to
the queue with a short delay, so a runner never blocks on another's turn), then run the turn
as a normal job (``JobRunner.run`` with a ``prepare`` step: manifest, progress, cancel,
webhooks, outputs) and record it in the conversation's manifest. ``prepare`` reads the turn,
refines its message (the configured refiner, ``gpu_runner.refine``) and ``choose``s the
recipe, params and input: the intent's recipe (``RECIPE_FOR``) on the conversation's current
picture, or fresh for ``generate``; ``chat`` and ``undo`` render nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bucketbrush.conversations import CHAT_RECIPE, Conversation, Conversations
from bucketbrush.errors import (
    BucketbrushError,
    InputMissing,
    InvalidTurn,
    NoImage,
    NothingToUndo,
    OutsideTenant,
    QuotaExceeded,
)
from bucketbrush.jobs import JobSpec, ObjectRef, json_object
from bucketbrush.layout import unsafe_key
from bucketbrush.manifest import Manifest, TurnInfo
from bucketbrush.store import Bucket
from gpu_runner.recipes import get_recipe
from gpu_runner.recipes.filter import STYLES as FILTER_STYLES
from gpu_runner.refine import Refinement, Refiner
from gpu_runner.refine.schema import NEEDS_INPUT
from gpu_runner.runner import JobRunner, get_input

if TYPE_CHECKING:
    import dramatiq

log = logging.getLogger(__name__)

MAX_TURN_BYTES = 64 * 1024
# A waiting turn goes back to the queue after this many ms, doubling up to the maximum.
DEFER_MS, MAX_DEFER_MS = 100, 2000


class TurnRequest(BaseModel):
    """What a turn asks: a turn file's JSON, or a chat upload's metadata (the upload is its image)."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(default="", max_length=4000)
    # A picture for this turn (any key in the bucket): it becomes the conversation's current one.
    image: str | None = None
    # Overrides merged into the params the turn's intent chose (e.g. a mask_key for remove_object).
    params: dict[str, Any] = Field(default_factory=dict)
    # A recipe named outright (an app's button): no refinement, ``params`` are its params.
    recipe: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")

    @field_validator("image")
    @classmethod
    def _safe_key(cls, v: str | None) -> str | None:
        if v is not None and (problem := unsafe_key(v)):
            raise ValueError(f"not a key in the bucket: {problem}")
        return v


def read_request(bucket: Bucket, spec: JobSpec) -> TurnRequest:
    """The turn's request, from its JSON file or from its upload's metadata (``message``,
    URL-encoded when not ASCII, or ``message`` in the ``params`` JSON); ``bucket`` is the turn's
    tenant's view."""
    source = spec.source
    try:
        if source.key.startswith(bucket.layout.conversations):
            obj = get_input(bucket, source)
            body = obj["Body"].read(MAX_TURN_BYTES + 1)
            if len(body) > MAX_TURN_BYTES:
                raise InvalidTurn(f"the turn file is over {MAX_TURN_BYTES} bytes")
            return TurnRequest.model_validate(json_object(body, "the turn file", InvalidTurn))
        kwargs: dict[str, Any] = {"Bucket": source.bucket, "Key": source.key}
        if source.version_id:
            kwargs["VersionId"] = source.version_id
        metadata = bucket.s3.head_object(**kwargs).get("Metadata", {})
        message = unquote(metadata.get("message", ""))
        if not message and "params" in metadata:
            message = str(json_object(metadata["params"], "x-amz-meta-params", InvalidTurn).get("message", ""))
        return TurnRequest(message=message, image=source.key)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'turn'}: {e['msg']}" for e in exc.errors())
        raise InvalidTurn(f"invalid turn: {problems}") from exc


@dataclass
class Choice:
    """What a turn runs: a recipe (CHAT_RECIPE: nothing), its params, and the picture it works
    on (for undo: the picture the conversation goes back to)."""

    recipe: str
    params: dict[str, Any]
    input: str | None
    warnings: list[str] = field(default_factory=list)


def choose(refinement: Refinement, stack: list[str], *, diffusion: bool,
           overrides: dict[str, Any] | None = None) -> Choice:
    """The recipe, params and input for a refined turn, given the conversation's pictures
    (``stack``, oldest first) and whether this runner has diffusion models."""
    intent = refinement.intent
    if intent == "chat":
        return Choice(CHAT_RECIPE, {}, None)
    if intent == "undo":
        if len(stack) < 2:
            raise NothingToUndo("there is no earlier picture in this conversation to go back to")
        return Choice(CHAT_RECIPE, {}, stack[-2])
    assert refinement.recipe is not None
    recipe, params, warnings = refinement.recipe, dict(refinement.params), []
    if intent == "stylize" and not diffusion and params.get("style") in FILTER_STYLES:
        # The six filter styles look the part without a diffusion model.
        recipe, params = "filter", {"style": params["style"]}
        warnings.append(f"no diffusion model on this runner: the {params['style']!r} style is the filter recipe's")
    source = None
    if intent in NEEDS_INPUT:
        if not stack:
            raise NoImage(f"{intent} works on a picture, and this conversation has none yet: "
                          "send one (an upload to inbox/chat/<conversation>/, or \"image\" in the turn)")
        source = stack[-1]
    return Choice(recipe, params | (overrides or {}), source, warnings)


class TurnRunner:
    """Runs chat turns in order, each through the ``JobRunner``. One per worker process."""

    def __init__(self, runner: JobRunner, broker: dramatiq.Broker, refiner: Refiner) -> None:
        self.runner = runner
        self.bucket = runner.bucket
        self.broker = broker
        self.refiner = refiner
        self.conversations = Conversations(self.bucket, broker.client)

    def run(self, spec: JobSpec, *, message: dramatiq.Message | None = None, attempt: int = 1,
            last_attempt: bool = True, **run_options: Any) -> Manifest | None:
        """Run the turn, or put it back in the queue (None) while an earlier one is not final.
        ``run_options`` go to ``JobRunner.run`` (the delivery, the runner deaths counted)."""
        turn = spec.turn
        assert turn is not None
        # The turn's tenant's view: its manifests, its conversation (numbers, lock) and its keys.
        bucket, conversations = self.bucket.for_tenant(spec.tenant), self.conversations.for_tenant(spec.tenant)
        existing = bucket.read_manifest(spec.job_id)
        if existing and existing.finished_for(spec.source):
            conversations.record(existing)  # a crash between the job's manifest and the conversation's
            return existing
        found, _ = conversations.read(turn.conversation)
        doc = found or Conversation(conversation_id=turn.conversation)
        options = message.options if message is not None else {}
        deferred, since = options.get("turn_deferred", 0), options.get("turn_waiting_since") or time.time()
        warnings = []
        if (waiting := doc.waiting_for(turn.seq)) and not bucket.exists(bucket.cancel_key(spec.job_id)):
            waited = time.time() - since
            if message is not None and waited < self.runner.settings.conversation_wait_s:
                delay = min(DEFER_MS * 2 ** min(deferred, 5), MAX_DEFER_MS)
                self.broker.enqueue(message.copy(options={"turn_deferred": deferred + 1, "turn_waiting_since": since}),
                                    delay=delay)
                log.info("turn %d of conversation %s waits for turn(s) %s; back in %d ms",
                         turn.seq, turn.conversation, waiting, delay)
                return None
            warnings.append(f"turn(s) {waiting} were not final after {waited:.0f} s; this turn did not wait for them")

        def prepare(manifest: Manifest) -> JobSpec:
            return self._prepare(bucket, spec, manifest, doc, deferred, warnings)

        try:
            manifest = self.runner.run(spec, attempt=attempt, last_attempt=last_attempt, prepare=prepare,
                                       **run_options)
        except BucketbrushError:
            failed = bucket.read_manifest(spec.job_id)
            if failed is not None and failed.is_final and failed.turn is not None:
                conversations.record(failed)
            raise
        conversations.record(manifest)
        return manifest

    def _prepare(self, bucket: Bucket, spec: JobSpec, manifest: Manifest, doc: Conversation, deferred: int,
                 warnings: list[str]) -> JobSpec:
        """Refine the turn and pick what it runs; fills in the manifest's ``turn``."""
        turn = spec.turn
        assert turn is not None
        manifest.turn = TurnInfo(**turn.model_dump(), deferred=deferred)
        manifest.warnings += warnings
        request = read_request(bucket, spec)
        if request.image and not bucket.layout.owns(request.image):
            whose = f"tenant {bucket.tenant!r}" if bucket.tenant else "the default tenant"
            raise OutsideTenant(f"the turn's image {request.image!r} is not one of {whose}'s")
        if request.image and request.image != spec.source.key and not bucket.exists(request.image):
            raise InputMissing(f"the turn's image {request.image!r} does not exist")
        stack = doc.stack_before(turn.seq) + ([request.image] if request.image else [])
        manifest.turn = manifest.turn.model_copy(update={"message": request.message, "given": request.image})
        if request.recipe is not None:
            choice = self._named(request, stack)
        else:
            refinement = self.refiner.refine(request.message, has_image=bool(stack))
            manifest.turn = manifest.turn.model_copy(update={
                "intent": refinement.intent, "prompt": refinement.prompt, "negative_prompt": refinement.negative_prompt,
                "refiner": refinement.refiner, "answer": refinement.answer})
            manifest.warnings += refinement.warnings
            choice = choose(refinement, stack, diffusion=self.runner.models is not None, overrides=request.params)
        manifest.warnings += choice.warnings
        if spec.allowed_recipes and choice.recipe != CHAT_RECIPE and choice.recipe not in spec.allowed_recipes:
            raise QuotaExceeded(f"tenant {spec.tenant!r} may not run recipe {choice.recipe!r} (allowed: "
                                f"{', '.join(spec.allowed_recipes)}); this limit does not reset: ask for the recipe")
        manifest.turn = manifest.turn.model_copy(update={"input": choice.input})
        if choice.input is None:
            source = None
        elif choice.input == spec.source.key:
            source = spec.source
        else:
            source = ObjectRef(bucket=bucket.name, key=choice.input)
        return spec.model_copy(update={"recipe": choice.recipe, "params": choice.params, "input": source})

    def _named(self, request: TurnRequest, stack: list[str]) -> Choice:
        """A turn that names its recipe: that recipe with the turn's params on the current picture."""
        assert request.recipe is not None
        if not get_recipe(request.recipe, testing=self.runner.settings.test_recipes).needs_input:
            return Choice(request.recipe, request.params, None)
        if not stack:
            raise NoImage(f"{request.recipe} works on a picture, and this conversation has none yet")
        return Choice(request.recipe, request.params, stack[-1])


__all__ = ["Choice", "TurnRequest", "TurnRunner", "choose", "read_request"]
