"""Conversations end to end on the local stack: turns written into the bucket go through the
event source, the handler, the queue and real runner processes; the rules refiner picks each
turn's recipe; the conversation manifest lists them in order."""

from __future__ import annotations

import itertools
import json
import time
import uuid

import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from bucketbrush import gallery
from bucketbrush.broker import build_broker
from bucketbrush.conversations import (
    CHAT_RECIPE,
    Conversation,
    Conversations,
    conversation_files,
    delete_conversation,
    wait_recorded,
)
from bucketbrush.errors import ConversationNotFound
from bucketbrush.jobs import ObjectRef
from bucketbrush.management import cancel_job, retry_job
from bucketbrush.manifest import Manifest, TurnInfo
from bucketbrush.samples import landscape
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from functions.events import S3Record
from functions.handler import Handler
from infra.local import LocalStack
from tests.helpers import check_outputs, drop, png_bytes, wait_final


def new_conversation() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def say(bucket: Bucket, conversation: str, turn: str, **doc: object) -> str:
    """Write a turn file; the job id it makes."""
    return drop(bucket, f"conversations/{conversation}/{turn}.json", json.dumps(doc).encode(),
                ContentType="application/json")


def finished(bucket: Bucket, job_id: str, timeout: float = 120) -> Manifest:
    """The turn's final job manifest, once its conversation lists it too."""
    manifest = wait_final(bucket, job_id, timeout)
    wait_recorded(bucket, manifest)
    return manifest


def test_five_turns_chain_undo_and_a_failed_turn(bucket: Bucket) -> None:
    """Upload + stylize, upscale, a failed remove_object, undo, remove the background, thanks:
    sent all at once, run in order, each on the picture the turns before left."""
    conversation = new_conversation()
    photo = f"inbox/chat/{conversation}/photo.png"
    jobs = [drop(bucket, photo, png_bytes(landscape(64, 48)), Metadata={"message": "make it noir"})]
    for i, message in enumerate(["upscale this cartoon 2x", "remove the lamp post", "undo",
                                 "remove the background", "thanks!"], start=2):
        jobs.append(say(bucket, conversation, f"t{i}", message=message))
    manifests = [finished(bucket, job_id) for job_id in jobs]

    assert [m.status for m in manifests] == ["succeeded", "succeeded", "failed", "succeeded", "succeeded",
                                             "succeeded"]
    assert [m.turn.seq for m in manifests] == [1, 2, 3, 4, 5, 6]
    assert [m.turn.intent for m in manifests] == ["stylize", "upscale", "remove_object", "undo",
                                                  "remove_background", "chat"]
    assert [m.recipe for m in manifests] == ["stylize", "upscale", "inpaint", CHAT_RECIPE, "remove-bg", CHAT_RECIPE]
    noir, big, failed, undo, cutout, thanks = manifests
    # Turn 1 restyles the upload (the session's runner has diffusion models, so stylize, not the filter).
    assert noir.turn.given == photo and noir.turn.input == photo and noir.params["style"] == "noir"
    assert noir.turn.prompt and noir.turn.refiner == "rules"
    # Turn 2 works on turn 1's picture: twice its size.
    (noir_image,), (big_image,) = check_outputs(bucket, noir), check_outputs(bucket, big)
    assert big.turn.input == noir.outputs[0].key and big.params["scale"] == 2
    assert big_image.size == (noir_image.width * 2, noir_image.height * 2)
    # Turn 3 fails with a stable code and a message, and writes nothing.
    assert failed.error.code == "invalid_params" and "mask_key" in failed.error.message and not failed.outputs
    assert failed.turn.input == big.outputs[0].key
    # Turn 4 goes back to the picture before the last edit (the upscale), past the failed turn.
    assert undo.turn.input == noir.outputs[0].key and undo.details["image"] == noir.outputs[0].key
    assert not undo.outputs
    # Turn 5 edits that picture; turn 6 only answers.
    assert cutout.turn.input == noir.outputs[0].key and cutout.outputs
    assert thanks.turn.answer and not thanks.outputs and thanks.turn.input is None

    doc = Conversations(bucket, None).get(conversation)
    assert [t.job_id for t in doc.turns] == jobs
    assert [t.message for t in doc.turns][:2] == ["make it noir", "upscale this cartoon 2x"]
    assert [t.status for t in doc.turns] == [m.status for m in manifests]
    assert [t.image for t in doc.turns] == [noir.outputs[0].key, big.outputs[0].key, big.outputs[0].key,
                                            noir.outputs[0].key, cutout.outputs[0].key, cutout.outputs[0].key]
    assert doc.image == cutout.outputs[0].key
    assert doc.turns[2].error.code == "invalid_params"
    assert all(m.timings["started_at"] >= p.timings["finished_at"] for p, m in itertools.pairwise(manifests))


def test_a_cancelled_turn_with_progress_leaves_the_chain_whole(bucket: Bucket, settings: Settings) -> None:
    """A turn that names its recipe (test-slow: slow by construction) reports progress and is
    cancelled; the next turn works on the picture the cancelled turn brought."""
    conversation = new_conversation()
    picture = f"pictures/{conversation}.png"
    bucket.s3.put_object(Bucket=bucket.name, Key=picture, Body=png_bytes(landscape(48, 32)))
    slow = say(bucket, conversation, "t1", message="hold on", image=picture, recipe="test-slow",
               params={"seconds": 60, "steps": 600})
    after = say(bucket, conversation, "t2", message="upscale this cartoon 2x")
    deadline = time.monotonic() + 60
    while (m := bucket.read_manifest(slow)) is None or m.progress.step == 0:
        assert time.monotonic() < deadline, f"no progress: {m}"
        time.sleep(0.1)
    assert m.status == "running" and m.turn.seq == 1
    cancel_job(bucket, slow)
    cancelled, upscaled = finished(bucket, slow), finished(bucket, after)
    assert cancelled.status == "cancelled" and cancelled.error.code == "cancelled"
    assert cancelled.timings["finished_at"] - cancelled.timings["started_at"] < 30
    assert upscaled.status == "succeeded" and upscaled.turn.input == picture
    assert check_outputs(bucket, upscaled)[0].size == (96, 64)


def test_turns_run_in_order_with_two_runners(stack: LocalStack, bucket: Bucket) -> None:
    """Four turns sent at once to two runner processes: a runner that gets a turn whose
    predecessor is not final puts it back (``deferred``), so each turn starts after the one
    before it finished and works on its output."""
    stack.start_runner("runner-conv")
    try:
        conversation = new_conversation()
        picture = f"pictures/{conversation}.png"
        bucket.s3.put_object(Bucket=bucket.name, Key=picture, Body=png_bytes(landscape(48, 32)))
        jobs = [say(bucket, conversation, "t1", message="first", image=picture, recipe="test-slow",
                    params={"seconds": 3, "steps": 30})]
        jobs += [say(bucket, conversation, f"t{i}", message="next", recipe="test-slow",
                     params={"seconds": 0.3, "steps": 3}) for i in (2, 3)]
        jobs.append(say(bucket, conversation, "t4", message="upscale this cartoon 2x"))
        manifests = [finished(bucket, job_id) for job_id in jobs]
    finally:
        assert stack.stop_runner("runner-conv")
    assert [m.status for m in manifests] == ["succeeded"] * 4
    assert [m.turn.seq for m in manifests] == [1, 2, 3, 4]
    for before, turn in itertools.pairwise(manifests):
        assert turn.timings["started_at"] >= before.timings["finished_at"]
        assert turn.turn.input == before.outputs[0].key
    # Positive evidence that the second runner took part: only a runner other than the one
    # running turn 1 can hold a later turn while turn 1 runs.
    assert sum(m.turn.deferred for m in manifests) >= 1


def test_retry_soft_delete_restore_and_delete_a_conversation(bucket: Bucket, settings: Settings) -> None:
    gallery.enable_versioning(bucket)
    conversation = new_conversation()
    photo, late = f"inbox/chat/{conversation}/photo.png", f"pictures/{conversation}-late.png"
    jobs = [drop(bucket, photo, png_bytes(landscape(48, 32)), Metadata={"message": "hello%20there"}),
            say(bucket, conversation, "t2", message="upscale this cartoon 2x", image=late)]
    hello, missing = [finished(bucket, j) for j in jobs]
    assert hello.turn.message == "hello there" and hello.turn.intent == "chat"  # URL-decoded metadata
    assert missing.status == "failed" and missing.error.code == "input_missing"
    # Retried once its picture is there, the turn runs again as that turn and is recorded again.
    bucket.s3.put_object(Bucket=bucket.name, Key=late, Body=png_bytes(landscape(40, 30)))
    assert retry_job(bucket, build_broker(settings), missing.job_id).turn.seq == 2
    upscaled = wait_final(bucket, missing.job_id)
    assert upscaled.status == "succeeded" and upscaled.turn.input == late
    deadline = time.monotonic() + 30
    while Conversations(bucket, None).get(conversation).turns[1].status != "succeeded":
        assert time.monotonic() < deadline, "the retried turn was not recorded"
        time.sleep(0.1)
    assert Conversations(bucket, None).get(conversation).image == upscaled.outputs[0].key

    keys = gallery.soft_delete_conversation(bucket, conversation)
    assert bucket.layout.conversation_manifest_key(conversation) in keys and upscaled.outputs[0].key in keys
    assert conversation in gallery.deleted_conversations(bucket)
    assert bucket.read_manifest(upscaled.job_id) is None and not bucket.exists(upscaled.outputs[0].key)
    with pytest.raises(ConversationNotFound):
        Conversations(bucket, None).get(conversation)
    gallery.restore_conversation(bucket, conversation)
    doc = Conversations(bucket, None).get(conversation)
    assert [t.job_id for t in doc.turns] == jobs and bucket.exists(upscaled.outputs[0].key)
    assert bucket.exists(photo) and bucket.read_manifest(upscaled.job_id).status == "succeeded"

    deleted = delete_conversation(bucket, build_broker(settings), conversation)
    assert {photo, upscaled.outputs[0].key, bucket.layout.turn_key(conversation, "t2"),
            bucket.layout.conversation_manifest_key(conversation)} <= set(deleted)
    assert not any(bucket.exists(k) for k in deleted)
    with pytest.raises(ConversationNotFound):
        Conversations(bucket, None).get(conversation)


@pytest.fixture(scope="module")
def unit_settings(settings: Settings) -> Settings:
    """The stack's Redis and SeaweedFS, on a bucket of its own that no event source follows."""
    unit = settings.model_copy(update={"bucket": "conversations-unit"})
    Bucket(unit).s3.create_bucket(Bucket=unit.bucket)
    return unit


def test_the_handler_numbers_turns_once_in_arrival_order(unit_settings: Settings) -> None:
    """The handler alone, with Dramatiq's StubBroker."""
    unit = unit_settings
    bucket = Bucket(unit)
    client = redis.Redis.from_url(unit.redis_url)
    handler = Handler(unit, bucket, StubBroker(), client)
    conversation = new_conversation()

    def event(turn: str) -> S3Record:
        key = f"conversations/{conversation}/{turn}.json"
        put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=b'{"message": "hi"}')
        return S3Record.created("test", ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"')))

    first, second = event("a"), event("b")
    outcomes = [handler.handle_record(r) for r in (first, second, first)]
    assert [o.action for o in outcomes] == ["enqueued", "enqueued", "duplicate"]
    queued = [bucket.read_manifest(o.job_id) for o in outcomes[:2]]
    assert [(m.status, m.recipe, m.turn.seq, m.turn.name) for m in queued] == [
        ("queued", CHAT_RECIPE, 1, "a"), ("queued", CHAT_RECIPE, 2, "b")]
    store = Conversations(bucket, client)
    assert store.next_seq(conversation, first.ref.identity) == 1  # the same turn keeps its number
    # With its Redis state gone, a conversation goes on after the turns its manifest records.
    store.forget(conversation)
    store.record(Manifest(job_id=outcomes[1].job_id, status="succeeded", recipe=CHAT_RECIPE,
                          turn=TurnInfo(conversation=conversation, seq=2, name="b", intent="chat")))
    assert store.get(conversation).last_seq == 2
    assert handler.handle_record(event("c")).action == "enqueued"
    assert store.next_seq(conversation, "another turn") == 4


def test_concurrent_records_lose_no_turn(unit_settings: Settings) -> None:
    """Eight writers record eight turns of one conversation at once (the stack's Redis lock and
    SeaweedFS): the manifest ends up listing every one, in order."""
    from concurrent.futures import ThreadPoolExecutor

    bucket = Bucket(unit_settings)
    unit = unit_settings
    conversation = new_conversation()

    def write(seq: int) -> None:
        store = Conversations(Bucket(unit), redis.Redis.from_url(unit.redis_url))
        store.record(Manifest(job_id=f"j{seq}", status="succeeded", recipe=CHAT_RECIPE,
                              turn=TurnInfo(conversation=conversation, seq=seq, name=str(seq), intent="chat")))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(1, 9)))
    doc = Conversations(bucket, None).get(conversation)
    assert [t.seq for t in doc.turns] == list(range(1, 9))
    assert [t.job_id for t in doc.turns] == [f"j{n}" for n in range(1, 9)]


def test_bucketbrush_chat_runs_a_turn_and_says_how_to_continue(bucket: Bucket, tmp_path, monkeypatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from bucketbrush.cli import main

    monkeypatch.setenv("BUCKETBRUSH_BUCKET", bucket.name)  # the stack's state file has the rest
    picture = tmp_path / "photo.png"
    picture.write_bytes(png_bytes(landscape(48, 32)))
    assert main(["chat", "make it noir", "--image", str(picture), "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    conversation = out.split("conversation ", 1)[1].split(",", 1)[0]
    assert "turn 1: 'make it noir' -> stylize (rules refiner)" in out
    assert "refined prompt: film noir" in out and "succeeded (stylize" in out
    assert f'continue: bucketbrush chat --conversation {conversation} "..."' in out
    assert main(["chat", "--conversation", conversation, "undo", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "turn 2: 'undo' -> undo" in out and f"back to picture inbox/chat/{conversation}/" in out
    assert main(["chat", "--conversation", conversation, "upscale this cartoon 2x", "--json", "--timeout", "120"]) == 0
    manifest = Manifest.model_validate_json(capsys.readouterr().out)
    doc = Conversations(bucket, None).get(conversation)
    assert manifest.turn.seq == 3 and manifest.turn.input == doc.turns[0].given  # the photo, after the undo
    assert doc.image == manifest.outputs[0].key
    assert main(["conversations", "show", conversation]) == 0
    assert Conversation.model_validate_json(capsys.readouterr().out).image == doc.image


def test_an_app_sends_a_turn_through_a_presigned_post(bucket: Bucket, settings: Settings) -> None:
    """The way in for apps without credentials: a presigned POST of the picture, the message
    signed into the policy; the job id is the ticket in the key."""
    from bucketbrush.client import post_upload
    from bucketbrush.presign import presign_upload

    conversation = new_conversation()
    upload = presign_upload(bucket.public_s3, settings, recipe="chat", conversation=conversation,
                            filename="me.png", params={"message": "remove the background"})
    post_upload(upload, png_bytes(landscape(48, 32)), "me.png", "image/png")
    manifest = finished(bucket, upload.job_id)
    assert manifest.status == "succeeded" and manifest.recipe == "remove-bg"
    assert (manifest.turn.seq, manifest.turn.message, manifest.turn.given) == (1, "remove the background", upload.key)
    assert Conversations(bucket, None).get(conversation).turns[0].job_id == upload.job_id


def test_a_conversations_events_are_handled_in_order_on_the_handlers_pool(unit_settings: Settings) -> None:
    """The handler works on several records at once (``handler_concurrency``), in order per key:
    a conversation's turns are one key, so they are numbered in the order their events came."""
    bucket = Bucket(unit_settings)
    handler = Handler(unit_settings.model_copy(update={"handler_concurrency": 8}), bucket, StubBroker(),
                      redis.Redis.from_url(unit_settings.redis_url))
    conversation = new_conversation()
    records = []
    for i in range(12):
        key = f"conversations/{conversation}/t{i:02d}.json"
        put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=json.dumps({"message": str(i)}).encode())
        records.append(S3Record.created("test", ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'))))
    outcomes = handler.handle(records)
    assert [o.action for o in outcomes] == ["enqueued"] * 12
    assert [bucket.read_manifest(o.job_id).turn.seq for o in outcomes] == list(range(1, 13))



def test_the_python_client_chats(bucket: Bucket, settings: Settings, tmp_path) -> None:
    """``Studio.conversation().say(...)`` through the real stack: a picture as bytes, a turn that
    edits the result, a turn with a picture and a named recipe with params, and the history."""
    from PIL import Image

    from bucketbrush.client import Studio, Turn
    from bucketbrush.errors import EmptyInput, InvalidParams

    studio = Studio(settings, bucket)
    chat = studio.conversation()
    assert chat.history().turns == [] and chat.image is None  # nothing recorded yet
    first = chat.say("make it noir", image=png_bytes(landscape(64, 48)), filename="me.png")
    assert isinstance(first, Turn) and first.key.startswith(f"inbox/chat/{chat.conversation_id}/")
    manifest = first.wait(timeout=120)
    assert manifest.status == "succeeded" and (manifest.turn.seq, manifest.turn.intent) == (1, "stylize")
    assert manifest.turn.given == first.key
    assert first.conversation is not None and first.conversation.turns[-1].job_id == first.job_id

    second = studio.chat("upscale this 2x", conversation=chat.conversation_id)  # the one-call form
    assert second.key.startswith(f"conversations/{chat.conversation_id}/") and second.key.endswith(".json")
    assert second.wait(timeout=120).turn.input == manifest.outputs[0].key  # it edits turn 1's picture
    (path,) = second.download(tmp_path / "out")
    assert Image.open(path).size == (manifest.outputs[0].width * 2, manifest.outputs[0].height * 2)

    # A picture with params: stored beside the turn file (not a turn itself), named as its image.
    picture = tmp_path / "new.png"
    picture.write_bytes(png_bytes(landscape(40, 30)))
    third = chat.say("sepia please", image=picture, recipe="filter", params={"style": "sepia"})
    done = third.wait(timeout=120)
    assert done.status == "succeeded" and (done.recipe, done.params["style"]) == ("filter", "sepia")
    assert done.turn.seq == 3 and done.turn.given == done.turn.input
    assert done.turn.given.startswith(f"conversations/{chat.conversation_id}/") and done.turn.given.endswith("-new.png")
    assert [o.width for o in third.outputs()] == [40]

    history = chat.history()
    assert [(t.seq, t.job_id, t.status) for t in history.turns] == [
        (1, first.job_id, "succeeded"), (2, second.job_id, "succeeded"), (3, third.job_id, "succeeded")]
    assert history.image == chat.image == done.outputs[0].key
    assert Conversations(bucket, None).get(chat.conversation_id) == history  # the manifest the CLI shows
    # Bad input is refused before anything is put: the conversation's objects stay the same.
    files = conversation_files(bucket, chat.conversation_id)
    assert len(files) == 4  # the upload, two turn files, the picture beside the third
    with pytest.raises(InvalidParams, match="conversation id"):
        studio.conversation("../x")
    with pytest.raises(EmptyInput):
        chat.say("hello", image=b"")
    assert conversation_files(bucket, chat.conversation_id) == files
