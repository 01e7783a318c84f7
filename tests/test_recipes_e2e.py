"""Every recipe end to end through the bucket: tiny diffusion models, shipped Real-ESRGAN."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bucketbrush.management import cancel_job
from bucketbrush.samples import landscape, portrait
from tests.helpers import check_outputs, drop, png_bytes, wait_final

pytestmark = pytest.mark.e2e
FAST = {"steps": 2, "seed": 7}


def spec(bucket, job_id: str, doc: dict) -> str:
    bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{job_id}.json", Body=json.dumps(doc))
    return job_id


def meta(params: dict) -> dict:
    return {"Metadata": {"params": json.dumps(params)}}


def test_txt2img_job_spec(bucket):
    job = spec(bucket, "t2i-one", {"recipe": "txt2img", "params": {"prompt": "a red house", "num_images": 2, **FAST}})
    manifest = wait_final(bucket, job, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    images = check_outputs(bucket, manifest)
    assert len(images) == 2 and images[0].size == (64, 64)
    assert manifest.model["id"] == "tiny" and manifest.model["scheduler"]
    assert len(manifest.seeds) == 2 and manifest.seeds[0] != manifest.seeds[1]
    assert manifest.details["versions"]["diffusers"]


def test_same_spec_gives_identical_pixels_through_the_bucket(bucket):
    # Identical pixels, not bytes: each output's Content Credentials name its own job and time.
    doc = {"recipe": "txt2img", "params": {"prompt": "a lighthouse", **FAST}}
    a, b = (wait_final(bucket, spec(bucket, name, doc), timeout=120) for name in ("det-a", "det-b"))
    [image_a], [image_b] = check_outputs(bucket, a), check_outputs(bucket, b)
    assert image_a.tobytes() == image_b.tobytes()
    assert a.outputs[0].sha256 != b.outputs[0].sha256


@pytest.mark.parametrize("recipe,params", [
    ("img2img", {"prompt": "oil painting", "strength": 0.6, "height": 128, **FAST}),
    ("sketch", {"prompt": "a castle", "height": 128, **FAST}),
    ("stylize", {"style": "watercolor", "strength": "auto", "height": 128, **FAST}),
])
def test_image_recipes_from_the_drop_folder(bucket, recipe, params):
    image = portrait(96, 128)
    if recipe == "sketch":
        image = Image.new("RGB", (96, 128), "white")
        ImageDraw.Draw(image).rectangle((20, 30, 70, 100), outline="black", width=3)
    job_id = drop(bucket, f"inbox/{recipe}/in.png", png_bytes(image), **meta(params))
    manifest = wait_final(bucket, job_id, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    [out] = check_outputs(bucket, manifest)
    assert out.size == (96, 128)  # height given, width from the input's aspect
    if recipe == "stylize":
        assert 0.20 <= manifest.details["strength"] <= 0.70


def test_inpaint_with_mask_from_the_bucket(bucket):
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse((16, 16, 48, 48), fill=255)
    bucket.s3.put_object(Bucket=bucket.name, Key="masks/round.png", Body=png_bytes(mask))
    job_id = drop(bucket, "inbox/inpaint/photo.png", png_bytes(landscape(64, 64)),
                  **meta({"prompt": "a tree", "mask_key": "masks/round.png", **FAST}))
    manifest = wait_final(bucket, job_id, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    check_outputs(bucket, manifest)  # the mask is an inputTo ingredient: tests/test_credentials_e2e.py
    job_id = drop(bucket, "inbox/inpaint/nomask.png", png_bytes(landscape(64, 64)), **meta({"prompt": "x", **FAST}))
    failed = wait_final(bucket, job_id, timeout=60)
    assert failed.error.code == "invalid_params" and "mask_key" in failed.error.message


@pytest.mark.parametrize("params,code", [
    ({"prompt": "x", "model": "gone", **FAST}, "model_unavailable"),
    ({"prompt": "x", "model": "nosuch", **FAST}, "unknown_model"),
    ({"prompt": "x", "width": 100, **FAST}, "invalid_params"),
    ({"prompt": "x", "steps": 500}, "invalid_params"),
])
def test_diffusion_bad_params(bucket, params, code):
    name = f"bad-{code}-{params.get('width', params.get('steps'))}"
    job = spec(bucket, name, {"recipe": "txt2img", "params": params})
    manifest = wait_final(bucket, job, timeout=60)
    assert manifest.status == "failed" and manifest.error.code == code, manifest.error


def test_progress_updates_then_cancel_mid_run(bucket):
    drop(bucket, "inbox/filter/long-run/in.png", png_bytes(), Metadata={"style": "nope"})
    job = spec(bucket, "long-run", {"recipe": "test-slow", "input": "inbox/filter/long-run/in.png",
                                    "params": {"seconds": 60, "steps": 600}})
    seen = []
    deadline = time.monotonic() + 120  # the one runner may still be busy with earlier tests' jobs
    while time.monotonic() < deadline:
        m = bucket.read_manifest(job)
        if m and m.status == "running" and m.progress.step > 0:
            seen.append(m.progress.step)
            if len(set(seen)) >= 2:
                break
        time.sleep(0.1)
    assert len(set(seen)) >= 2, f"no progress updates seen: {seen}"
    assert all(0 < s < 600 for s in seen)
    cancel_job(bucket, job)
    manifest = wait_final(bucket, job, timeout=60)
    assert manifest.status == "cancelled" and manifest.outputs == []
    assert 0 < manifest.progress.step < 600


def test_upscale_with_shipped_weights(bucket):
    src = landscape(64, 48)
    job_id = drop(bucket, "inbox/upscale/small.png", png_bytes(src), **meta({"scale": 2, "model": "anime"}))
    manifest = wait_final(bucket, job_id, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    [out] = check_outputs(bucket, manifest)
    assert out.size == (128, 96)
    assert manifest.model["weights_sha256"]
    # Sharper than a plain bicubic resize (Laplacian variance; measured ~4x on photos).
    import cv2
    sharp = lambda im: cv2.Laplacian(np.asarray(im.convert("L")), cv2.CV_64F).var()  # noqa: E731
    assert sharp(out) > 1.5 * sharp(src.resize((128, 96), Image.BICUBIC))
    job_id = drop(bucket, "inbox/upscale/huge.png", png_bytes(landscape(1200, 1000)), **meta({"scale": 4}))
    assert wait_final(bucket, job_id).error.code == "output_too_large"


def test_annotate_canny(bucket):
    job_id = drop(bucket, "inbox/annotate/photo.png", png_bytes(portrait(64, 80)), **meta({"kind": "canny"}))
    manifest = wait_final(bucket, job_id)
    assert manifest.status == "succeeded", manifest.error
    [edges] = check_outputs(bucket, manifest)
    values = set(np.unique(np.asarray(edges.convert("L"))))
    assert values <= {0, 255} and 255 in values
