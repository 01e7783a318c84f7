"""The video recipe end to end: a generated clip with a tone through the bucket and the runner."""

from __future__ import annotations

import base64
import io
import json
import time

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from bucketbrush.client import submit_file
from bucketbrush.errors import InvalidParams
from bucketbrush.management import cancel_job
from bucketbrush.presign import presign_upload
from gpu_runner.video_samples import sample_clip
from tests.helpers import drop, wait_final
from tests.test_video import BAD, audio_packets

pytestmark = pytest.mark.e2e


def meta(params: dict) -> dict:
    return {"Metadata": {"params": json.dumps(params)}, "ContentType": "video/mp4"}


def get(bucket, key: str) -> bytes:
    return bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read()


def watch(bucket, job_id: str, timeout: float = 120) -> tuple[list, object]:
    """Every distinct progress seen while the job runs, and its final manifest."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = bucket.read_manifest(job_id)
        if m is not None and m.is_final:
            return seen, m
        if m is not None and m.status == "running" and (not seen or seen[-1] != m.progress.step):
            seen.append(m.progress.step)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not final after {timeout}s")


def test_clip_with_audio_through_the_bucket(bucket):
    clip = sample_clip(4.0, fps=24, size=(320, 240), noise=2)
    job_id = drop(bucket, "inbox/video/holiday.mp4", clip, **meta({"style": "cartoon"}))
    seen, manifest = watch(bucket, job_id)
    assert manifest.status == "succeeded", manifest.error
    video, poster = manifest.outputs
    assert video.key == f"outputs/{job_id}/video.mp4" and video.content_type == "video/mp4"
    assert (video.width, video.height) == (320, 240)
    assert poster.key == f"outputs/{job_id}/poster.png" and poster.content_type == "image/png"
    d = manifest.details
    assert (d["frames"], d["fps"], d["duration_s"], d["codec"], d["audio"]) == (96, 24.0, 4.0, "h264", "copy")
    assert d["frame_recipe"] == "filter" and d["temporal_weight"] == 0.5
    assert manifest.progress.step == manifest.progress.total == 96
    # Progress counted frames while it ran (written at most twice a second).
    assert [s for s in seen if 0 < s < 96], f"no progress seen: {seen}"
    data = get(bucket, video.key)
    assert len(data) == video.bytes
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 24
        assert sum(1 for _ in container.decode(video=0)) == 96
    assert audio_packets(data) == audio_packets(clip)
    image = Image.open(io.BytesIO(get(bucket, poster.key)))
    assert image.size == (320, 240)


def test_diffusion_frames_share_one_seed(bucket):
    clip = sample_clip(0.5, fps=8, size=(64, 64), audio=False)
    params = {"frame_recipe": "stylize", "style": "watercolor", "seed": 5,
              "frame_params": {"steps": 2, "strength": 0.5}}
    job_id = drop(bucket, "inbox/video/tiny.mp4", clip, **meta(params))
    manifest = wait_final(bucket, job_id, timeout=180)
    assert manifest.status == "succeeded", manifest.error
    assert manifest.seeds == [5] and manifest.model["id"] == "tiny"
    assert manifest.details["frames"] == 4 and manifest.details["audio"] == "none"
    assert manifest.details["frame_params"]["seed"] == 5


@pytest.mark.parametrize("kind,code", [
    ("truncated", "invalid_video"),
    ("zero_frames", "invalid_video"),
    ("text", "invalid_video"),
    ("png_image", "invalid_video"),
    ("too_long", "video_too_long"),
    ("too_large", "video_too_large"),
    ("empty", "empty_input"),
])
def test_bad_videos_fail_with_their_code(bucket, kind, code):
    if kind == "too_long":
        body = sample_clip(21.0, fps=2, size=(32, 24), audio=False, noise=0)
    elif kind == "too_large":
        body = sample_clip(0.25, fps=8, size=(648, 64), audio=False, noise=0)
    elif kind == "empty":
        body = b""
    else:
        body = BAD[kind](sample_clip(1.0, fps=12, size=(64, 48)))
    key = f"inbox/video/bad/{kind}.mp4"
    job_id = drop(bucket, key, body, **meta({}))
    manifest = wait_final(bucket, job_id, timeout=60)
    assert manifest.status == "failed" and manifest.error.code == code, manifest.error
    assert not manifest.error.retryable and manifest.outputs == []
    listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix=f"outputs/{job_id}/")
    assert listed.get("KeyCount", 0) == 0
    assert get(bucket, key) == body  # the input is left as it was


def test_cancel_between_frames(bucket):
    clip = sample_clip(12.0, fps=24, size=(320, 240), noise=0, audio=False)
    job_id = drop(bucket, "inbox/video/long.mp4", clip, **meta({"style": "watercolor"}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = bucket.read_manifest(job_id)
        if m and m.status == "running" and m.progress.step > 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the job never reported progress")
    cancel_job(bucket, job_id)
    manifest = wait_final(bucket, job_id, timeout=60)
    assert manifest.status == "cancelled" and manifest.outputs == []
    assert 0 < manifest.progress.step < manifest.progress.total == 288
    listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix=f"outputs/{job_id}/")
    assert listed.get("KeyCount", 0) == 0
    assert np.isfinite(manifest.timings["finished_at"])


def test_presigned_post_of_a_video(settings, bucket, tmp_path):
    """An app uploads a clip through a presigned POST: the store takes video/* for this recipe."""
    path = tmp_path / "presigned-clip.mp4"
    path.write_bytes(sample_clip(1.0, fps=12, size=(64, 48)))
    upload, manifest = submit_file(settings, path, "video", {"style": "sepia"}, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    assert manifest.inputs[0].key == upload.key and upload.key.endswith(".mp4")
    assert [o.content_type for o in manifest.outputs] == ["video/mp4", "image/png"]


def test_presigned_video_policy_is_enforced_by_the_store(settings, bucket):
    """The policy binds the content type's family: a video presign refuses image/png, and a
    filter presign refuses video/mp4, at the store (403), not only in our code."""
    s3 = bucket.s3
    clip = sample_clip(0.5, fps=8, size=(32, 32))
    upload = presign_upload(s3, settings, recipe="video", filename="c.mp4")
    assert ["starts-with", "$Content-Type", "video/"] in json.loads(
        base64.b64decode(upload.fields["policy"]))["conditions"]
    fields = dict(upload.fields)
    refused = httpx.post(upload.url, data={**fields, "Content-Type": "image/png"},
                         files={"file": ("c.mp4", clip, "image/png")})
    assert refused.status_code == 403, refused.text
    assert httpx.post(upload.url, data=fields, files={"file": ("c.mp4", clip, "video/mp4")}).status_code == 204
    image = presign_upload(s3, settings, recipe="filter", filename="x.png")
    refused = httpx.post(image.url, data={**image.fields, "Content-Type": "video/mp4"},
                         files={"file": ("x.png", clip, "video/mp4")})
    assert refused.status_code == 403, refused.text
    with pytest.raises(InvalidParams, match="video/"):
        presign_upload(s3, settings, recipe="video", filename="c.png")
    with pytest.raises(InvalidParams, match="image/"):
        presign_upload(s3, settings, recipe="filter", filename="c.mp4")

