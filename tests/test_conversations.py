"""Conversations without servers: the layout of turns, the picture stack, and a refined turn ->
recipe, params and input (the rules refiner's real output, gpu_runner/conversation.py)."""

from __future__ import annotations

import json

import pytest

from bucketbrush.conversations import CHAT_RECIPE, Conversation, TurnRecord, image_stack
from bucketbrush.errors import NoImage, NothingToUndo
from bucketbrush.jobs import ObjectRef
from bucketbrush.layout import Layout, NotAnInput
from bucketbrush.manifest import ErrorInfo, Manifest, Output, TurnInfo
from bucketbrush.settings import Settings
from gpu_runner.conversation import TurnRequest, choose
from gpu_runner.refine.rules import RulesRefiner
from tests.helpers import documented_intent_recipes

LAYOUT = Layout(Settings(_env_file=None))


# -- layout --------------------------------------------------------------------------------

def test_a_turn_file_is_a_turn() -> None:
    key = LAYOUT.parse_input("conversations/c-1/0002.json")
    assert (key.kind, key.conversation, key.turn, key.job_id, key.recipe) == ("turn", "c-1", "0002", None, None)
    assert LAYOUT.turn_key("c-1", "0002") == "conversations/c-1/0002.json"


def test_a_chat_upload_is_a_turn() -> None:
    key = LAYOUT.parse_input("inbox/chat/c_1/photo.jpg")
    assert (key.kind, key.conversation, key.turn) == ("turn", "c_1", "photo.jpg")
    assert LAYOUT.chat_upload_prefix("c_1") == "inbox/chat/c_1/"
    # Other recipes' folders stay uploads.
    assert LAYOUT.parse_input("inbox/filter/c_1/photo.jpg").kind == "upload"


@pytest.mark.parametrize("key", ["conversations/c1/readme.txt", "conversations/c1/a/b.json", "conversations/c1/",
                                 "conversations/c1.json", "conversations/c1/.json"])
def test_other_keys_under_conversations_are_ignored(key: str) -> None:
    with pytest.raises(NotAnInput) as info:
        LAYOUT.parse_input(key)
    assert not info.value.rejected


@pytest.mark.parametrize("key", ["conversations/bad id/t.json", "conversations/-x/t.json", "inbox/chat/photo.jpg",
                                 "inbox/chat/bad!id/photo.jpg", f"conversations/{'c' * 65}/t.json"])
def test_bad_conversation_ids_are_rejected(key: str) -> None:
    with pytest.raises(NotAnInput) as info:
        LAYOUT.parse_input(key)
    assert info.value.rejected


def test_conversation_manifests_are_not_job_manifests() -> None:
    key = LAYOUT.conversation_manifest_key("c1")
    assert key == "manifests/conversations/c1.json"
    assert LAYOUT.conversation_of_manifest(key) == "c1"
    assert LAYOUT.job_id_of_manifest(key) is None
    assert LAYOUT.conversation_of_manifest("manifests/c1.json") is None


def test_events_and_the_sweep_cover_the_conversations_folder() -> None:
    assert LAYOUT.input_folders == {"inbox": "inbox/", "jobs": "jobs/", "conversations": "conversations/"}


# -- the picture stack -----------------------------------------------------------------------

def record(seq: int, intent: str | None, status: str = "succeeded", output: str | None = None,
           given: str | None = None) -> TurnRecord:
    return TurnRecord(seq=seq, name=str(seq), job_id=f"j{seq}", status=status, intent=intent, output=output,
                      given=given)


def test_edits_chain_failures_change_nothing_and_undo_goes_back() -> None:
    turns = [
        record(1, "stylize", given="inbox/chat/c/photo.png", output="o1"),
        record(2, "upscale", output="o2"),
        record(3, "remove_object", status="failed"),
        record(4, "chat"),
    ]
    assert image_stack(turns) == ["inbox/chat/c/photo.png", "o1", "o2"]
    assert image_stack([*turns, record(5, "undo")]) == ["inbox/chat/c/photo.png", "o1"]
    assert image_stack([*turns, record(5, "undo"), record(6, "undo")]) == ["inbox/chat/c/photo.png"]
    # Nothing before the first picture: undo leaves it.
    assert image_stack([record(1, "generate", output="g"), record(2, "undo")]) == ["g"]


def test_a_failed_turns_own_picture_still_counts_unless_it_was_the_problem() -> None:
    failed = record(1, "remove_object", status="failed", given="inbox/chat/c/photo.png")
    failed.error = ErrorInfo(code="invalid_params", message="no mask")
    assert image_stack([failed]) == ["inbox/chat/c/photo.png"]
    failed.error = ErrorInfo(code="invalid_image", message="not an image")
    assert image_stack([failed]) == []


def test_conversation_upsert_orders_turns_and_tracks_the_picture() -> None:
    doc = Conversation(conversation_id="c")
    doc.upsert(record(2, "upscale", output="o2"))
    assert doc.waiting_for(3) == [1]
    doc.upsert(record(1, "generate", output="o1"))
    assert [t.seq for t in doc.turns] == [1, 2]
    assert [t.image for t in doc.turns] == ["o1", "o2"] and doc.image == "o2"
    assert doc.waiting_for(3) == [] and doc.stack_before(2) == ["o1"]
    doc.upsert(record(2, "upscale", status="failed"))  # a record of the same turn replaces it
    assert len(doc.turns) == 2 and doc.image == "o1"


def test_turn_record_of_a_job_manifest() -> None:
    manifest = Manifest(
        job_id="j", status="succeeded", recipe="remove-bg", params={"output_mask": True},
        inputs=[ObjectRef(bucket="b", key="conversations/c/t.json"), ObjectRef(bucket="b", key="o1")],
        outputs=[Output(key="outputs/j/mask.json", content_type="application/json", bytes=1, sha256="x"),
                 Output(key="outputs/j/cutout.png", content_type="image/png", bytes=1, sha256="y")],
        turn=TurnInfo(conversation="c", seq=3, name="t", message="cut it out", intent="remove_background",
                      refiner="rules", input="o1"),
        error=None,
    )
    rec = TurnRecord.of(manifest)
    assert (rec.seq, rec.job_id, rec.intent, rec.recipe, rec.input) == (3, "j", "remove_background", "remove-bg", "o1")
    assert rec.output == "outputs/j/cutout.png"  # the first image, not the JSON
    failed = manifest.model_copy(update={"status": "failed", "outputs": [],
                                         "error": ErrorInfo(code="invalid_params", message="m")})
    assert TurnRecord.of(failed).output is None and TurnRecord.of(failed).error.code == "invalid_params"


# -- a refined turn -> recipe, params, input ------------------------------------------------------

RULES = RulesRefiner()
STACK = ["inbox/chat/c/photo.png", "outputs/j1/sepia.png"]


def chosen(text: str, stack: list[str] = STACK, diffusion: bool = False, **overrides: object):
    return choose(RULES.refine(text, has_image=bool(stack)), stack, diffusion=diffusion, overrides=overrides)


def test_filter_styles_use_the_filter_recipe_without_diffusion() -> None:
    choice = chosen("make it sepia")
    assert (choice.recipe, choice.params, choice.input) == ("filter", {"style": "sepia"}, STACK[-1])
    assert choice.warnings
    with_models = chosen("make it sepia", diffusion=True)
    assert (with_models.recipe, with_models.params["style"], with_models.warnings) == ("stylize", "sepia", [])
    # A style no filter has stays stylize (and fails without a model, as any stylize job does).
    assert chosen("make it look like anime").recipe == "stylize"


@pytest.mark.parametrize(("text", "intent"), [
    ("upscale it", "upscale"), ("remove the background", "remove_background"), ("split it into layers", "layers"),
    ("make the sky purple", "edit"), ("erase the car", "remove_object"),
])
def test_edits_run_the_intents_recipe_on_the_current_picture(text: str, intent: str) -> None:
    refinement = RULES.refine(text, has_image=True)
    assert refinement.intent == intent
    choice = choose(refinement, STACK, diffusion=True)
    assert choice.recipe == documented_intent_recipes()[intent] and choice.input == STACK[-1]


def test_generate_starts_fresh_and_chat_renders_nothing() -> None:
    fresh = chosen("a lighthouse at dawn", stack=[])
    assert (fresh.recipe, fresh.input) == ("txt2img", None) and "lighthouse" in fresh.params["prompt"]
    talk = chosen("thanks!")
    assert (talk.recipe, talk.input, talk.params) == (CHAT_RECIPE, None, {})


def test_undo_goes_back_to_the_picture_before() -> None:
    assert chosen("undo").recipe == CHAT_RECIPE and chosen("undo").input == STACK[0]
    with pytest.raises(NothingToUndo):
        chosen("undo", stack=STACK[:1])


def test_an_edit_without_a_picture_is_no_image() -> None:
    refinement = RULES.refine("upscale it", has_image=True)  # as a model might answer, whatever the context
    with pytest.raises(NoImage):
        choose(refinement, [], diffusion=True)


def test_the_turns_params_override_the_chosen_ones() -> None:
    choice = chosen("remove the lamp post", mask_key="masks/lamp.png")
    assert choice.recipe == "inpaint" and choice.params["mask_key"] == "masks/lamp.png"


def test_turn_request_validation() -> None:
    assert TurnRequest.model_validate({"message": "hi"}).image is None
    for bad in ({"message": "x", "image": "../etc"}, {"message": "x", "colour": 1}, {"message": 3},
                {"message": "x", "recipe": "Bad Name"}):
        with pytest.raises(ValueError):
            TurnRequest.model_validate(bad)


def test_a_turns_message_may_run_as_long_as_the_longest_recipe() -> None:
    from dramatiq.brokers.stub import StubBroker

    from bucketbrush.broker import enqueue_job
    from bucketbrush.jobs import JobSpec, TurnRef

    settings = Settings(_env_file=None, job_time_limit_s=600, recipe_time_limits_s={"upscale": 1200})
    source = ObjectRef(bucket="b", key="conversations/c/t.json")
    turn = enqueue_job(StubBroker(), settings, JobSpec(job_id="j", recipe=CHAT_RECIPE, source=source,
                                                       turn=TurnRef(conversation="c", seq=1, name="t")))
    job = enqueue_job(StubBroker(), settings, JobSpec(job_id="k", recipe="filter", source=source))
    assert (turn.options["time_limit"], job.options["time_limit"]) == (1_200_000, 600_000)
    alone = enqueue_job(StubBroker(), Settings(_env_file=None), JobSpec(
        job_id="j", recipe=CHAT_RECIPE, source=source, turn=TurnRef(conversation="c", seq=1, name="t")))
    assert alone.options["time_limit"] == Settings(_env_file=None).job_time_limit_s * 1000


def test_a_presigned_chat_upload_goes_to_its_conversation_with_its_message_signed() -> None:
    import boto3

    from bucketbrush.errors import InvalidParams
    from bucketbrush.presign import presign_upload

    settings = Settings(_env_file=None, s3_endpoint_url="http://127.0.0.1:9", s3_access_key="ak", s3_secret_key="sk")
    s3 = boto3.client("s3", **settings.s3_client_kwargs())  # signing is local: no server is asked
    upload = presign_upload(s3, settings, recipe="chat", conversation="c-1", filename="me.jpg",
                            params={"message": "make it noir ☕"})
    assert upload.key == f"inbox/chat/c-1/{upload.job_id}/me.jpg"
    key = LAYOUT.parse_input(upload.key)
    assert (key.kind, key.conversation, key.job_id, key.turn) == ("turn", "c-1", upload.job_id, "me.jpg")
    assert upload.fields["x-amz-meta-params"].isascii()
    assert json.loads(upload.fields["x-amz-meta-params"]) == {"message": "make it noir ☕"}
    for bad in ({"conversation": None}, {"conversation": "bad id"}, {"conversation": 7},
                {"conversation": "c-1", "params": {"message": "x", "style": "noir"}}):
        with pytest.raises(InvalidParams):
            presign_upload(s3, settings, recipe="chat", **{"params": {"message": "x"}, **bad})
    with pytest.raises(InvalidParams):
        presign_upload(s3, settings, recipe="filter", conversation="c-1")
