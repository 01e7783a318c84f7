"""End to end through real SeaweedFS, Redis, the filer event source and a runner process."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import urllib3
from PIL import Image

from bucketbrush.client import post_upload, submit_file
from bucketbrush.errors import InvalidParams, UploadRejected
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.presign import presign_upload
from bucketbrush.samples import landscape, portrait
from bucketbrush.store import s3_client
from functions.events import S3Record
from functions.handler import Handler
from gpu_runner.recipes.filter import STYLES
from tests.helpers import check_outputs, delayed_job_ids, drop, flush_pipeline, png_bytes, wait_final

pytestmark = pytest.mark.e2e


def test_presigned_post_upload_succeeds(settings, bucket, tmp_path):
    path = tmp_path / "scene.png"
    landscape(160, 120).save(path)
    upload, manifest = submit_file(settings, path, "filter", {"style": "sepia"}, timeout=60)
    assert manifest.status == "succeeded", manifest.error
    assert manifest.job_id == upload.job_id
    assert manifest.params["style"] == "sepia"
    assert manifest.inputs[0].key == upload.key
    [image] = check_outputs(bucket, manifest)
    assert image.size == (160, 120)
    r, g, b = [int(np.asarray(c, dtype=np.int64).sum()) for c in image.convert("RGB").split()]
    assert r > g > b  # sepia
    assert manifest.timings["processing_s"] > 0
    assert manifest.runner["versions"]["dramatiq"]
    assert manifest.runner["device"] == "cpu" and manifest.runner["device_name"]
    days = settings.outputs_retention_days
    assert manifest.outputs_expire_at == pytest.approx(manifest.timings["finished_at"] + days * 86400)


@pytest.mark.parametrize("style", STYLES)
def test_drop_folder_each_style(bucket, style):
    job_id = drop(bucket, f"inbox/filter/styles/{style}.png", png_bytes(portrait(96, 128)),
                  Metadata={"style": style}, ContentType="image/png")
    manifest = wait_final(bucket, job_id)
    assert manifest.status == "succeeded", manifest.error
    [image] = check_outputs(bucket, manifest)
    assert image.size == (96, 128)
    assert manifest.outputs[0].key == f"outputs/{job_id}/{style}.png"


def test_presign_policy_is_enforced_by_the_store(settings, bucket):
    s3 = s3_client(settings)
    up = presign_upload(s3, settings, recipe="filter", filename="a.png", max_bytes=1000)
    with pytest.raises(UploadRejected, match=r"\(400\).*EntityTooLarge"):
        post_upload(up, b"x" * 5000, "a.png", "image/png")
    with pytest.raises(UploadRejected, match=r"\(400\).*EntityTooSmall"):  # the 1-byte minimum
        post_upload(up, b"", "a.png", "image/png")
    up = presign_upload(s3, settings, recipe="filter", filename="a.png", params={"style": "noir"})
    refused = {
        "content type": ({**up.fields, "Content-Type": "text/html"}, "text/html"),
        "key": ({**up.fields, "key": "inbox/filter/elsewhere.png"}, "image/png"),
        "signed params": ({**up.fields, "x-amz-meta-params": '{"style":"sepia"}'}, "image/png"),
        # A field the policy does not name (SeaweedFS 4.48: "Extra input fields").
        "extra param field": ({**up.fields, "x-amz-meta-style": "sepia"}, "image/png"),
    }
    for what, (fields, content_type) in refused.items():
        with pytest.raises(UploadRejected, match=r"\(403\)"):
            post_upload(up.model_copy(update={"fields": fields}), png_bytes(), "a.png", content_type)
        assert not bucket.exists(up.key), what
    with pytest.raises(InvalidParams, match="image/"):
        presign_upload(s3, settings, recipe="filter", filename="a.txt", content_type="text/plain")
    # The untouched form still works: the refusals above were about what was changed.
    post_upload(up, png_bytes(), "a.png", "image/png")
    manifest = wait_final(bucket, up.job_id)
    assert manifest.status == "succeeded" and manifest.params["style"] == "noir"


def test_presigned_post_expires(settings, bucket):
    up = presign_upload(s3_client(settings), settings, recipe="filter", filename="late.png", expires_s=1)
    deadline = up.expires_at + 1.5  # past the policy's expiration (whole seconds), by construction
    while time.time() < deadline:
        time.sleep(deadline - time.time())
    with pytest.raises(UploadRejected, match=r"\(403\)"):
        post_upload(up, png_bytes(), "late.png", "image/png")
    assert not bucket.exists(up.key)


def _truncated() -> bytes:
    data = png_bytes(landscape(200, 150))
    return data[: len(data) // 2]


def _bomb(pixels_side: int) -> bytes:
    # A tiny file that declares a huge image: Pillow's guard must stop it before decoding.
    buf = io.BytesIO()
    Image.new("1", (pixels_side, pixels_side)).save(buf, "PNG")
    return buf.getvalue()


BAD_INPUTS = [
    ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50, {}, "invalid_image"),
    ("truncated.png", _truncated(), {}, "invalid_image"),
    ("notes.png", b"this is a text file, not an image\n" * 10, {}, "invalid_image"),
    ("empty.png", b"", {}, "empty_input"),
    ("bomb-warn.png", _bomb(2400), {}, "image_too_large"),  # 5.8 MP: between 1x and 2x the limit
    ("bomb.png", _bomb(6000), {}, "image_too_large"),  # 36 MP: over 2x the limit
    ("style.png", png_bytes(), {"style": "vaporwave"}, "invalid_params"),
    ("params.png", png_bytes(), {"params": '{"intensity": 7}'}, "invalid_params"),
    ("typo.png", png_bytes(), {"params": '{"stlye": "noir"}'}, "invalid_params"),
]


@pytest.mark.parametrize("name,body,metadata,code", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_cleanly(settings, bucket, name, body, metadata, code):
    job_id = drop(bucket, f"inbox/filter/bad/{name}", body, Metadata=metadata)
    manifest = wait_final(bucket, job_id)
    assert manifest.status == "failed"
    assert manifest.error.code == code, manifest.error
    assert manifest.error.message
    assert manifest.error.retryable is False
    assert manifest.outputs == []
    listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix=f"outputs/{job_id}/")
    assert listed.get("KeyCount", 0) == 0
    # Not retried: once a later job has run, no retry of it waits in Dramatiq's delay queue,
    # and its manifest was not rewritten (a retry would bump attempts).
    flush_pipeline(bucket)
    assert job_id not in delayed_job_ids(settings)
    again = bucket.read_manifest(job_id)
    assert again.attempts == 1 and again.updated_at == manifest.updated_at


def test_unknown_recipe_and_oversize_upload(bucket, settings):
    job_id = drop(bucket, "inbox/nosuch/x.png", png_bytes())
    manifest = wait_final(bucket, job_id)
    assert manifest.error.code == "unknown_recipe"
    assert "filter" in manifest.error.message  # lists the valid ones
    job_id = drop(bucket, "inbox/filter/big.png", b"\0" * (settings.max_upload_bytes + 1))
    assert wait_final(bucket, job_id).error.code == "input_too_large"


def test_worker_survives_bad_input(bucket):
    for i in range(3):
        drop(bucket, f"inbox/filter/burst/bad-{i}.png", b"nope")
    job_id = drop(bucket, "inbox/filter/burst/good.png", png_bytes(), Metadata={"style": "noir"})
    assert wait_final(bucket, job_id).status == "succeeded"


def test_same_event_twice_is_one_job(settings, bucket):
    key = "inbox/filter/dupe/scene.png"
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=png_bytes())
    # The filer source delivers this once; deliver it twice more, as a flaky transport would.
    ref = ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'), version_id=put.get("VersionId"))
    record = S3Record.created("test", ref)
    handler = Handler.from_settings(settings)
    job_id = job_id_for(ref)
    first = wait_final(bucket, job_id)
    outcomes = handler.handle([record, record])
    assert [o.action for o in outcomes] == ["duplicate", "duplicate"]  # nothing enqueued
    flush_pipeline(bucket)
    assert bucket.read_manifest(job_id).updated_at == first.updated_at


def test_reupload_with_new_content_is_a_new_job(bucket):
    key = "inbox/filter/again/scene.png"
    first = drop(bucket, key, png_bytes(landscape(64, 48)))
    second = drop(bucket, key, png_bytes(landscape(80, 60)))
    assert first != second
    assert wait_final(bucket, first).status in ("succeeded", "failed")  # first may see the new bytes
    m2 = wait_final(bucket, second)
    assert m2.status == "succeeded" and m2.outputs[0].width == 80


def test_job_spec_document(bucket):
    drop(bucket, "inbox/filter/spec-input/scene.png", png_bytes())
    bucket.s3.put_object(Bucket=bucket.name, Key="jobs/my-noir-job.json", Body=json.dumps(
        {"recipe": "filter", "input": "inbox/filter/spec-input/scene.png", "params": {"style": "noir"}}))
    manifest = wait_final(bucket, "my-noir-job")
    assert manifest.status == "succeeded", manifest.error
    assert manifest.params["style"] == "noir"
    bucket.s3.put_object(Bucket=bucket.name, Key="jobs/broken-spec.json", Body=b"{not json")
    manifest = wait_final(bucket, "broken-spec")
    assert manifest.status == "failed" and manifest.error.code == "invalid_spec"


def test_uploads_while_event_source_is_down_are_processed_after_restart(stack, bucket):
    assert stack.stop_process("events")
    job_ids = [drop(bucket, f"inbox/filter/offline/{i}.png", png_bytes(), Metadata={"style": "hdr"})
               for i in range(3)]
    # Nothing else turns uploads into jobs (the sweep runs inside the stopped event source).
    assert all(bucket.read_manifest(j) is None for j in job_ids)
    stack.restart_process("events")
    for job_id in job_ids:
        assert wait_final(bucket, job_id).status == "succeeded"


def test_presigned_get_links_work(settings, bucket, tmp_path):
    path = tmp_path / "p.jpg"
    portrait(64, 64).save(path)
    _, manifest = submit_file(settings, path, "filter", {"style": "watercolor", "format": "jpeg"})
    url = bucket.presigned_get(manifest.outputs[0].key)
    response = urllib3.request("GET", url)
    assert response.status == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.data)).format == "JPEG"


def test_redelivery_after_the_claim_expired_is_still_one_job(settings, bucket):
    key = "inbox/filter/expired-claim/scene.png"
    job_id = drop(bucket, key, png_bytes(), Metadata={"style": "sepia"})
    first = wait_final(bucket, job_id)
    handler = Handler.from_settings(settings)
    handler.claims.delete(job_id)  # as if dedupe_ttl_s had passed
    # An old event (created before the claim TTL) makes the handler check the manifest.
    old = S3Record.created("test", first.inputs[0], event_time="2020-01-01T00:00:00.000Z")
    [outcome] = handler.handle([old])
    assert outcome.action == "duplicate" and outcome.reason == "already finished"  # nothing enqueued
    assert bucket.read_manifest(job_id).updated_at == first.updated_at
